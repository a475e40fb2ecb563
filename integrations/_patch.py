"""Instance-level wrappers around a framework's calls, removable, shared by the integrations.

Every integration that times a framework call (a DeepSpeed engine's ``backward``/``step``, the
Hugging Face Trainer's ``compute_loss``) shadows the bound method on the *instance*, never on the
class: other engines or trainers in the process stay untouched, and :meth:`InstancePatches.remove`
restores exactly what was there (another library's own instance patch included).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_MISSING = object()


def bracket(
    fn: Callable[..., Any], phase: int, start: Callable[[int], Any], end: Callable[[int], Any]
) -> Callable[..., Any]:
    """``fn`` inside ``phase``; the phase ends even when ``fn`` raises."""

    def bracketed(*args: Any, **kwargs: Any) -> Any:
        start(phase)
        try:
            return fn(*args, **kwargs)
        finally:
            end(phase)

    return bracketed


class InstancePatches:
    """Attributes shadowed on instances, undone by :meth:`remove` (only where ours still stands)."""

    def __init__(self) -> None:
        self._installed: list[tuple[object, str, object, object]] = []

    def shadow(self, obj: object, name: str, wrapper: object) -> None:
        """Set ``obj.name = wrapper`` on the instance, remembering what it shadowed."""
        previous = vars(obj).get(name, _MISSING)
        setattr(obj, name, wrapper)
        self._installed.append((obj, name, wrapper, previous))

    def remove(self) -> None:
        """Restore every shadowed attribute (unless replaced since). Idempotent."""
        for obj, name, wrapper, previous in reversed(self._installed):
            if vars(obj).get(name) is not wrapper:
                continue
            if previous is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, previous)
        self._installed.clear()
