"""The public names are a contract; `import perfcallback` needs only torch."""

from __future__ import annotations

import subprocess
import sys

import perfcallback


def test_all_is_pinned() -> None:
    assert perfcallback.__all__ == [  # in ruff's (RUF022) isort-style order
        "PerfCallback",
        "PerfMonitor",
        "Recommendation",
        "Report",
        "__version__",
    ]
    for name in perfcallback.__all__:
        if name != "PerfCallback":
            assert hasattr(perfcallback, name)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_import_pulls_no_optional_dependency() -> None:
    proc = _run(  # torch itself may import pynvml: only what perfcallback adds counts
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "import perfcallback\n"
        "added = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(added & {'lightning', 'pytorch_lightning', 'tensorboard', 'pynvml',"
        " 'deepspeed', 'psutil', 'pandas', 'orjson'}))"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_perfcallback_without_lightning_names_the_extra() -> None:
    proc = _run(
        "import sys\n"
        "sys.modules['lightning'] = None; sys.modules['pytorch_lightning'] = None\n"
        "try:\n"
        "    from perfcallback import PerfCallback\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'perfcallback[lightning]'" in proc.stdout


def test_version_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "perfcallback", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"perfcallback {perfcallback.__version__}"
