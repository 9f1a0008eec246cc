"""The CT run's final summary: one readable row per step, built from the tasks' XCom.

A failed step's row and the run's reason carry that task's error: the provider's operators
push it under :data:`ERROR_XCOM_KEY` when they fail (``{"error": "Type: message"}``, masked
and cut to :data:`MAX_ERROR_CHARS`), because another task cannot read an exception itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ERROR_XCOM_KEY",
    "MAX_ERROR_CHARS",
    "RunSummary",
    "StepOutcome",
    "cap_error",
    "describe_error",
    "summarize_run",
]

#: XCom key of a failed task's ``{"error": text}``.
ERROR_XCOM_KEY = "mlops_task_error"
#: Long enough for a data path and the problem; tracebacks stay in the task log.
MAX_ERROR_CHARS = 400


@dataclass(frozen=True)
class StepOutcome:
    step: str
    state: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunSummary:
    model_name: str
    outcome: str
    reason: str
    champion_version: str | None
    challenger_version: str | None
    steps: tuple[StepOutcome, ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = [s.to_dict() for s in self.steps]
        return data


def describe_error(error: BaseException | str) -> str:
    """``Type: message`` of an exception (the text alone for a string), on one line."""
    if isinstance(error, BaseException):
        message = str(error).strip()
        name = type(error).__name__
        text = f"{name}: {message}" if message else name
    else:
        text = str(error).strip()
    return " ".join(text.split())


def cap_error(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def summarize_run(
    model_name: str,
    states: dict[str, str],
    results: dict[str, Any],
    errors: dict[str, Any] | None = None,
) -> RunSummary:
    """Turn task states, XCom results and task errors into the run's outcome and reason.

    ``states`` maps step name → Airflow task state; ``results`` maps step name → its XCom;
    ``errors`` maps a failed step → its :data:`ERROR_XCOM_KEY` XCom (``{"error": text}``).
    The outcome is the first thing that stopped the pipeline, or the promotion verdict.
    """
    messages = {step: _error_text(value) for step, value in (errors or {}).items()}
    change = results.get("detect_changes") or {}
    validation = results.get("validate") or {}
    decision = (results.get("evaluate") or {}).get("decision") or results.get("evaluate") or {}
    promotion = results.get("promote") or {}
    register = results.get("register") or {}

    steps = tuple(
        StepOutcome(step, state, messages.get(step) or _detail(step, results.get(step)))
        for step, state in states.items()
    )
    failed = [s for s in steps if s.state in {"failed", "upstream_failed"}]
    champion = promotion.get("champion_version") or change.get("champion_version")
    challenger = promotion.get("challenger_version") or register.get("version")

    if states.get("detect_changes") == "skipped" or change.get("train") is False:
        outcome, reason = "skipped", change.get("reason", "no change")
    elif states.get("validate") in {"failed", "skipped"} or validation.get("success") is False:
        outcome = "blocked"
        reason = "validation failed: " + _failed_expectations(validation, messages.get("validate"))
    elif failed:
        first, error = failed[0], messages.get(failed[0].step)
        outcome = "failed"
        reason = f"task {first.step} {first.state}" + (f": {error}" if error else "")
    elif promotion.get("promoted"):
        outcome, reason = "promoted", promotion.get("reason") or decision.get("reason", "")
    elif promotion.get("outcome") == "frozen":
        outcome, reason = "frozen", promotion.get("reason", "frozen")
    elif promotion:
        outcome, reason = "not promoted", promotion.get("reason") or decision.get("reason", "")
    elif decision:
        outcome = "promoted" if decision.get("promote") else "not promoted"
        reason = decision.get("reason", "")
    else:
        outcome, reason = "incomplete", "the pipeline stopped before a decision"
    return RunSummary(model_name, outcome, reason, _str(champion), _str(challenger), steps)


def _failed_expectations(validation: dict[str, Any], error: str | None = None) -> str:
    """The failed expectations; else the task's error (a broken suite, unreadable data)."""
    failures = validation.get("failures") or []
    parts = [f"{f.get('expectation')}({f.get('column') or ''})" for f in failures[:5]]
    count = validation.get("failed_expectations")
    more = f" ({count} failed)" if isinstance(count, int) and count > len(parts) else ""
    return (", ".join(parts) or error or "see the validation report") + more


def _error_text(value: Any) -> str:
    """The text of an :data:`ERROR_XCOM_KEY` XCom, capped again: XCom is not trusted to be small."""
    if isinstance(value, dict):
        value = value.get("error")
    return cap_error(" ".join(str(value).split())) if value else ""


def _detail(step: str, result: Any) -> str:
    if not isinstance(result, dict):
        return ""
    for key in ("reason", "outcome", "message", "model_uri", "version"):
        if result.get(key):
            return str(result[key])[:200]
    return ""


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
