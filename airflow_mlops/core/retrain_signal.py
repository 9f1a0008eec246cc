"""The retrain signal's debounce: at most one signal per window, none while CT is running.

Pure functions on values the monitoring operators read from Airflow (the last retrain
event, the number of active CT runs). Standard library only, so operators may import it at
module level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from airflow_mlops.core.errors import ConfigError

__all__ = [
    "ACTIVE_RUN_STATES",
    "DEFAULT_DEBOUNCE_SECONDS",
    "ON_EMPTY_POLICIES",
    "ON_TRIGGER_POLICIES",
    "TAG_LAST_RETRAIN_SIGNAL",
    "RetrainDecision",
    "decide_retrain_signal",
    "validate_debounce_seconds",
]

#: Registered-model tag holding the newest retrain signal (read by the MLOps page).
TAG_LAST_RETRAIN_SIGNAL = "mlops.last_retrain_signal"
DEFAULT_DEBOUNCE_SECONDS = 6 * 3600
#: What a monitoring check does when it fires (``on_drift`` / ``on_decay``).
ON_TRIGGER_POLICIES: tuple[str, ...] = ("emit", "fail", "skip", "branch")
#: What a monitoring check does when it has no usable input rows (``on_empty``).
ON_EMPTY_POLICIES: tuple[str, ...] = ("fail", "skip")
#: Airflow run states of the CT DAG during which no retrain signal is sent.
ACTIVE_RUN_STATES: tuple[str, ...] = ("queued", "running")


@dataclass(frozen=True)
class RetrainDecision:
    """Whether to emit the retrain signal now, and why (logged and pushed to XCom)."""

    emit: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"emit": self.emit, "reason": self.reason}


def decide_retrain_signal(
    *,
    triggered: bool,
    trigger_reason: str,
    now: datetime,
    last_signal_at: datetime | None,
    debounce_seconds: float,
    active_ct_runs: int,
) -> RetrainDecision:
    """At most one retrain signal per window, and none while a CT run is queued or running.

    ``now`` and ``last_signal_at`` must both be timezone-aware.
    """
    if not triggered:
        return RetrainDecision(False, f"no retrain needed: {trigger_reason}")
    if active_ct_runs > 0:
        return RetrainDecision(
            False, f"{trigger_reason}; not signalled: {active_ct_runs} CT run(s) queued or running"
        )
    if last_signal_at is not None:
        elapsed = now - last_signal_at
        window = timedelta(seconds=debounce_seconds)
        if elapsed < window:
            return RetrainDecision(
                False,
                f"{trigger_reason}; not signalled: debounced, last signal at "
                f"{last_signal_at.isoformat()} ({int(elapsed.total_seconds())} s ago, window "
                f"{int(debounce_seconds)} s)",
            )
    return RetrainDecision(True, trigger_reason)


def validate_debounce_seconds(value: Any) -> float:
    """``value`` as a finite, non-negative number of seconds; ConfigError otherwise."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"debounce_seconds must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"debounce_seconds must be >= 0, got {value!r}")
    return seconds
