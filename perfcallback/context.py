"""Facts about the run that rules need besides the measurements: device, loader, optimizer, torch.

The monitor fills these in as it learns them (the loader when it is wrapped, the optimizer when it
is given); rules read them to tailor the fix to the user's actual settings.

torch is imported where a function needs it, not at module level: the trace analyser
(``perfcallback analyze``) builds a context for the rules without torch, and then reports what it
cannot know (the host's cores, the torch settings) as unknown rather than quoting the analysing
machine's.
"""

from __future__ import annotations

import gc
import os
import sys
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

from perfcallback._record import field, record

if TYPE_CHECKING:
    import torch


def _loaded_torch() -> Any:
    """torch when this process has imported it (every live run), else ``None`` (trace analysis)."""
    return sys.modules.get("torch")


def _torch_version() -> str:
    torch = _loaded_torch()
    return str(torch.__version__) if torch is not None else "unknown"


def _matmul_precision() -> str:
    torch = _loaded_torch()
    return str(torch.get_float32_matmul_precision()) if torch is not None else "unknown"


def usable_cpu_count() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@record(frozen=False)
class RunContext:
    """What the rules know about the environment. Mutable: facts arrive during the run."""

    device_type: str = "cpu"
    # None: unknown, e.g. a trace analysed on another machine (never quote the analyser's cores)
    cpu_count: int | None = field(default_factory=usable_cpu_count)
    torch_version: str = field(default_factory=_torch_version)
    world_size: int = 1
    rank: int = 0
    loader: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    compile_in_use: bool = False
    # Host memory and the Python collector's settings, quoted by the memory and gc rules.
    host_memory_bytes: int | None = field(default_factory=lambda: host_memory_bytes())
    gc_threshold: tuple[int, ...] = field(default_factory=gc.get_threshold)
    # Precision facts (CUDA only): refreshed once per window by the recorder.
    float32_matmul_precision: str = field(default_factory=_matmul_precision)
    autocast_seen: bool | None = None  # autocast active in a sampled forward; None = not sampled
    autocast_dtype: str | None = None  # its dtype when active, e.g. "bfloat16"
    param_dtype: str | None = None  # dtype of most of the model's parameters, e.g. "float32"
    cuda_capability: tuple[int, int] | None = None
    cuda_alloc_conf: str = field(
        default_factory=lambda: os.environ.get(
            "PYTORCH_CUDA_ALLOC_CONF", os.environ.get("PYTORCH_ALLOC_CONF", "")
        )
    )
    extra: dict[str, Any] = field(default_factory=dict)


def loader_facts(loader: object) -> dict[str, Any] | None:
    """DataLoader settings that rules quote back (``None`` for a plain iterable)."""
    import torch.utils.data

    if not isinstance(loader, torch.utils.data.DataLoader):
        return None
    return {
        "num_workers": loader.num_workers,
        "pin_memory": bool(loader.pin_memory),
        "persistent_workers": bool(loader.persistent_workers),
        "prefetch_factor": loader.prefetch_factor,
        "batch_size": loader.batch_size,
    }


