"""Hypothesis settings shared by the property and fuzz tests.

CI must be reproducible: a red build has to fail the same way on the next run, so the
default profile (``ci``) derandomizes (the same examples every run, from the test's name)
and keeps no example database. Exploring for new bugs is a separate, deliberate act::

    HYPOTHESIS_PROFILE=explore MLOPS_FUZZ_SCALE=50 .venv/bin/python -m pytest tests/reliability

``explore`` draws fresh random examples and ``MLOPS_FUZZ_SCALE`` multiplies each test's
example budget. Whatever it finds becomes a named case in the test module (as the empty
``!!float`` case in ``test_fuzz_config.py`` did), so CI keeps checking it.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(budget: int) -> int:
    """A test's example budget, scaled by ``MLOPS_FUZZ_SCALE`` (default 1) when exploring."""
    scale = os.environ.get("MLOPS_FUZZ_SCALE", "1")
    if not scale.isdigit() or int(scale) < 1:
        raise ValueError(f"MLOPS_FUZZ_SCALE must be a positive integer, got {scale!r}")
    return budget * int(scale)
