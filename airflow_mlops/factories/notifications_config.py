"""The pipeline YAML's ``notifications`` section: named notifiers and the events sent to them.

Its own module so :mod:`airflow_mlops.factories.config` stays a readable size; the events
themselves are defined in :mod:`airflow_mlops.core.notifications`, the sending in
:mod:`airflow_mlops.notifiers.dispatch`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ClassNotifierConfig",
    "NotificationsConfig",
    "NotifierConfig",
    "SlackWebhookNotifierConfig",
    "SmtpNotifierConfig",
]


# The same base as the sections of factories/config.py, which imports this module.
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SmtpNotifierConfig(_Section):
    """The SMTP provider's ``SmtpNotifier``; server and credentials in the SMTP connection."""

    type: Literal["smtp"]
    to: list[Annotated[str, Field(min_length=3)]] = Field(min_length=1)
    cc: list[str] = Field(default_factory=list)
    from_email: str | None = Field(None, description="Default: the connection's from_email.")
    smtp_conn_id: str = "smtp_default"


class SlackWebhookNotifierConfig(_Section):
    """A Slack incoming webhook; its URL lives in the Airflow HTTP connection, never here."""

    type: Literal["slack_webhook"]
    http_conn_id: str = Field(description="HTTP connection holding the webhook URL.")


class ClassNotifierConfig(_Section):
    """Any ``BaseNotifier`` subclass from a module in ``[mlops] allowed_notifier_modules``."""

    type: Literal["class"]
    class_path: str = Field(description="Dotted path: package.module.NotifierClass.")
    params: dict[str, Any] = Field(default_factory=dict, description="Its keyword arguments.")

    @field_validator("class_path")
    @classmethod
    def _allowed_module(cls, path: str) -> str:
        from airflow_mlops.core.notifications import check_notifier_class_path
        from airflow_mlops.notifiers.dispatch import allowed_notifier_modules

        check_notifier_class_path(path, allowed_notifier_modules())
        return path

    @field_validator("params")
    @classmethod
    def _no_urls(cls, params: dict[str, Any]) -> dict[str, Any]:
        for key, value in params.items():
            if isinstance(value, str) and value.strip().lower().startswith(("http://", "https://")):
                raise ValueError(
                    f"params.{key}: a URL may carry a secret; put it in an Airflow connection "
                    "and pass the connection id"
                )
        return params


def _stale_after_delta(value: str) -> timedelta:
    """``notifications.stale_after`` as a duration: whole units ``m``/``h``/``d``/``w``, at
    least one hour (the check runs on the monitoring schedule, usually daily)."""
    from airflow_mlops.core.data_window import DURATION, DURATION_UNITS

    match = DURATION.match(value) if isinstance(value, str) else None
    if not match or match[2] == "s":
        raise ValueError(f"{value!r} is not a duration; write e.g. '14d', '36h' or '2w'")
    delta = timedelta(**{DURATION_UNITS[match[2]]: int(match[1])})
    if delta < timedelta(hours=1):
        raise ValueError(f"{value!r} is shorter than 1h; write e.g. '14d', '36h' or '2w'")
    return delta


NotifierConfig = Annotated[
    SmtpNotifierConfig | SlackWebhookNotifierConfig | ClassNotifierConfig,
    Field(discriminator="type"),
]


class NotificationsConfig(_Section):
    """Events → named notifiers. Every delivery is recorded in the run summary."""

    notifiers: dict[str, NotifierConfig] = Field(default_factory=dict)
    events: dict[str, list[str]] = Field(
        default_factory=dict, description="Event name -> names of notifiers to send it to."
    )
    stale_after: str | None = Field(
        None,
        description="Send stale_champion when the champion has not changed, or no CT run "
        "succeeded, for this long: '14d', '36h', '2w' (checked by the monitoring DAG).",
    )

    @field_validator("stale_after")
    @classmethod
    def _a_duration(cls, value: str | None) -> str | None:
        if value is not None:
            _stale_after_delta(value)
        return value

    @model_validator(mode="after")
    def _stale_after_and_its_event(self) -> NotificationsConfig:
        """``stale_after`` without a notifier would check for nobody; the event without
        ``stale_after`` would never fire."""
        if self.stale_after is not None and not self.events.get("stale_champion"):
            raise ValueError(
                "stale_after: no notifier receives stale_champion; map events.stale_champion"
            )
        if self.stale_after is None and "stale_champion" in self.events:
            raise ValueError(
                "events.stale_champion: set notifications.stale_after (e.g. '14d'), the age at "
                "which a champion counts as stale"
            )
        return self

    @property
    def stale_after_delta(self) -> timedelta | None:
        return None if self.stale_after is None else _stale_after_delta(self.stale_after)

    @model_validator(mode="after")
    def _known_events_and_notifiers(self) -> NotificationsConfig:
        from airflow_mlops.core.notifications import EVENTS, PLANNED_EVENTS

        for event, names in self.events.items():
            if event in PLANNED_EVENTS:
                raise ValueError(f"events.{event}: this event is not sent yet (planned)")
            if event not in EVENTS:
                raise ValueError(f"events.{event}: unknown event; known: {list(EVENTS)}")
            for name in names:
                if name not in self.notifiers:
                    raise ValueError(f"events.{event}: no notifier named {name!r} in notifiers")
        return self

    def targets(self, event: str) -> list[tuple[str, Any]]:
        """(name, notifier config) pairs to send ``event`` to."""
        return [(name, self.notifiers[name]) for name in self.events.get(event, [])]