def optimizer_facts(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer class and its foreach/fused settings, as rules need them."""
    defaults = getattr(optimizer, "defaults", {}) or {}
    return {
        "class": type(optimizer).__name__,
        "foreach": defaults.get("foreach"),
        "fused": defaults.get("fused"),
        "supports_foreach": "foreach" in defaults,
        "supports_fused": "fused" in defaults,
        "n_params": sum(p.numel() for g in optimizer.param_groups for p in g["params"]),
        "n_tensors": sum(len(g["params"]) for g in optimizer.param_groups),
    }


def ddp_facts(model: object) -> dict[str, Any] | None:
    """The DDP settings the communication rule quotes, or ``None`` when ``model`` is not DDP."""
    import torch

    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return None
    cap = getattr(model, "bucket_bytes_cap", None)
    return {
        "bucket_cap_mb": cap / 2**20 if isinstance(cap, (int, float)) else None,
        "gradient_as_bucket_view": bool(getattr(model, "gradient_as_bucket_view", False)),
        "static_graph": bool(getattr(model, "static_graph", False)),
        "find_unused_parameters": bool(getattr(model, "find_unused_parameters", False)),
        "comm_hook": bool(getattr(model, "_comm_hooks", None)),
    }


def ddp_runtime_figures(model: object) -> dict[str, float]:
    """What DDP itself measured, from its runtime logging data (sampled: the first 10 iterations,
    then one in 100): ``ddp_comm_s`` per backward (first bucket's all-reduce start to the last's
    end), ``ddp_overlap_s`` (the part of it during backward compute), ``ddp_backward_compute_s``.
    Read once, at report time: the call builds DDP's whole logging record."""
    get = getattr(model, "_get_ddp_logging_data", None)
    if not callable(get):
        return {}
    data = get()
    out = {}
    for key, name in (("avg_backward_comm_time", "ddp_comm_s"),
                      ("avg_backward_compute_comm_overlap_time", "ddp_overlap_s"),
                      ("avg_backward_compute_time", "ddp_backward_compute_s")):
        value = data.get(key)
        if isinstance(value, int) and value > 0:
            out[name] = value / 1e9  # DDP reports nanoseconds
    return out


def host_memory_bytes() -> int | None:
    """Physical memory of the host in bytes (``None`` where ``sysconf`` cannot tell)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def param_dtype(model: torch.nn.Module) -> str | None:
    """Name of the dtype holding most of ``model``'s parameter elements (``"float32"``)."""
    sizes: dict[torch.dtype, int] = {}
    for p in model.parameters():
        sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
    if not sizes:
        return None
    return str(max(sizes, key=lambda d: sizes[d])).removeprefix("torch.")


def is_compiled(model: torch.nn.Module) -> bool:
    """``model`` came from ``torch.compile(model)`` or had ``model.compile()`` called on it."""
    return hasattr(model, "_orig_mod") or getattr(model, "_compiled_call_impl", None) is not None


class CompileCounts(NamedTuple):
    """Cumulative torch._dynamo figures for this process (they only grow, unless reset)."""

    frames: int  # frames compiled: first compiles and recompiles alike
    graph_breaks: int  # graph breaks traced
    compile_s: float  # seconds inside dynamo's compile (tracing and backend)


def dynamo_counts() -> CompileCounts | None:
    """Read torch._dynamo's global counters; ``None`` when dynamo was never imported.

    Reads private counters (``torch._dynamo.utils.counters`` and ``compilation_time_metrics``),
    hence a cheap once-per-window call behind the recorder's fail-open guard; checking
    ``sys.modules`` first keeps a run that never compiles from importing dynamo (seconds).
    """
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is None:
        return None
    counters = utils.counters
    frames = int(counters.get("frames", {}).get("total", 0))
    breaks = int(sum(counters.get("graph_break", {}).values()))
    times = getattr(utils, "compilation_time_metrics", {}).get("_compile.compile_inner", ())
    return CompileCounts(frames, breaks, float(sum(times)))


class CompileProbe:
    """torch.compile figures per window, from dynamo's counters read once per window.

    The counters are process-wide and cumulative, so the probe keeps a few snapshots keyed by the
    last step they cover (one at the end of warm-up, one per window) and reports differences.

    Args:
        max_marks: Snapshots kept; enough to cover the recorder's ring buffer.
    """

    def __init__(self, max_marks: int) -> None:
        self._base = dynamo_counts() or CompileCounts(0, 0, 0.0)
        self._marks: deque[tuple[int, CompileCounts]] = deque(maxlen=max(1, max_marks))
        self._last_read: CompileCounts | None = None  # by fields()

    def mark(self, step: int, *, reuse: bool = False) -> None:
        """Snapshot the counters as of the end of ``step``; ``reuse``: the counters that
        :meth:`fields` just read (nothing ran since: the window that read them ends at ``step``).
        """
        now = self._last_read if reuse else dynamo_counts()
        if now is not None:
            self._marks.append((step, now))

    def fields(self, first_step: int, ctx: RunContext) -> dict[str, Any]:
        """``recompiles``, ``compile_s`` and ``graph_breaks`` for steps from ``first_step`` on.

        Also sets ``ctx.compile_in_use`` once anything compiled since the probe started. Returns
        nothing while compile is not in use, so the recompilation rules stay silent.
        """
        self._last_read = now = dynamo_counts()
        if now is None:
            return {}
        if now.frames > self._base.frames:
            ctx.compile_in_use = True
        if not ctx.compile_in_use:
            return {}
        since, before = next(((s, c) for s, c in reversed(self._marks) if s < first_step),
                             self._marks[0] if self._marks else (0, self._base))
        return {  # max(0, ...): torch._dynamo.reset() may have cleared the counters
            "recompiles": max(0, now.frames - before.frames),
            "compile_s": max(0.0, now.compile_s - before.compile_s),
            "compile_since_step": since,
            "graph_breaks": max(0, now.graph_breaks - self._base.graph_breaks),
        }


def autocast_active(device_type: str = "cuda") -> bool:
    """Whether autocast is on for ``device_type`` at this point of the program."""
    import torch

    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # older torch: no device argument, CUDA autocast only
        return bool(torch.is_autocast_enabled())


def autocast_dtype(device_type: str = "cuda") -> str | None:
    """Name of autocast's dtype for ``device_type`` (``"bfloat16"``); ``None`` if unknown."""
    import torch

    try:
        return str(torch.get_autocast_dtype(device_type)).removeprefix("torch.")
    except (AttributeError, RuntimeError, TypeError):  # older torch
        return None
