"""airflow_mlops.core.retrain_signal: the debounce and its window setting (pure functions)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.retrain_signal import (
    RetrainDecision,
    decide_retrain_signal,
    validate_debounce_seconds,
)

# -- debounce -------------------------------------------------------------------------------

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def decide(**overrides) -> RetrainDecision:
    args = {
        "triggered": True,
        "trigger_reason": "data drift",
        "now": NOW,
        "last_signal_at": None,
        "debounce_seconds": 6 * 3600,
        "active_ct_runs": 0,
    }
    args.update(overrides)
    return decide_retrain_signal(**args)


def test_debounce_emits_when_drifted_and_quiet():
    decision = decide()
    assert decision.emit is True and decision.reason == "data drift"


def test_debounce_no_trigger_no_signal():
    assert decide(triggered=False).emit is False


def test_debounce_holds_inside_the_window_and_releases_after():
    inside = decide(last_signal_at=NOW - timedelta(hours=5, minutes=59))
    assert inside.emit is False and "debounced" in inside.reason
    assert decide(last_signal_at=NOW - timedelta(hours=6)).emit is True
    assert decide(last_signal_at=NOW - timedelta(hours=1), debounce_seconds=0).emit is True


def test_debounce_holds_while_a_ct_run_is_active():
    decision = decide(active_ct_runs=1)
    assert decision.emit is False and "CT run" in decision.reason


def test_policy_and_window_validation():
    assert validate_debounce_seconds("3600") == 3600.0
    with pytest.raises(ConfigError, match="debounce_seconds"):
        validate_debounce_seconds(-5)
