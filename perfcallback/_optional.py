"""Import optional dependencies at the point of use, with an install hint when they are missing.

The core needs only torch. Everything else (Lightning, TensorBoard, pynvml, DeepSpeed) is an extra,
and this is the one place that turns a missing extra into an actionable message.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(module: str, *, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``perfcallback[extra]``.

    Args:
        module: Dotted module name, e.g. ``"lightning.pytorch"``.
        extra: The perfcallback extra that installs it, e.g. ``"lightning"``.

    Raises:
        MissingExtraError: ``module`` cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"perfcallback needs the optional package {module!r} for this feature, and it is not "
            f"installed. Install it with: pip install 'perfcallback[{extra}]'"
        ) from exc
