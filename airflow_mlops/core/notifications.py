"""Which notification events a run produced, the message each one carries, and delivery.

No Airflow import: the summary tasks (``factories/chain.py``, ``factories/monitoring.py``) hand
plain values in, and ``airflow_mlops/notifiers/`` does the sending through Airflow notifiers.

- :func:`ct_events` maps a CT run summary (:mod:`airflow_mlops.core.summary`) and the retrain
  signal that triggered the run to events; :func:`monitoring_events` does the same for a
  monitoring run's drift and decay results, :func:`operations_events` for the result of a
  ``rollback__``/``freeze__`` DAG's action task.
- :class:`Notification` is one message: model, versions, a one-line reason, who acted and
  links; :func:`ct_message`, :func:`monitoring_message` and :func:`operations_message` build
  it from the run's results. ``stale_champion`` is decided and worded in
  :mod:`airflow_mlops.core.staleness` (sent by the monitoring DAG's ``stale_champion`` task).
- :func:`deliver` calls one sender a few times; a failure ends as a record, never as an
  exception, so a notification cannot change what the run decided.

Adding an event: name it in :data:`EVENTS` (and drop it from :data:`PLANNED_EVENTS`), produce it
in the function that sees the outcome, and describe it in ``docs/operations.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_RETRY_DELAY_SECONDS",
    "EVENTS",
    "PLANNED_EVENTS",
    "RETRAIN_SIGNAL_TRIGGERS",
    "DeliveryRecord",
    "Notification",
    "check_notifier_class_path",
    "ct_events",
    "ct_message",
    "deliver",
    "monitoring_events",
    "monitoring_message",
    "operations_events",
    "operations_message",
    "retrain_signal_of",
]

#: Events the provider sends today.
EVENTS = (
    "drift",
    "decay",
    "fairness",
    "blocked",
    "failed",
    "not_promoted_after_signal",
    "promoted",
    "rolled_back",
    "frozen",
    "unfrozen",
    "stale_champion",
    "approval_pending",
    "approval_timed_out",
)
#: Events of issue #17 that no run produces yet; a pipeline naming one is refused until then.
PLANNED_EVENTS: tuple[str, ...] = ()
#: ``trigger`` of a retrain asset event → the signal it stands for.
RETRAIN_SIGNAL_TRIGGERS = {"drift": "drift", "performance_decay": "decay"}
DEFAULT_ATTEMPTS = 3
DEFAULT_RETRY_DELAY_SECONDS = 5.0
#: A reason is one line; the full text stays in the run summary and the task log.
MAX_REASON_CHARS = 300
_MAX_DELIVERY_ERROR_CHARS = 300


# -- events --------------------------------------------------------------------------------


def ct_events(summary: Mapping[str, Any], signal: str | None = None) -> list[str]:
    """The events of a CT run: its outcome, plus ``not_promoted_after_signal`` when a retrain
    asked for by drift or decay (``signal``) ended without a promotion.

    A run stopped by a freeze sends ``frozen``: its challenger qualified and was held back,
    which the people who froze the model need to hear, or the freeze is forgotten. With a
    signal it also sends ``not_promoted_after_signal``: the drifting model is still serving.
    """
    outcome = summary.get("outcome")
    if outcome in ("promoted", "blocked", "failed"):
        return [str(outcome)]
    if outcome == "frozen":
        return ["frozen", "not_promoted_after_signal"] if signal else ["frozen"]
    if outcome == "not promoted" and signal:
        return ["not_promoted_after_signal"]
    return []


def operations_events(result: Mapping[str, Any]) -> list[str]:
    """The event of a ``rollback``/``freeze`` task's result; none when nothing changed.

    ``already_rolled_back`` with two different versions is a retry of this run's own move
    (its notification was not sent: the sending task runs after a successful try);
    ``already_frozen``/``not_frozen`` and a rollback onto the current champion changed nothing.
    """
    outcome = result.get("outcome")
    if outcome == "rolled_back":
        return ["rolled_back"]
    if outcome == "already_rolled_back":
        moved = result.get("previous_champion_version") != result.get("champion_version")
        return ["rolled_back"] if moved else []
    if outcome in ("frozen", "unfrozen"):
        return [str(outcome)]
    return []


def monitoring_events(
    results: Mapping[str, Any], states: Mapping[str, str] | None = None
) -> list[str]:
    """The events of a monitoring run from the ``drift``/``decay`` results and task states."""
    events = []
    drift = results.get("drift") or {}
    if isinstance(drift, Mapping) and (drift.get("dataset") or {}).get("drifted"):
        events.append("drift")
    decay = results.get("decay") or {}
    if isinstance(decay, Mapping) and decay.get("decayed"):
        events.append("decay")
    if isinstance(decay, Mapping) and (decay.get("fairness") or {}).get("breached"):
        events.append("fairness")  # the decay task's fairness verdict (delayed labels)
    if any(state in {"failed", "upstream_failed"} for state in (states or {}).values()):
        events.append("failed")
    return events


def retrain_signal_of(events: Sequence[Mapping[str, Any]], model_name: str) -> str | None:
    """``drift``/``decay`` when a retrain asset event of ``model_name`` triggered the run.

    ``events`` are the run's triggering asset events as ``{"uri", "extra"}`` mappings.
    """
    uri = f"mlops://models/{model_name}/retrain"
    for event in events:
        if event.get("uri") == uri:
            trigger = (event.get("extra") or {}).get("trigger")
            return RETRAIN_SIGNAL_TRIGGERS.get(str(trigger), "drift")
    return None


# -- the message ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """One event's message. Links may be ``None`` (no MLflow UI, no report)."""

    event: str
    model_name: str
    reason: str
    champion_version: str | None = None
    challenger_version: str | None = None
    links: dict[str, str | None] = field(default_factory=dict)
    #: The champion before a rollback (``versions`` reads "champion vA -> vB").
    previous_champion_version: str | None = None
    #: Who acted (a rollback or freeze); ``None`` for what a scheduled run decided.
    by: str | None = None

    @property
    def one_line_reason(self) -> str:
        text = " ".join(str(self.reason or "").split()) or "no reason recorded"
        return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."

    @property
    def versions(self) -> str:
        # None: the run stopped before it read the champion (or there is none yet).
        champion = f"v{self.champion_version}" if self.champion_version else "unknown"
        text = f"champion {champion}"
        if self.previous_champion_version:
            text = f"champion v{self.previous_champion_version} -> {champion}"
        if self.challenger_version:
            text += f", challenger v{self.challenger_version}"
        return text

    @property
    def subject(self) -> str:
        return f"[mlops] {self.event}: {self.model_name} ({self.versions})"

    def link_lines(self) -> list[tuple[str, str]]:
        labels = {"airflow_run": "Airflow run", "mlflow_version": "MLflow version"}
        labels["report"] = "Report"
        labels["approval"] = "Answer in Airflow"
        labels["last_ct_run"] = "Last CT run"
        labels["model_card"] = "Model card"
        return [(labels.get(k, k), v) for k, v in self.links.items() if v]

    def text(self) -> str:
        """Plain text (chat messages, logs)."""
        lines = [self.subject, f"Reason: {self.one_line_reason}"]
        lines += [f"By: {self.by}"] if self.by else []
        lines += [f"{label}: {url}" for label, url in self.link_lines()]
        return "\n".join(lines)

    def html(self) -> str:
        """HTML (e-mail); every value escaped."""
        links = "".join(
            f'<li>{escape(label)}: <a href="{escape(url, quote=True)}">{escape(url)}</a></li>'
            for label, url in self.link_lines()
        )
        by = f"<p>By: {escape(self.by)}</p>" if self.by else ""
        return (
            f"<p><b>{escape(self.event)}</b>: model <b>{escape(self.model_name)}</b> "
            f"({escape(self.versions)})</p><p>Reason: {escape(self.one_line_reason)}</p>"
            f"{by}<ul>{links}</ul>"
        )

    def to_dict(self) -> dict[str, Any]:
        """What a custom notifier receives (``context["mlops_notification"]``)."""
        return {
            "event": self.event,
            "model_name": self.model_name,
            "champion_version": self.champion_version,
            "challenger_version": self.challenger_version,
            "previous_champion_version": self.previous_champion_version,
            "by": self.by,
            "reason": self.one_line_reason,
            "links": dict(self.links),
            "subject": self.subject,
            "text": self.text(),
        }


