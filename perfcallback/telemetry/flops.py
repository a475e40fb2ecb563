"""Model FLOPs per optimizer step (counted once) and the peak FLOP/s table that turns them into MFU.

Design notes:
- The count runs once per run, with :class:`torch.utils.flop_counter.FlopCounterMode` around one
  whole real step (forward, backward and optimizer), so it counts exactly what the user's step
  runs, at its batch size. The counted step runs under a dispatch mode and is slower: it is never
  a measured step (the last warm-up step, or the first step, left out, when there is no warm-up).
- FlopCounterMode counts matmuls, convolutions and attention (2 FLOPs per multiply-add); it does
  not count element-wise work, which is the convention MFU uses (PaLM, torchtitan). A model it
  cannot count (custom kernels, an error inside the mode) gives no figure: fail open.
- Peak figures are dense (no 2:4 sparsity) tensor-core peaks from each vendor's datasheet, per
  compute dtype. MFU = counted FLOPs / step time / peak; ``None`` where the device or its dtype is
  not in the table (any CPU, unknown GPUs).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from perfcallback._record import record
from perfcallback.context import RunContext, dynamo_counts

logger = logging.getLogger("perfcallback")

_T = 1e12


@record(kw_only=False)
class DevicePeak:
    """Dense peak FLOP/s of one device model, by compute dtype, and where the numbers come from."""

    match: str  # lower-case word(s) in torch.cuda.get_device_name()
    flops: dict[str, float]  # "bf16" | "fp16" | "tf32" | "fp32" -> FLOP/s
    source: str


# Most specific names first: "h100 pcie" must match before "h100". Sparse datasheet figures
# (marked "with sparsity") are halved to their dense value.
PEAKS: tuple[DevicePeak, ...] = (
    DevicePeak("b200", {"bf16": 2250 * _T, "fp16": 2250 * _T, "tf32": 1125 * _T,
                        "fp32": 75 * _T},
               "NVIDIA Blackwell datasheet / HGX B200 spec, per GPU, dense "
               "(https://www.nvidia.com/en-us/data-center/hgx/)"),
    DevicePeak("h200 nvl", {"bf16": 835.5 * _T, "fp16": 835.5 * _T, "tf32": 417.5 * _T,
                            "fp32": 60 * _T},
               "NVIDIA H200 datasheet, H200 NVL column, sparse/2 "
               "(https://www.nvidia.com/en-us/data-center/h200/)"),
    DevicePeak("h200", {"bf16": 989.5 * _T, "fp16": 989.5 * _T, "tf32": 494.5 * _T,
                        "fp32": 67 * _T},
               "NVIDIA H200 datasheet, H200 SXM column, sparse/2 "
               "(https://www.nvidia.com/en-us/data-center/h200/)"),
    DevicePeak("h100 pcie", {"bf16": 756.5 * _T, "fp16": 756.5 * _T, "tf32": 378 * _T,
                             "fp32": 51 * _T},
               "NVIDIA H100 datasheet, H100 PCIe column, sparse/2 "
               "(https://www.nvidia.com/en-us/data-center/h100/)"),
    DevicePeak("h100 nvl", {"bf16": 835.5 * _T, "fp16": 835.5 * _T, "tf32": 417.5 * _T,
                            "fp32": 60 * _T},
               "NVIDIA H100 datasheet, H100 NVL column, sparse/2 "
               "(https://www.nvidia.com/en-us/data-center/h100/)"),
    DevicePeak("h100", {"bf16": 989.5 * _T, "fp16": 989.5 * _T, "tf32": 494.5 * _T,
                        "fp32": 67 * _T},
               "NVIDIA H100 datasheet, H100 SXM column, sparse/2 "
               "(https://www.nvidia.com/en-us/data-center/h100/)"),
    DevicePeak("a100", {"bf16": 312 * _T, "fp16": 312 * _T, "tf32": 156 * _T,
                        "fp32": 19.5 * _T},
               "NVIDIA A100 datasheet (SXM and PCIe alike), dense "
               "(https://www.nvidia.com/en-us/data-center/a100/)"),
    DevicePeak("l40s", {"bf16": 362 * _T, "fp16": 362 * _T, "tf32": 183 * _T,
                        "fp32": 91.6 * _T},
               "NVIDIA L40S datasheet, sparse/2 (https://www.nvidia.com/en-us/data-center/l40s/)"),
    DevicePeak("l4", {"bf16": 121 * _T, "fp16": 121 * _T, "tf32": 60 * _T, "fp32": 30.3 * _T},
               "NVIDIA L4 datasheet, sparse/2 (https://www.nvidia.com/en-us/data-center/l4/)"),
    DevicePeak("a10", {"bf16": 125 * _T, "fp16": 125 * _T, "tf32": 62.5 * _T, "fp32": 31.2 * _T},
               "NVIDIA A10 datasheet, sparse/2; not the A10G, whose clocks differ "
               "(https://www.nvidia.com/en-us/data-center/products/a10-gpu/)"),
    DevicePeak("v100", {"fp16": 125 * _T, "fp32": 15.7 * _T},
               "NVIDIA V100 datasheet, SXM2 column; no bf16/tf32 tensor cores "
               "(https://www.nvidia.com/en-us/data-center/v100/)"),
    DevicePeak("t4", {"fp16": 65 * _T, "fp32": 8.1 * _T},
               "NVIDIA T4 datasheet; no bf16/tf32 tensor cores "
               "(https://www.nvidia.com/en-us/data-center/tesla-t4/)"),
    DevicePeak("mi300x", {"bf16": 1307.4 * _T, "fp16": 1307.4 * _T, "tf32": 653.7 * _T,
                          "fp32": 163.4 * _T},
               "AMD Instinct MI300X datasheet, dense matrix peaks "
               "(https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html)"),
)


def peak_for(device_name: str) -> DevicePeak | None:
    """The table row for ``device_name`` (``torch.cuda.get_device_name()``), or ``None``."""
    name = device_name.lower()  # whole words: "a10" must not match "a100" or "a10g"
    return next((p for p in PEAKS if re.search(rf"\b{re.escape(p.match)}\b", name)), None)


def peak_flops(device_name: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of ``device_name`` in ``dtype``; ``None`` where unknown."""
    row = peak_for(device_name)
    return None if row is None else row.flops.get(dtype)


