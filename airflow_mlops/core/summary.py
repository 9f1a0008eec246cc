"""The CT run's final summary: one readable row per step, built from the tasks' XCom."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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


def summarize_run(
    model_name: str,
    states: dict[str, str],
    results: dict[str, Any],
) -> RunSummary:
    """Turn task states and XCom results into the run's outcome and reason.

    ``states`` maps step name → Airflow task state; ``results`` maps step name → its XCom.
    The outcome is the first thing that stopped the pipeline, or the promotion verdict.
    """
    change = results.get("detect_changes") or {}
    validation = results.get("validate") or {}
    decision = (results.get("evaluate") or {}).get("decision") or results.get("evaluate") or {}
    promotion = results.get("promote") or {}
    register = results.get("register") or {}

    steps = tuple(
        StepOutcome(step, state, _detail(step, results.get(step))) for step, state in states.items()
    )
    failed = [s for s in steps if s.state in {"failed", "upstream_failed"}]
    champion = promotion.get("champion_version") or change.get("champion_version")
    challenger = promotion.get("challenger_version") or register.get("version")

    if states.get("detect_changes") == "skipped" or change.get("train") is False:
        outcome, reason = "skipped", change.get("reason", "no change")
    elif states.get("validate") in {"failed", "skipped"} or validation.get("success") is False:
        outcome = "blocked"
        reason = "validation failed: " + _failed_expectations(validation)
    elif failed:
        outcome, reason = "failed", f"task {failed[0].step} {failed[0].state}"
    elif promotion.get("promoted"):
        outcome, reason = "promoted", promotion.get("reason") or decision.get("reason", "")
    elif promotion:
        outcome, reason = "not promoted", promotion.get("reason") or decision.get("reason", "")
    elif decision:
        outcome = "promoted" if decision.get("promote") else "not promoted"
        reason = decision.get("reason", "")
    else:
        outcome, reason = "incomplete", "the pipeline stopped before a decision"
    return RunSummary(model_name, outcome, reason, _str(champion), _str(challenger), steps)


def _failed_expectations(validation: dict[str, Any]) -> str:
    failures = validation.get("failures") or []
    parts = [f"{f.get('expectation')}({f.get('column') or ''})" for f in failures[:5]]
    count = validation.get("failed_expectations")
    more = f" ({count} failed)" if isinstance(count, int) and count > len(parts) else ""
    return (", ".join(parts) or "see the validation report") + more


def _detail(step: str, result: Any) -> str:
    if not isinstance(result, dict):
        return ""
    for key in ("reason", "outcome", "message", "model_uri", "version"):
        if result.get(key):
            return str(result[key])[:200]
    return ""


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