def ct_message(
    event: str,
    summary: Mapping[str, Any],
    results: Mapping[str, Any],
    links: Mapping[str, str | None],
    signal: str | None = None,
) -> Notification:
    """The message of a CT run's ``event``; ``links`` hold the Airflow run and MLflow pages."""
    reason = str(summary.get("reason") or "")
    if event == "not_promoted_after_signal":
        reason = (
            f"the retrain asked for by a {signal or 'retrain'} signal was not promoted: {reason}"
        )
    elif event == "frozen":
        challenger = summary.get("challenger_version")
        reason = (
            f"challenger v{challenger} qualified but the model is frozen: {_freeze_cause(reason)}"
        )
    return Notification(
        event=event,
        model_name=str(summary.get("model_name") or ""),
        reason=reason,
        champion_version=summary.get("champion_version"),
        challenger_version=summary.get("challenger_version"),
        links={
            **links,
            "report": _report_uri(results, ("promote", "evaluate", "validate")),
            "model_card": _model_card_uri(results),
        },
    )


def monitoring_message(
    event: str,
    model_name: str,
    results: Mapping[str, Any],
    links: Mapping[str, str | None],
    reason: str | None = None,
) -> Notification:
    """The message of a monitoring run's ``drift``/``decay``/``fairness``/``failed`` event."""
    step = {"drift": "drift", "decay": "decay", "fairness": "decay"}.get(event)
    result = results.get(step) if step else None
    result = result if isinstance(result, Mapping) else {}
    if event == "fairness" and not reason:
        reason = str((result.get("fairness") or {}).get("reason") or "")
    champion = result.get("champion_version") or next(
        (r.get("champion_version") for r in results.values() if isinstance(r, Mapping)), None
    )
    order = (step,) if step else ("drift", "decay")
    return Notification(
        event=event,
        model_name=model_name,
        reason=reason or str(result.get("reason") or ""),
        champion_version=None if champion is None else str(champion),
        links={**links, "report": _report_uri(results, order)},
    )


