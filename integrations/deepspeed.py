"""What :class:`~perfcallback.PerfMonitor` needs to time a DeepSpeed engine and quote its config.

``PerfMonitor(model=engine)`` (``engine`` from ``deepspeed.initialize``) imports this module only
when the model is a DeepSpeed engine, so the core never imports DeepSpeed. The monitor keeps its
forward hooks on the engine (the root module: its ``forward`` runs the wrapped model and ZeRO's
parameter fetches); this module adds what hooks cannot see:

- **backward** = ``engine.backward(loss)``: loss scaling, the autograd pass and DeepSpeed's gradient
  reduction (the all-reduce at stage 0, ZeRO's bucketed reduce and epilogue at stages 1 and 2).
  A gradient hook alone ends when autograd does, before the reduction. Across ranks, the
  reduction (``engine.allreduce_gradients``) is also timed as the exposed gradient-sync wait,
  as DDP's reducer wait is (``report.communication``, the live communication rule).
- **optimizer** = ``engine.step()``: ZeRO's partitioned update, the parameter all-gather after it,
  the LR scheduler and DeepSpeed's bookkeeping. Step hooks on the client optimizer miss all but
  the inner update.
- **one step = one optimizer update.** Under ``gradient_accumulation_steps > 1`` DeepSpeed wants
  ``engine.step()`` after every micro-batch and applies the update on the last one. A
  ``with perf.step():`` block per micro-batch (the usual DeepSpeed loop) is therefore joined with
  the next ones until a block's ``engine.step()`` lands on the accumulation boundary: the step
  then holds every micro-batch's fetch, forward, backward and ``step()``, as DeepSpeed's own
  ``global_steps`` counts it. A block holding all micro-batches of an update works the same way.

Both calls are shadowed on the engine *instance* (never on the class) and restored on exit; the
bookkeeping runs behind the session's fail-open guard.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from perfcallback.hooks import times_grad_sync
from perfcallback.integrations._patch import InstancePatches, bracket
from perfcallback.recorder import StepRecorder
from perfcallback.stats import BACKWARD, OPTIMIZER

__all__ = ["DeepSpeedProbe", "config_facts", "torch_optimizer"]

PROBE = "deepspeed_probe"  # fail-open component name of the engine wrappers


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The ``torch.optim.Optimizer`` inside DeepSpeed's wrappers (ZeRO, fp16), if there is one."""
    for _ in range(4):  # DeepSpeedZeroOptimizer -> client optimizer; fp16 wrappers add a level
        if optimizer is None or isinstance(optimizer, torch.optim.Optimizer):
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
    return None


def config_facts(engine: Any) -> dict[str, Any]:
    """The engine's performance-relevant settings, read from its parsed config.

    Rules quote these (``RunContext.extra["deepspeed"]``) so a fix names the DeepSpeed setting to
    change. Only accessor methods of the engine are used; one that is missing is left out.
    """
    queries: dict[str, str] = {
        "zero_stage": "zero_optimization_stage",
        "overlap_comm": "zero_overlap_comm",
        "contiguous_gradients": "zero_contiguous_gradients",
        "reduce_bucket_size": "zero_reduce_bucket_size",
        "allgather_bucket_size": "zero_allgather_bucket_size",
        "fp16": "fp16_enabled",
        "bf16": "bfloat16_enabled",
        "gradient_accumulation_steps": "gradient_accumulation_steps",
        "train_micro_batch_size_per_gpu": "train_micro_batch_size_per_gpu",
    }
    facts: dict[str, Any] = {}
    for key, method in queries.items():
        getter = getattr(engine, method, None)
        if callable(getter):
            facts[key] = getter()
    facts["offload_optimizer"] = _offload_device(getattr(engine, "zero_offload_optimizer", None))
    facts["offload_param"] = _offload_device(getattr(engine, "zero_offload_param", None))
    ckpt = getattr(getattr(engine, "_config", None), "activation_checkpointing_config", None)
    if ckpt is not None:
        keys = ("partition_activations", "cpu_checkpointing", "contiguous_memory_optimization")
        facts["activation_checkpointing"] = {k: getattr(ckpt, k, None) for k in keys}
    facts["optimizer_class"] = type(getattr(engine, "optimizer", None)).__name__
    return facts


def _offload_device(getter: Callable[[], Any] | None) -> str | None:
    """``"cpu"``/``"nvme"`` when ZeRO offloads there, else ``None``."""
    config = getter() if callable(getter) else None
    device = getattr(config, "device", None)
    device = getattr(device, "value", device)  # an OffloadDeviceEnum in recent DeepSpeed
    return None if device in (None, "none") else str(device)


def _timed_sync(fn: Callable[..., Any], recorder: StepRecorder) -> Callable[..., Any]:
    """``engine.allreduce_gradients`` timed as the gradient-sync wait inside backward.

    ``engine.backward`` calls it after autograd: the stage-0 all-reduce, ZeRO-1's reduce at the
    boundary, ZeRO-2's epilogue that waits for the buckets still in flight. The training thread
    waits for all of it, so it is exposed communication, like DDP's reducer wait.
    """
    begin = recorder.failopen.guard(PROBE, recorder.grad_sync_begin)
    end = recorder.failopen.guard(PROBE, recorder.grad_sync_end)

    def allreduce_gradients(*args: Any, **kwargs: Any) -> Any:
        begin()
        try:
            return fn(*args, **kwargs)
        finally:
            end()

    return allreduce_gradients


class DeepSpeedProbe:
    """Brackets ``engine.backward`` and ``engine.step`` on the instance, feeding ``recorder``.

    Args:
        recorder: Receives the phase events (each guarded: an error switches the probe off).
        engine: The ``DeepSpeedEngine`` returned by ``deepspeed.initialize``.
    """

    def __init__(self, recorder: StepRecorder, engine: Any) -> None:
        guard = recorder.failopen.guard
        start, end = guard(PROBE, recorder.phase_start), guard(PROBE, recorder.phase_end)
        self._engine = engine
        self._stepped = self._updated = False
        self._before_step = guard(PROBE, self._note_boundary)
        self._patches = InstancePatches()
        self._patches.shadow(engine, "backward", bracket(engine.backward, BACKWARD, start, end))
        step = bracket(engine.step, OPTIMIZER, start, end)

        def step_noting_boundary(*args: Any, **kwargs: Any) -> Any:
            self._before_step()
            return step(*args, **kwargs)

        self._patches.shadow(engine, "step", step_noting_boundary)
        reduce = getattr(engine, "allreduce_gradients", None)
        if times_grad_sync(recorder) and callable(reduce):
            self._patches.shadow(engine, "allreduce_gradients", _timed_sync(reduce, recorder))

    def _note_boundary(self) -> None:
        self._stepped = True
        self._updated |= bool(self._engine.is_gradient_accumulation_boundary())

    def update_done(self) -> bool:
        """Whether the step block just finished may end the step, and reset for the next block.

        ``False`` only when ``engine.step()`` ran in the block without reaching the accumulation
        boundary (a micro-batch of a longer update); a block without ``engine.step()`` ends it.
        """
        done = self._updated or not self._stepped
        self._stepped = self._updated = False
        return done

    def remove(self) -> None:
        """Restore the engine's own ``backward``, ``step`` and ``allreduce_gradients``.
        Idempotent."""
        self._patches.remove()
