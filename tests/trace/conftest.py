"""Real traces for the trace tests: ``../shared/traces`` when present, else the vendored subset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[1]
SHARED_TRACES = _TESTS.parents[1] / "shared" / "traces"
VENDORED = _TESTS / "data" / "shared"


@pytest.fixture
def shared_traces() -> Path:
    """``../shared/traces`` beside the checkout, else ``tests/data/shared`` (a fresh clone).

    ``PERFCALLBACK_VENDORED_TRACES=1`` forces the vendored subset, to check what a fresh clone
    runs. A set missing from the subset skips with its name (``_set`` in test_shared_traces).
    """
    if os.environ.get("PERFCALLBACK_VENDORED_TRACES") or not SHARED_TRACES.is_dir():
        return VENDORED
    return SHARED_TRACES
