"""Import optional dependencies at the point of use, with an install hint when they are missing.

The core needs only torch. Everything else (Lightning, TensorBoard, pynvml, DeepSpeed) is an extra,
and this is the one place that turns a missing extra into an actionable message.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


class BrokenExtraError(MissingExtraError):
    """An optional dependency is installed but raises on import (not only ``ImportError``: a
    protobuf mismatch raises ``TypeError``). Treated like a missing extra: the feature is off."""


def require(module: str, *, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``perfcallback[extra]``.

    Args:
        module: Dotted module name, e.g. ``"lightning.pytorch"``.
        extra: The perfcallback extra that installs it, e.g. ``"lightning"``.

    Raises:
        MissingExtraError: ``module`` is not installed.
        BrokenExtraError: ``module`` is installed but its import raises.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"perfcallback needs the optional package {module!r} for this feature, and it is not "
            f"installed. Install it with: pip install 'perfcallback[{extra}]'"
        ) from exc
    except Exception as exc:  # installed but broken (e.g. a protobuf mismatch): same handling
        raise BrokenExtraError(
            f"the optional package {module!r} is installed but fails to import "
            f"({type(exc).__name__}: {exc}). Repair it, e.g. "
            f"pip install --force-reinstall 'perfcallback[{extra}]'"
        ) from exc
