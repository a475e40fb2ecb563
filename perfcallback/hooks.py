"""Module and optimizer hooks that time forward, backward and optimizer phases with no loop changes.

- forward: a forward pre-hook and an ``always_call`` forward hook on the root module only (nested
  calls of the same module count once).
- backward, in one process: the call of ``torch.autograd.backward`` (what ``loss.backward()``
  calls) is the backward phase. While a monitor listens, that function is wrapped process-wide
  (:func:`_timed_backward`, restored when the last monitor goes). A Python hook inside the autograd
  engine costs ~15 us a step (it takes the GIL from the engine); the wrapper costs ~1 us. For the
  first steps a gradient hook on the model's output checks that backward does come through that
  call; if it ever runs another way (``torch.autograd.grad``, a reference to the function taken
  before the wrapper), the monitor falls back on the hooks below for the rest of the run.
- backward, across ranks (and in that fallback): the forward hook registers a gradient hook on the
  first output tensor that requires grad; when autograd reaches it, backward has started. Backward
  ends where the user's ``backward()`` call returns: after the autograd engine's final callbacks,
  which is where DDP's reducer (and FSDP) wait for gradient communication. :class:`GradSyncProbe`
  times that wait apart, as exposed communication inside backward. The loss's own backward before
  it reaches the model output counts as "other".
- optimizer: ``register_step_pre_hook`` / ``register_step_post_hook`` (torch >= 2.0).

Every callback runs behind the recorder's fail-open guard; handles are kept and removed in
:meth:`PhaseHooks.remove`. Modules and optimizers are held by weak reference only.

Under ``torch.compile``: ``torch.compile(model)`` wraps the module, so the hooks run outside the
compiled frame. An in-place ``model.compile()`` compiles ``_call_impl`` itself, hooks included;
there the forward hooks are marked ``torch._dynamo.disable``, which dynamo runs eagerly with no
graph break, so forward is still timed. They are marked only there: the mark costs a few
microseconds a step, and inside a compiled function that calls the model
(``torch.compile(train_step)``) it would be a graph break. Everywhere else the hooks return at
once while dynamo traces them (``torch.compiler.is_compiling()``), so the monitor never adds a
graph break of its own. A model compiled in place after the hooks went in is noticed at the next
backward call (or window), where the hooks are marked anew.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from perfcallback.recorder import StepRecorder
from perfcallback.stats import BACKWARD, FORWARD, OPTIMIZER


def _first_grad_tensor(output: Any) -> torch.Tensor | None:
    """The first tensor in ``output`` (tensor, sequence or mapping) that requires grad."""
    if isinstance(output, torch.Tensor):
        return output if output.requires_grad else None
    if isinstance(output, (list, tuple)):
        items: Any = output
    elif isinstance(output, dict):
        items = output.values()
    else:
        items = getattr(output, "__dict__", {}).values()  # dataclass-like model outputs
    for item in items:
        if isinstance(item, torch.Tensor) and item.requires_grad:
            return item
    return None


def times_grad_sync(recorder: StepRecorder) -> bool:
    """Whether to time the gradient-sync wait: only across ranks, where there is one. A single
    process keeps its one, cheaper backward callback."""
    return recorder.context.world_size > 1


class GradSyncProbe:
    """Times the wait for gradient synchronisation at the end of one backward pass.

    The autograd engine runs its final callbacks in the order they were queued, and a callback
    queued from a callback runs after every one already queued. :meth:`start` is called from a
    gradient hook as backward begins, before DDP's reducer queues its ``finalize_backward`` (it
    does so once the last bucket is ready). So ``_compute_done`` runs first once the graph is
    done: gradient compute has ended. It queues ``_synced``, which runs after the reducer has
    waited for the last all-reduce, just before the user's ``backward()`` returns. The time
    between the two is gradient communication that compute did not hide. Without DDP or FSDP
    nothing runs in between and the wait is ~0.

    Args:
        recorder: Receives ``grad_sync_begin``/``grad_sync_end``.
        guard: The session's fail-open guard; an error here must not reach ``backward()``.
        then: Called after the sync, on the training thread (PhaseHooks ends backward there).
    """

    __slots__ = ("_compute_done", "_queue", "_rec", "_synced", "_then")

    def __init__(
        self, recorder: StepRecorder, guard: Any, then: Callable[[], None] | None = None
    ) -> None:
        self._rec, self._then = recorder, then
        self._queue = torch.autograd.Variable._execution_engine.queue_callback
        self._compute_done: Callable[[], None] = guard("backward_hook", self._on_compute_done)
        self._synced: Callable[[], None] = guard("backward_hook", self._on_synced)

    def start(self) -> None:
        """Backward has begun (call from inside a gradient hook: the engine must be running)."""
        self._queue(self._compute_done)

    def _on_compute_done(self) -> None:
        self._rec.grad_sync_begin()
        self._queue(self._synced)

    def _on_synced(self) -> None:
        self._rec.grad_sync_end()
        if self._then is not None:
            self._then()


class PhaseHooks:
    """Installs phase-timing hooks on a model and/or optimizer, feeding ``recorder``."""

    def __init__(
        self,
        recorder: StepRecorder,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self._rec = recorder
        self._handles: list[RemovableHandle] = []
        self._fwd_handles: list[RemovableHandle] = []
        self._fwd_marked = False  # forward hooks marked for dynamo (an in-place compiled model)
        self._fwd_ran = True  # the forward pre-hook ran eagerly since the last backward call
        self._shadowed: list[tuple[object, str]] = []  # instance attributes to delete at remove()
        self._depth = 0
        self._in_backward = False
        self._in_call = False  # inside a torch.autograd.backward call this monitor times
        self._confirmed = 0  # steps whose backward was seen to come through that call
        self._thread = threading.get_ident()
        guard = recorder.failopen.guard
        # Called every step: fail-open checked inline (see _fwd_pre), not through a guard wrapper.
        self._disabled = recorder.failopen.disabled  # read only: a dict shared with FailOpen
        self._trip = recorder.failopen.trip
        self._on_grad: Callable[[torch.Tensor], None] = guard("backward_hook", self._grad_hook)
        self._on_grad_node: Callable[[Any], None] = guard("backward_hook", self._grad_node_hook)
        self._end_backward: Callable[[], None] = guard("backward_hook", self._backward_done)
        self._check_compile_guarded: Callable[[], dict[str, Any]] = guard(
            "forward_hook", self._check_compile)
        self._sync = (GradSyncProbe(recorder, guard, then=self._backward_done)
                      if times_grad_sync(recorder) else None)
        self._by_call = model is not None and self._sync is None
        if model is not None:
            self._install_model(model, guard)
        if optimizer is not None:
            self._install_optimizer(optimizer, guard)

    def _install_model(self, model: torch.nn.Module, guard: Any) -> None:
        self._model_ref = weakref.ref(model)
        self._register_forward_hooks(model)
        self._install_fsdp(model)
        if self._by_call:
            _listen(self)
        self._rec.window_sources.append(self._check_compile_guarded)

    def _register_forward_hooks(self, model: torch.nn.Module) -> None:
        """(Re-)register the forward hooks, marked for dynamo if ``model`` is compiled in place."""
        for handle in self._fwd_handles:
            handle.remove()
            self._handles.remove(handle)
        pre: Callable[..., Any] = self._fwd_pre
        post: Callable[..., Any] = self._fwd_post
        # Marked for dynamo to run eagerly (no graph break). Importing dynamo costs seconds: while
        # it is not loaded, the hooks rely on their _is_compiling() early return.
        dynamo = sys.modules.get("torch._dynamo")
        self._fwd_marked = dynamo is not None and _compiled_in_place(model)
        if dynamo is not None and self._fwd_marked:
            pre, post = dynamo.disable(pre), dynamo.disable(post)
        self._fwd_handles = [model.register_forward_pre_hook(pre),
                             model.register_forward_hook(post, always_call=True)]
        self._handles += self._fwd_handles

    def _check_compile(self) -> dict[str, Any]:
        """Mark the forward hooks for dynamo if the model was compiled in place since.

        Also a window source (with no figures of its own), so that the check runs once per
        window on paths where no backward call comes through :meth:`call_begins`.
        """
        model = self._model_ref()
        if not self._fwd_marked and model is not None and _compiled_in_place(model):
            self._register_forward_hooks(model)
        return {}

    def _install_fsdp(self, model: torch.nn.Module) -> None:
        """FSDP2 (``fully_shard``): backward starts at the first FSDP pre-backward hook.

        FSDP registers its pre-backward hook on each wrapped module's output as that module's
        forward ends, so on the model's output it fires before ours: it all-gathers parameters for
        backward and queues FSDP's final callback (which waits for the reduce-scatter). Shadowing
        ``_pre_backward`` on each FSDP state instance (bound when FSDP registers the hook, at every
        forward) starts backward there, and queues GradSyncProbe's first callback before FSDP's.
        """
        on_grad = self._on_grad
        for module in model.modules():
            get_state = getattr(module, "_get_fsdp_state", None)
            state = get_state() if callable(get_state) else None
            original = getattr(state, "_pre_backward", None)
            if state is None or original is None or "_pre_backward" in vars(state):
                continue

            def pre_backward(grad: torch.Tensor, _original: Any = original) -> Any:
                on_grad(grad)
                return _original(grad)

            state._pre_backward = pre_backward
            self._shadowed.append((state, "_pre_backward"))

    def _install_optimizer(self, optimizer: torch.optim.Optimizer, guard: Any) -> None:
        self._handles.append(optimizer.register_step_pre_hook(self._opt_pre))
        self._handles.append(optimizer.register_step_post_hook(self._opt_post))

    def remove(self) -> None:
        """Remove every hook this object installed. Idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._fwd_handles.clear()
        if self._check_compile_guarded in self._rec.window_sources:
            self._rec.window_sources.remove(self._check_compile_guarded)
        for obj, name in self._shadowed:
            vars(obj).pop(name, None)
        self._shadowed.clear()
        _unlisten(self)

    # Hooks: short, and everything measured lives in the recorder. Each runs every step, so its
    # fail-open guard is inline (a try, and a check that its component is still on) rather than a
    # FailOpen.guard wrapper: a Python call between two training steps costs about a microsecond.
    def _fwd_pre(self, module: torch.nn.Module, args: Any) -> None:
        # traced by an in-place model.compile(): stay out of the graph
        if _is_compiling() or _FORWARD in self._disabled:
            return
        try:
            self._depth += 1
            if self._depth == 1:
                self._fwd_ran = True
                rec = self._rec
                rec.phase_start(FORWARD)
                if rec.autocast_pending:  # once per window, where the user's autocast is in force
                    rec.sample_autocast()
        except Exception as exc:  # fail open: never let our error reach the training loop
            self._trip(_FORWARD, exc)

    def _fwd_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if _is_compiling() or _FORWARD in self._disabled:
            return
        try:
            self._depth = max(0, self._depth - 1)
            if self._depth:
                return
            self._rec.phase_end(FORWARD)
            if self._by_call and self._confirmed >= _CONFIRM_STEPS:
                return  # backward is timed at its call; no hook inside the engine needed
            if self._rec.in_step and torch.is_grad_enabled():
                self._hook_backward_start(output)
        except Exception as exc:  # fail open
            self._trip(_FORWARD, exc)

    def _hook_backward_start(self, output: Any) -> None:
        """A gradient hook where backward reaches the model's output: backward starts there."""
        # most models return one tensor: skip the generic search for it
        tensor = output if type(output) is torch.Tensor else _first_grad_tensor(output)
        node = tensor.grad_fn if tensor is not None else None
        if node is not None:  # a pre-hook on its autograd node: cheaper than a tensor hook
            node.register_prehook(self._on_grad_node)
        elif tensor is not None and tensor.requires_grad:  # a leaf: the model returned a
            # parameter
            tensor.register_hook(self._on_grad)  # type: ignore[no-untyped-call]

    def _grad_node_hook(self, grad_outputs: Any) -> None:
        self._grad_hook(None)

    def _grad_hook(self, grad: torch.Tensor | None) -> None:
        if self._in_call:  # timed at the call: this step confirms that backward comes that way
            self._confirmed += 1
            return
        if self._in_backward:
            return
        self._by_call = False  # backward ran outside torch.autograd.backward: hooks from now on
        self._in_backward = True
        self._rec.phase_start(BACKWARD)
        if self._sync is not None:
            self._sync.start()
        else:
            torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)

    def _backward_done(self) -> None:
        self._in_backward = False
        self._rec.phase_end(BACKWARD)

    def call_begins(self) -> bool:
        """A ``torch.autograd.backward`` call starts; ``True`` if this monitor times it (never
        while dynamo traces the call: a compiled step keeps no clock of ours in its graph)."""
        if not self._fwd_ran and not self._fwd_marked:  # forward ran traced? (see _check_compile)
            self._check_compile_guarded()
        self._fwd_ran = False
        if (not self._by_call or self._in_call or self._in_backward or _BACKWARD in self._disabled
                or _is_compiling() or threading.get_ident() != self._thread):
            return False
        try:
            if not self._rec._in_step:
                return False
            self._in_call = True
            self._rec.phase_start(BACKWARD)
        except Exception as exc:  # fail open
            self._trip(_BACKWARD, exc)
            return False
        return True

    def call_ends(self) -> None:
        self._in_call = False
        if _BACKWARD not in self._disabled:
            try:
                self._rec.phase_end(BACKWARD)
            except Exception as exc:  # fail open
                self._trip(_BACKWARD, exc)

    def _opt_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if _OPTIMIZER not in self._disabled:
            try:
                self._rec.phase_start(OPTIMIZER)
            except Exception as exc:  # fail open
                self._trip(_OPTIMIZER, exc)

    def _opt_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if _OPTIMIZER not in self._disabled:
            try:
                self._rec.phase_end(OPTIMIZER)
            except Exception as exc:  # fail open
                self._trip(_OPTIMIZER, exc)