def _freeze_cause(reason: str) -> str:
    """``<reason> (by <who>)`` of a frozen promotion's reason.

    The promote task's reason is ``frozen: <reason> (by <who>); version N qualified but
    @champion unchanged (vM)`` (:func:`airflow_mlops.core.promotion.promotion_reason`); the
    summary carries only that text, so the freeze's own part is cut out of it.
    """
    cause = reason.removeprefix("frozen: ")
    head, sep, _ = cause.rpartition("; version ")
    return head if sep else cause


def operations_message(
    event: str, result: Mapping[str, Any], links: Mapping[str, str | None]
) -> Notification:
    """The message of a ``rolled_back``/``frozen``/``unfrozen`` event from the result of a
    ``rollback``/``freeze`` task (:class:`~airflow_mlops.operators.registry.RollbackModelOperator`,
    :class:`~airflow_mlops.operators.registry.FreezeModelOperator`)."""
    history = result.get("history_event") or result.get("event") or {}
    why = str(result.get("reason") or history.get("reason") or "")
    if event == "rolled_back":
        previous, champion = result.get("previous_champion_version"), result.get("champion_version")
        still_frozen = "; the model stays frozen" if result.get("frozen") else ""
        reason = f"@champion rolled back from v{previous} to v{champion}{still_frozen}: {why}"
    else:
        previous, champion = None, history.get("version")
        what = (
            "CT runs train and evaluate but do not move @champion"
            if event == "frozen"
            else "CT runs promote again"
        )
        reason = f"{event} ({what}): {why}"
    return Notification(
        event=event,
        model_name=str(result.get("model_name") or ""),
        reason=reason,
        champion_version=_optional_str(champion),
        links=dict(links),
        previous_champion_version=_optional_str(previous),
        by=_one_line(result.get("user") or history.get("user") or history.get("by")),
    )


