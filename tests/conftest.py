"""Markers, automatic skips and guards shared by every test."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SHARED_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread: on a 2-core machine OpenMP spin-waits otherwise add milliseconds of
    # jitter to every step, and the timing tests compare planted costs within 10%.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """Environment variables, gc callbacks and logging levels leak between tests otherwise."""
    env = dict(os.environ)
    callbacks = list(gc.callbacks)
    level = logging.getLogger("perfcallback").level
    yield
    os.environ.clear()
    os.environ.update(env)
    leaked = [  # hypothesis installs its own gc callback on first use: not a leak of ours
        cb
        for cb in gc.callbacks
        if cb not in callbacks and not getattr(cb, "__module__", "").startswith("hypothesis.")
    ]
    gc.callbacks[:] = callbacks
    logging.getLogger("perfcallback").setLevel(level)
    assert not leaked, f"gc callbacks left installed: {leaked}"


@pytest.fixture(autouse=True)
def _no_process_group_left() -> Iterator[None]:
    yield
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        pytest.fail("a test left a torch.distributed process group initialised")


VENDORED_TRACES = Path(__file__).resolve().parent / "data" / "shared"


@pytest.fixture
def shared_traces() -> Path:
    """``../shared/traces`` beside the checkout, else ``tests/data/shared`` (a fresh clone).

    ``PERFCALLBACK_VENDORED_TRACES=1`` forces the vendored subset, to check what a fresh clone
    runs. A set missing from the subset skips with its name (``_set`` in test_shared_traces).
    """
    if os.environ.get("PERFCALLBACK_VENDORED_TRACES") or not SHARED_TRACES.is_dir():
        return VENDORED_TRACES
    return SHARED_TRACES


def assert_no_hooks(model: torch.nn.Module) -> None:
    """No forward, backward or optimizer hooks remain on ``model`` or its submodules."""
    for m in model.modules():
        assert not m._forward_hooks, f"forward hooks left on {type(m).__name__}"
        assert not m._forward_pre_hooks, f"forward pre-hooks left on {type(m).__name__}"
        assert not m._backward_hooks, f"backward hooks left on {type(m).__name__}"
        assert not m._backward_pre_hooks, f"backward pre-hooks left on {type(m).__name__}"