_FORWARD, _BACKWARD, _OPTIMIZER = "forward_hook", "backward_hook", "optimizer_hook"  # components
# True only while dynamo traces the caller (it folds the call to a constant). The dynamo-only
# variant is one Python frame; is_compiling() is two (it asks TorchScript first).
_is_compiling: Callable[[], bool] = getattr(
    torch.compiler, "is_dynamo_compiling", torch.compiler.is_compiling
)
_CONFIRM_STEPS = 3  # steps whose backward must come through the call before its hook is dropped

# Process-wide: torch.autograd.backward wrapped while at least one PhaseHooks listens.
_listeners: list[PhaseHooks] = []
_original_backward: Callable[..., Any] | None = None


def _timed_backward(*args: Any, **kwargs: Any) -> Any:
    """``torch.autograd.backward`` (what ``Tensor.backward`` calls) timed as the backward phase of
    the monitors that listen; their checks and clocks are behind their fail-open guards."""
    original = _original_backward
    assert original is not None
    if len(_listeners) == 1:  # the usual case, without the list below (every step counts)
        only = _listeners[0]
        if not only.call_begins():
            return original(*args, **kwargs)
        try:
            return original(*args, **kwargs)
        finally:
            only.call_ends()
    timing = [hooks for hooks in _listeners if hooks.call_begins()]
    if not timing:
        return original(*args, **kwargs)
    try:
        return original(*args, **kwargs)
    finally:
        for hooks in timing:
            hooks.call_ends()


def _listen(hooks: PhaseHooks) -> None:
    global _original_backward
    current = torch.autograd.backward
    # Install unless ours is still in place, perhaps beneath another library's wrapper (wrapping
    # theirs would make the two call each other); if the original was put back over us, re-wrap.
    if _original_backward is None or current is _original_backward:
        _original_backward = current
        torch.autograd.backward = _timed_backward
    _listeners.append(hooks)


def _unlisten(hooks: PhaseHooks) -> None:
    """Stop ``hooks`` listening; the last one out restores ``torch.autograd.backward`` (unless
    something wrapped it since: then ours stays beneath, passing calls through)."""
    global _original_backward
    if hooks in _listeners:
        _listeners.remove(hooks)
    if not _listeners and torch.autograd.backward is _timed_backward:
        torch.autograd.backward = _original_backward  # type: ignore[assignment]
        _original_backward = None


def _compiled_in_place(model: torch.nn.Module) -> bool:
    """``model.compile()`` was called: its ``_call_impl``, hooks included, runs compiled."""
    return getattr(model, "_compiled_call_impl", None) is not None