def _one_line(value: Any) -> str | None:
    """``requested_by`` comes from the trigger form: one line, so it cannot add a fake link
    line to the message text."""
    text = " ".join(str(value or "").split())[:MAX_REASON_CHARS]
    return text or None


def _optional_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _model_card_uri(results: Mapping[str, Any]) -> str | None:
    """The HTML model card the promote task wrote (``airflow-mlops model-card`` prints it)."""
    promote = results.get("promote")
    card = promote.get("model_card") if isinstance(promote, Mapping) else None
    return str(card["html_uri"]) if isinstance(card, Mapping) and card.get("html_uri") else None


def _report_uri(results: Mapping[str, Any], steps: Sequence[str]) -> str | None:
    for step in steps:
        result = results.get(step)
        if isinstance(result, Mapping) and result.get("report_uri"):
            return str(result["report_uri"])
    return None


# -- delivery ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryRecord:
    """One notifier's delivery of one event, as the run summary shows it."""

    event: str
    notifier: str
    ok: bool
    attempts: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "notifier": self.notifier,
            "ok": self.ok,
            "attempts": self.attempts,
            "error": self.error,
        }


def deliver(
    send: Callable[[], None],
    *,
    event: str,
    notifier: str,
    attempts: int = DEFAULT_ATTEMPTS,
    retry_delay_seconds: float = DEFAULT_RETRY_DELAY_SECONDS,
    on_failure: Callable[[int, BaseException], None] | None = None,
    describe: Callable[[BaseException], str] = lambda err: f"{type(err).__name__}: {err}",
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryRecord:
    """Call ``send`` up to ``attempts`` times (delay doubling); never raises.

    ``on_failure(attempt, error)`` is called after each failed attempt (the caller logs);
    ``describe`` turns the last error into the record's text (the caller masks secrets).
    """
    attempts = max(1, int(attempts))
    for attempt in range(1, attempts + 1):
        try:
            send()
        except Exception as err:
            if on_failure is not None:
                on_failure(attempt, err)
            if attempt == attempts:
                text = " ".join(describe(err).split())[:_MAX_DELIVERY_ERROR_CHARS]
                return DeliveryRecord(event, notifier, False, attempt, text)
            sleep(max(0.0, retry_delay_seconds) * 2 ** (attempt - 1))
        else:
            return DeliveryRecord(event, notifier, True, attempt)
    raise AssertionError("unreachable")  # pragma: no cover


# -- the allow-list ------------------------------------------------------------------------


def check_notifier_class_path(path: str, allowed: Sequence[str]) -> None:
    """Refuse a notifier class outside the allowed modules *before* anything is imported:
    importing runs the module's code, and a pipeline YAML is configuration, not code."""
    parts = path.strip().split(".")
    if len(parts) < 2 or any(not p.isidentifier() or p.startswith("_") for p in parts):
        raise ValueError(
            f"notifier class {path!r} must be a dotted path of public names like "
            "'package.module.Name'"
        )
    module = ".".join(parts[:-1])
    prefixes = [p.strip().rstrip(".") for p in allowed if p.strip()]
    if not any(module == p or module.startswith(p + ".") for p in prefixes):
        raise ValueError(
            f"notifier class {path!r} is not in an allowed module {prefixes}: add its module "
            "to [mlops] allowed_notifier_modules to use it"
        )
