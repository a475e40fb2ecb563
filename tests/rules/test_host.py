"""host.cpu_oversubscribed: threads x ranks against the cores free for them."""

from __future__ import annotations

import pytest

from rules._windows import context, run, window

_COMPUTE = {"forward": 0.4, "backward": 0.4}


def _host(threads: float, load: float | None = None, ours: float | None = None) -> dict[str, float]:
    out = {"intra_op_threads": threads}
    if load is not None:
        out["load_avg_1m"] = load
    if ours is not None:
        out["process_cpu_cores"] = ours
    return out


def test_two_threads_on_a_busy_two_core_host_fire_and_name_one_thread() -> None:
    # the case measured on this project's CI host: 490 ms/step with 2 threads, 115 with 1
    rec = run("host.cpu_oversubscribed", window(phases=_COMPUTE, extra=_host(2, 3.0, 1.0)),
              context(cpu_count=2))
    assert rec is not None and rec.severity == "critical"
    assert "torch.set_num_threads(1)" in rec.message and "OMP_NUM_THREADS=1" in rec.message
    assert rec.evidence["free_cores"] == 1.0


def test_threads_matching_an_idle_host_are_fine() -> None:
    assert run("host.cpu_oversubscribed", window(phases=_COMPUTE, extra=_host(2, 2.0, 2.0)),
               context(cpu_count=2)) is None
    assert run("host.cpu_oversubscribed", window(phases=_COMPUTE, extra=_host(1, 6.0, 1.0)),
               context(cpu_count=2)) is None  # one thread cannot be oversubscribed


def test_ranks_on_the_node_multiply_the_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    rec = run("host.cpu_oversubscribed", window(phases=_COMPUTE, extra=_host(8)),
              context(cpu_count=16))
    assert rec is not None and "x 4 processes" in rec.message
    assert "torch.set_num_threads(4)" in rec.message


def test_a_data_bound_cpu_step_is_not_blamed_on_threads() -> None:
    assert run("host.cpu_oversubscribed", window(phases={"data": 0.9}, extra=_host(2, 3.0, 1.0)),
               context(cpu_count=2)) is None


def test_on_a_gpu_run_it_is_info_only() -> None:
    rec = run("host.cpu_oversubscribed", window(extra=_host(8, 20.0, 2.0)),
              context(cpu_count=8, device_type="cuda"))
    assert rec is not None and rec.severity == "info"