def compute_dtype(ctx: RunContext) -> str:
    """The dtype matmuls run in: autocast's, else the parameters', with TF32 when it is on."""
    if ctx.autocast_seen and ctx.autocast_dtype in ("bfloat16", "float16"):
        return "bf16" if ctx.autocast_dtype == "bfloat16" else "fp16"
    if ctx.param_dtype in ("bfloat16", "float16"):
        return "bf16" if ctx.param_dtype == "bfloat16" else "fp16"
    cap = ctx.cuda_capability
    if ctx.float32_matmul_precision != "highest" and cap is not None and cap[0] >= 8:
        return "tf32"
    return "fp32"


class StepFlopCounter:
    """Counts the FLOPs of one step with ``FlopCounterMode`` (entered and left by the recorder).

    ``flops_per_step`` is set by the user (``flops_per_step=`` option; nothing is counted) or by
    the one counted step; ``None`` until then, and for models that count to zero.
    """

    def __init__(self, flops_per_step: float | None = None,
                 context: RunContext | None = None) -> None:
        self.flops_per_step = flops_per_step
        self.pending = flops_per_step is None  # one count still to do
        self._mode: Any = None
        self._context = context
        counts = dynamo_counts()  # reads sys.modules only: never imports dynamo
        self._frames_before = counts.frames if counts is not None else 0

    def _compiled(self) -> bool:
        """torch.compile is in use in this run (the model, or frames compiled since we began)."""
        counts = dynamo_counts()
        return bool(self._context is not None and self._context.compile_in_use) or (
            counts is not None and counts.frames > self._frames_before)

    @property
    def counting(self) -> bool:
        return self._mode is not None

    def start(self) -> None:
        """Enter the counting mode at the start of the counted step."""
        from torch.utils.flop_counter import FlopCounterMode

        self.pending = False  # whatever happens, counted once
        if self._compiled():
            # FlopCounterMode's global module hooks and dispatch mode would make torch.compile
            # warn and recompile inside the user's step: a compiled run is not counted.
            logger.info("perfcallback: model FLOPs are not counted under torch.compile; pass "
                        "flops_per_step=... to get TFLOP/s and MFU")
            return
        mode = FlopCounterMode(display=False)
        mode.__enter__()  # type: ignore[no-untyped-call]
        self._mode = mode

    def stop(self, completed: bool = True) -> None:
        """Leave the mode; keep the count when the step ``completed``."""
        mode, self._mode = self._mode, None
        if mode is None:
            return
        mode.__exit__(None, None, None)
        if not completed:
            self.pending = True  # an aborted step: count the next one instead
            return
        total = float(mode.get_total_flops())
        if total > 0:
            self.flops_per_step = total
        else:
            logger.info("perfcallback: FlopCounterMode counted no FLOPs in a step of this model "
                        "(custom kernels?); MFU is not reported. Pass flops_per_step=... to set "
                        "it.")


class MfuProbe:
    """Per-window ``flops_per_step``, ``tflops`` (achieved TFLOP/s) and ``mfu`` (0..1) figures.

    Args:
        counter: Where the FLOP count comes from.
        context: Run facts: device type, compute dtype.
        device_name: Returns the training device's name (``None`` off CUDA); called at most once.
    """

    name = "mfu"

    def __init__(self, counter: StepFlopCounter, context: RunContext,
                 device_name: Any = None) -> None:
        self.counter, self.context = counter, context
        self._device_name = device_name
        self._peak_row: DevicePeak | None = None
        self._resolved = False
        self.peak_flops: float | None = None

    def sample(self) -> None:
        if not self._resolved and self.context.device_type == "cuda" and self._device_name:
            self._resolved = True  # device facts are read once, on the training thread
            name = self._device_name()
            self._peak_row = peak_for(name) if name else None
            if name and self._peak_row is None:
                logger.info("perfcallback: no peak FLOP/s known for %r; MFU is not reported", name)
        row = self._peak_row
        self.peak_flops = None if row is None else row.flops.get(compute_dtype(self.context))

    def figures(self, step_s: float) -> dict[str, float]:
        flops = self.counter.flops_per_step
        if not flops or step_s <= 0:
            return {}
        achieved = flops / step_s
        out = {"flops_per_step": flops, "tflops": achieved / 1e12}
        if self.peak_flops:
            out["mfu"] = achieved / self.peak_flops
        return out

    def close(self) -> None:
        pass
