"""Send a run's notification events through Airflow notifiers, and record each delivery.

The summary tasks call :func:`notify_events`; :mod:`airflow_mlops.core.notifications` decides
the events and builds the messages. A notifier is built per delivery from the pipeline's
``notifications`` section: the SMTP provider's ``SmtpNotifier``, our
:class:`~airflow_mlops.notifiers.webhook.SlackWebhookNotifier`, or a ``BaseNotifier`` subclass
from ``[mlops] allowed_notifier_modules``. ``notify(context)`` is called directly (the message
text is never rendered as a template); a custom notifier reads the message from
``context["mlops_notification"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from airflow_mlops.core.notifications import DeliveryRecord, Notification

__all__ = [
    "airflow_run_url",
    "allowed_notifier_modules",
    "build_notifier",
    "mlflow_version_url",
    "notify_events",
    "triggering_events",
    "unsent_record",
]

log = logging.getLogger(__name__)


def allowed_notifier_modules() -> tuple[str, ...]:
    """``[mlops] allowed_notifier_modules``: comma-separated modules that ``type: class``
    notifiers may come from. A setting, not a pipeline key: the YAML is not trusted to widen
    what gets imported."""
    from airflow.sdk import conf

    text = conf.get("mlops", "allowed_notifier_modules", fallback="") or ""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _delivery_settings() -> tuple[int, float]:
    from airflow.sdk import conf

    from airflow_mlops.core.notifications import DEFAULT_ATTEMPTS, DEFAULT_RETRY_DELAY_SECONDS

    attempts = conf.getint("mlops", "notification_attempts", fallback=DEFAULT_ATTEMPTS)
    delay = conf.getfloat(
        "mlops", "notification_retry_delay_seconds", fallback=DEFAULT_RETRY_DELAY_SECONDS
    )
    return attempts, delay


def build_notifier(spec: Any, message: Notification) -> Any:
    """The Airflow notifier of one ``notifications.notifiers`` entry, carrying ``message``."""
    if spec.type == "smtp":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        return SmtpNotifier(
            to=list(spec.to),
            cc=list(spec.cc) or None,
            from_email=spec.from_email,
            smtp_conn_id=spec.smtp_conn_id,
            subject=message.subject,
            html_content=message.html(),
        )
    if spec.type == "slack_webhook":
        from airflow_mlops.notifiers.webhook import SlackWebhookNotifier

        return SlackWebhookNotifier(http_conn_id=spec.http_conn_id, text=message.text())
    return _custom_notifier(spec.class_path, dict(spec.params))


def _custom_notifier(path: str, params: dict[str, Any]) -> Any:
    import importlib

    from airflow.sdk import BaseNotifier

    from airflow_mlops.core.notifications import check_notifier_class_path

    # Checked again here: the setting may have changed since the DAG was parsed.
    check_notifier_class_path(path, allowed_notifier_modules())
    module_name, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseNotifier)):
        raise TypeError(f"notifier class {path!r} is not a BaseNotifier subclass")
    return cls(**params)


def notify_events(
    notifications: Any,
    messages: Iterable[Notification],
    context: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Send each message to the notifiers of its event; one record per delivery.

    ``notifications`` is the pipeline's ``NotificationsConfig`` (not imported here: the
    config imports this module for the allow-list).

    Never raises: a notifier that cannot be built or that fails every attempt becomes a
    record with ``ok: false`` and the masked error, and the failure is logged.
    """
    attempts, delay = _delivery_settings()
    records = []
    for message in messages:
        for name, spec in notifications.targets(message.event):
            record = _deliver_one(name, spec, message, context, attempts, delay)
            records.append(record.to_dict())
    return records


def unsent_record(err: BaseException) -> dict[str, Any]:
    """The delivery record of a run whose messages could not even be prepared (masked error);
    the sending tasks catch everything, because a notification never changes the run."""
    from airflow_mlops.operators.base import mask_error

    error = mask_error(f"{type(err).__name__}: {err}")[:300]
    print(f"notifications not sent: {error}")
    return {"event": None, "notifier": None, "ok": False, "attempts": 0, "error": error}


def _deliver_one(
    name: str,
    spec: Any,
    message: Notification,
    context: Mapping[str, Any],
    attempts: int,
    delay: float,
) -> DeliveryRecord:
    from airflow_mlops.core.notifications import deliver
    from airflow_mlops.operators.base import mask_error

    notifier_context = {**context, "mlops_notification": message.to_dict()}

    def send() -> None:
        build_notifier(spec, message).notify(notifier_context)

    def describe(err: BaseException) -> str:
        return mask_error(f"{type(err).__name__}: {err}")

    def warn(attempt: int, err: BaseException) -> None:
        log.warning(
            "Notification %s to %s failed (attempt %d of %d): %s",
            message.event,
            name,
            attempt,
            attempts,
            describe(err),
        )

    record = deliver(
        send,
        event=message.event,
        notifier=name,
        attempts=attempts,
        retry_delay_seconds=delay,
        on_failure=warn,
        describe=describe,
    )
    if record.ok:
        log.info("Notification %s sent to %s.", message.event, name)
    else:
        log.error("Notification %s to %s not delivered: %s", message.event, name, record.error)
    return record


# -- what the messages link to ----------------------------------------------------------------


def airflow_run_url(dag_id: str, run_id: str) -> str:
    """The run's page in the Airflow UI (``[api] base_url``)."""
    from airflow.sdk import conf

    base = conf.get("api", "base_url", fallback="http://localhost:8080/") or ""
    return f"{base.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def mlflow_version_url(mlflow_conn_id: str, model_name: str, version: str | None) -> str | None:
    """The MLflow page of ``model_name`` version ``version``; ``None`` without a UI or version."""
    if not version:
        return None
    from airflow_mlops.hooks.mlflow import MlflowHook
    from airflow_mlops.links.mlflow import mlflow_ui_url
    from airflow_mlops.links.urls import mlflow_page_url

    try:
        tracking_uri = MlflowHook(mlflow_conn_id=mlflow_conn_id).tracking_uri
    except Exception as err:  # a link is no reason to lose the notification
        log.warning("No MLflow link in the notification: %s", type(err).__name__)
        return None
    base = mlflow_ui_url(tracking_uri)
    return mlflow_page_url(base, ("models", model_name), ("versions", version))


def triggering_events(context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's triggering asset events as ``{"uri", "extra"}`` (none for other run types)."""
    accessor = context.get("triggering_asset_events") or {}
    events = []
    try:
        for asset_events in accessor.values():
            for event in asset_events:
                events.append({"uri": event.asset.uri, "extra": dict(event.extra or {})})
    except Exception as err:  # the accessor reads the API server; a notification is optional
        log.warning("Could not read the triggering asset events: %s", err)
    return events
