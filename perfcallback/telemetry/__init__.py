"""Telemetry probes that feed each window: NVML device samples, the FLOP count, host threads.

Each probe is a :class:`WindowProbe`: the recorder calls :meth:`WindowProbe.sample` once per
window on the training thread (cheap: it reads what a background thread gathered, or a few
counters) and :meth:`WindowProbe.figures` whenever it summarises a window. The figures join
``WindowStats.extra`` under the names in :data:`perfcallback.stats.EXTRA_KEYS`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from perfcallback.recorder import StepRecorder


class WindowProbe(Protocol):
    """A source of per-window figures (see the module docstring)."""

    name: str  # fail-open component name

    def sample(self) -> None:
        """Close the current window's figures (once per window, on the training thread)."""

    def figures(self, step_s: float) -> dict[str, float]:
        """The latest closed window's figures; ``step_s`` is the mean step of the summary."""

    def close(self) -> None:
        """Release threads and handles. Idempotent."""


def attach_telemetry(
    recorder: StepRecorder,
    *,
    nvml: bool | None = None,
    nvml_interval_s: float = 0.2,
    count_flops: bool = True,
    flops_per_step: float | None = None,
    nvml_module: Any = None,
) -> None:
    """Give ``recorder`` its per-window probes: host threads, FLOPs/MFU and (on CUDA) NVML.

    Nothing here touches CUDA or NVML: each probe reads its device facts at the first window.

    Args:
        nvml: Sample NVML; ``None``: when the recorder times CUDA.
        nvml_interval_s: Seconds between NVML samples.
        count_flops: Count one step's FLOPs with FlopCounterMode (unless ``flops_per_step``).
        flops_per_step: The model FLOPs of one optimizer step, if the user knows them.
        nvml_module: A ``pynvml`` stand-in (tests only).
    """
    from perfcallback.telemetry.flops import MfuProbe, StepFlopCounter
    from perfcallback.telemetry.host import HostThreadsProbe

    ctx = recorder.context
    recorder.probes.append(HostThreadsProbe(min_interval_s=_HOST_SAMPLE_S))
    if count_flops or flops_per_step is not None:
        counter = StepFlopCounter(flops_per_step, ctx)
        recorder.flop_counter = counter
        recorder.probes.append(MfuProbe(counter, ctx, lambda: _device_name(recorder)))
    if nvml or (nvml is None and ctx.device_type == "cuda"):
        from perfcallback.telemetry.nvml import NvmlSampler, torch_device_ids

        recorder.probes.append(NvmlSampler(lambda: torch_device_ids(recorder.device),
                                           interval_s=nvml_interval_s, nvml=nvml_module))
    elif nvml is None:
        _say_once(f"perfcallback: no GPU telemetry on a {ctx.device_type} run (NVML samples "
                  "CUDA devices only)")


_HOST_SAMPLE_S = 0.5  # host CPU figures: at most two samples a second (two syscalls each)
_said: set[str] = set()


def _say_once(message: str) -> None:
    """Log ``message`` at INFO once per process (an expected condition, not a warning)."""
    if message not in _said:
        _said.add(message)
        logging.getLogger("perfcallback").info(message)


def _device_name(recorder: StepRecorder) -> str | None:
    import torch

    if recorder.context.device_type != "cuda":
        return None
    return str(torch.cuda.get_device_name(recorder.device))
