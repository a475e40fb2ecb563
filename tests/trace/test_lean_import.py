"""The CLI imports msgspec without ``typing_extensions`` (parse.lean_msgspec_import): the same
events, the block lifted afterwards, and the usual import when a msgspec needs it after all.

Each case runs in a fresh interpreter: what is imported is process state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("msgspec")

NCCL = Path(__file__).resolve().parents[1] / "data" / "shared" / "hta" / "nccl_parser_config" / \
    "nccl_data.json.gz"

_READ = """
import sys, zlib
from perfcallback.trace import parse
from perfcallback.trace.parse import Metadata, iter_trace
if sys.argv[2] == "lean":
    parse.lean_msgspec_import()
events = [(e.ph, e.cat, e.name, e.ts, e.dur, e.tid,
           None if e.args is None else (e.args.stream, e.args.correlation))
          for batch in iter_trace(sys.argv[1]) if not isinstance(batch, Metadata) for e in batch]
assert parse._fast not in (None, parse._UNSET), "msgspec was not used"
had = sorted({"typing_extensions", "inspect"} & set(sys.modules))
import typing_extensions  # the block is lifted: anyone may import it afterwards
print(had, len(events), zlib.crc32(repr(events).encode()))
"""


def _run(code: str, *args: str, path: list[str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=60, check=True,
                          env=None if path is None else {"PYTHONPATH": ":".join(path)})
    return proc.stdout.strip()


def test_lean_import_decodes_the_same_events_without_typing_extensions() -> None:
    usual = _run(_READ, str(NCCL), "usual").rsplit(" ", 2)
    lean = _run(_READ, str(NCCL), "lean").rsplit(" ", 2)
    assert usual[0] != "[]"  # without the request, msgspec brings them (the cost saved)
    assert lean[0] == "[]"
    assert lean[1:] == usual[1:]  # event count and digest of every field


def test_a_msgspec_that_needs_typing_extensions_is_imported_as_usual(tmp_path: Path) -> None:
    """A sitecustomize refuses msgspec's import while typing_extensions is blocked, as a msgspec
    with a hard dependency on it would fail: the lean import then falls back."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class Needs:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'msgspec._core' and sys.modules.get('typing_extensions', 0) is None:\n"
        "            raise ImportError('this msgspec needs typing_extensions')\n"
        "        return None\n"
        "sys.meta_path.insert(0, Needs())\n")
    root = str(Path(__file__).resolve().parents[2])
    had, count, _ = _run(_READ, str(NCCL), "lean", path=[str(tmp_path), root, *sys.path[1:]]) \
        .rsplit(" ", 2)
    assert "typing_extensions" in had and int(count) > 0
