"""CI must draw the same Hypothesis examples on every run (see tests/_fuzz.py)."""

from __future__ import annotations

import os

import pytest
from _fuzz import examples
from hypothesis import given, settings
from hypothesis import strategies as st

DRAWN: list[int] = []


@pytest.mark.skipif(
    os.environ.get("HYPOTHESIS_PROFILE", "ci") != "ci", reason="exploring on purpose"
)
def test_ci_profile_is_derandomized_without_an_example_database():
    assert settings.default.derandomize is True
    assert settings.default.database is None


@pytest.mark.skipif(
    os.environ.get("HYPOTHESIS_PROFILE", "ci") != "ci", reason="exploring on purpose"
)
def test_the_same_examples_are_drawn_twice():
    @settings(max_examples=20)
    @given(st.integers())
    def draw(value: int) -> None:
        DRAWN.append(value)

    draw()
    first = list(DRAWN)
    DRAWN.clear()
    draw()
    second = list(DRAWN)
    assert second == first
    assert len(set(first)) > 1  # real draws, not one value repeated


@pytest.mark.parametrize("scale", ["0", "-1", "x", "1.5"])
def test_a_bad_fuzz_scale_is_refused_by_name(scale, monkeypatch):
    monkeypatch.setenv("MLOPS_FUZZ_SCALE", scale)
    with pytest.raises(ValueError, match="MLOPS_FUZZ_SCALE"):
        examples(10)


def test_the_fuzz_scale_multiplies_the_budget(monkeypatch):
    monkeypatch.delenv("MLOPS_FUZZ_SCALE", raising=False)
    assert examples(40) == 40
    monkeypatch.setenv("MLOPS_FUZZ_SCALE", "30")
    assert examples(40) == 1200
