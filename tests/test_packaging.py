"""``integrations/`` at the top level is installed as ``perfcallback.integrations`` (package-dir).

See STYLE.md, "Where integrations/ lives": the mapping works for wheels and default editable
installs; these tests catch an install (or a stray ``perfcallback/integrations/``) that breaks it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import perfcallback


def test_lightning_integration_resolves_to_the_top_level_folder() -> None:
    spec = importlib.util.find_spec("perfcallback.integrations.lightning")  # does not import it
    assert spec is not None and spec.origin is not None
    origin = Path(spec.origin)
    assert origin.parts[-2:] == ("integrations", "lightning.py"), origin
    # the top-level folder, not a copy inside the package
    assert origin.parent.parent == Path(perfcallback.__file__).resolve().parent.parent


def test_integrations_package_imports_no_framework() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, perfcallback.integrations as i\n"
            "print(i.__file__)\n"
            "print(sorted({'lightning', 'pytorch_lightning'} & set(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    path, frameworks = proc.stdout.splitlines()
    assert Path(path).parts[-2:] == ("integrations", "__init__.py")
    assert frameworks == "[]"


def test_core_imports_no_deepspeed_or_transformers() -> None:
    """A plain model under PerfMonitor never imports DeepSpeed, Transformers or Accelerate."""
    code = (
        "import sys, torch\n"
        "from perfcallback import PerfMonitor\n"
        "model = torch.nn.Linear(2, 2)\n"
        "with PerfMonitor(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1)):\n"
        "    pass\n"
        "print(sorted({'deepspeed', 'transformers', 'accelerate'} & set(sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
