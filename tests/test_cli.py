"""The command line: ``perfcallback analyze`` / ``diff`` through ``main([...])``, bad input as one
line and exit status 2, and a smoke test of the installed console script."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from perfcallback import cli
from perfcallback.cli import main

DATA = Path(__file__).resolve().parent / "data" / "traces"
TWO_RANKS = DATA / "two_ranks_late_allreduce"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_json_has_ranks_and_recommendations(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "analyze", str(TWO_RANKS), "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert set(payload["ranks"]) == {"0", "1"}
    for key in ("idle_pct", "compute_pct", "non_compute_pct", "comm_comp_overlap_pct"):
        assert isinstance(payload["ranks"]["0"][key], float)
    assert isinstance(payload["recommendations"], list)
    assert payload["cross_rank"]["slowest_rank"] == 1


def test_analyze_tables(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "analyze", str(TWO_RANKS))
    assert code == 0
    assert "GPU time (HTA temporal breakdown" in out and "Top kernels" in out
    assert "Across ranks: step-time spread 3.9% (slowest rank 1)" in out
    assert "Recommendations" in out


def test_rank_and_steps_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "analyze", str(TWO_RANKS), "--json", "--rank", "1",
                        "--steps", "2:4")
    assert code == 0
    rank = json.loads(out)["ranks"]
    assert list(rank) == ["1"] and [s["number"] for s in rank["1"]["per_step"]] == [2, 3]
    code, _, err = _run(capsys, "analyze", str(TWO_RANKS), "--rank", "5")
    assert code == 2 and "no rank 5 in this trace (ranks: 0, 1)" in err


def test_bad_steps_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["analyze", str(TWO_RANKS), "--steps", "x"])
    assert info.value.code == 2
    assert "steps must look like A:B" in capsys.readouterr().err


def _one_line_error(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("perfcallback: error: "), err
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("name,content,problem", [
    ("rank-0.json.gz", b"{}", "not a gzip file"),
    ("rank-0.json.gz", None, "truncated gzip"),
    ("rank-0.json", b'{"traceEvents": [{"ph": "X", "ts": 1', "truncated JSON"),
    ("rank-0.json", b'{"traceEvents": [{"ph": "X",, }]}', "invalid JSON"),
    ("rank-0.json", b'{"displayTimeUnit": "ms"}', "not a Kineto trace"),
])
def test_bad_file_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, content: bytes | None,
    problem: str,
) -> None:
    path = tmp_path / name
    good = (TWO_RANKS / "rank-0.json.gz").read_bytes()
    path.write_bytes(good[: len(good) // 2] if content is None else content)
    code, out, err = _run(capsys, "analyze", str(path))
    assert code == 2 and out == ""
    _one_line_error(err, str(path), problem)


def test_empty_folder_cpu_only_and_mixed_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = _run(capsys, "analyze", str(tmp_path))
    assert code == 2
    _one_line_error(err, str(tmp_path), "no trace files")
    code, _, err = _run(capsys, "analyze", str(DATA / "cpu_only"))
    assert code == 2
    _one_line_error(err, "rank-0.json", "no GPU events", "--allow-cpu-only")
    code, out, _ = _run(capsys, "analyze", str(DATA / "cpu_only"), "--allow-cpu-only")
    assert code == 0 and "n/a" in out and "cannot be computed" in out
    shutil.copy(TWO_RANKS / "rank-0.json.gz", tmp_path / "a.json.gz")
    shutil.copy(TWO_RANKS / "rank-0.json.gz", tmp_path / "b.json.gz")
    code, _, err = _run(capsys, "analyze", str(tmp_path))
    assert code == 2
    _one_line_error(err, "mixed runs", "a.json.gz", "b.json.gz")


def test_skip_bad_analyses_the_good_file(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    shutil.copy(TWO_RANKS / "rank-0.json.gz", tmp_path)
    (tmp_path / "rank-1.json.gz").write_bytes(gzip.compress(b'{"traceEvents": [')[:-4])
    code, _, err = _run(capsys, "analyze", str(tmp_path))
    assert code == 2 and "rank-1.json.gz" in err
    code, out, err = _run(capsys, "analyze", str(tmp_path), "--skip-bad", "--json")
    assert code == 0 and list(json.loads(out)["ranks"]) == ["0"]
    assert "perfcallback: skipped" in err and "rank-1.json.gz" in err


def test_diff(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "diff", str(DATA / "overlap_full"), str(DATA / "overlap_none"))
    assert code == 0
    assert "comm/comp overlap (%)" in out and "worse" in out
    assert "Worse in B: " in out and "comm/comp overlap 100.00 -> 0.00" in out
    code, out, _ = _run(capsys, "diff", str(DATA / "overlap_full"), str(DATA / "overlap_none"),
                        "--json")
    assert code == 0 and "comm_comp_overlap_pct" in json.loads(out)["slower"]
    code, _, err = _run(capsys, "diff", str(DATA / "overlap_full"), str(DATA / "nope"))
    assert code == 2 and "no such file or folder" in err


def test_progress_only_on_a_terminal(capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_PROGRESS_MIN_BYTES", 0)
    _, _, err = _run(capsys, "analyze", str(TWO_RANKS))
    assert "reading" not in err  # capsys' stderr is not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = _run(capsys, "analyze", str(TWO_RANKS))
    assert code == 0 and f"[{'#' * cli._BAR_WIDTH}] 100% reading 2/2 files" in err
    assert err.endswith("\r\033[K")  # cleared before the report


def test_progress_waits_for_a_large_input(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = _run(capsys, "analyze", str(TWO_RANKS))  # 2 small files: no bar
    assert code == 0 and "reading" not in err
    monkeypatch.setattr(cli, "_PROGRESS_MIN_FILES", 2)  # many ranks: a bar
    code, _, err = _run(capsys, "analyze", str(TWO_RANKS))
    assert code == 0 and "reading 1/2 files" in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys)
    assert code == 0 and "analyze" in out and "diff" in out


def test_the_process_exits_fast_with_all_its_output_and_status(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``python -m perfcallback`` skips the interpreter's teardown (cli.run): what it prints is
    still all there, through a pipe, byte for byte what main() prints, with main()'s status."""
    code, expected, _ = _run(capsys, "analyze", str(TWO_RANKS), "--json")
    proc = subprocess.run([sys.executable, "-m", "perfcallback", "analyze", str(TWO_RANKS),
                           "--json"], capture_output=True, text=True, timeout=60)
    assert (code, proc.returncode) == (0, 0) and proc.stdout == expected
    bad = tmp_path / "rank-0.json.gz"
    bad.write_bytes(b"nope")
    proc = subprocess.run([sys.executable, "-m", "perfcallback", "analyze", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    _one_line_error(proc.stderr, "not a gzip file")


@pytest.mark.slow  # a fresh interpreter importing torch
def test_console_script_smoke(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("perfcallback")
    if not script.exists():
        pytest.skip("console script not installed next to the interpreter")
    ok = subprocess.run([str(script), "analyze", str(TWO_RANKS), "--json"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and set(json.loads(ok.stdout)["ranks"]) == {"0", "1"}
    bad = tmp_path / "rank-0.json.gz"
    bad.write_bytes(b"nope")
    fail = subprocess.run([str(script), "analyze", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert fail.returncode == 2 and fail.stdout == ""
    _one_line_error(fail.stderr, "not a gzip file")


@pytest.mark.slow
def test_analyze_reads_a_perfmonitor_log_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`perfcallback analyze runs/exp` on what PerfMonitor(logdir=...) wrote (a CPU run here)."""
    import time

    import torch

    from perfcallback import PerfMonitor

    model = torch.nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def batches():
        for _ in range(25):
            time.sleep(0.004)  # a planted data wait, visible in the trace's DataLoader-free steps
            yield torch.randn(4, 8)

    with PerfMonitor(model=model, optimizer=opt, logdir=tmp_path, warmup_steps=2,
                     log_recommendations=False) as perf:
        for x in perf.wrap_loader(batches()):
            with perf.step():
                model(x).sum().backward()
                opt.step()
    assert (tmp_path / "perf_report.json").is_file()  # beside the traces, and not one of them
    code, _, err = _run(capsys, "analyze", str(tmp_path))
    assert code == 2
    assert "no GPU events" in err and "--allow-cpu-only" in err
    code, out, err = _run(capsys, "analyze", str(tmp_path), "--allow-cpu-only", "--json")
    assert code == 0, err
    rank = json.loads(out)["ranks"]["0"]
    assert rank["idle_pct"] is None  # no GPU: said, not zero
    assert rank["steps"] >= 1
