"""One training run with one injected fault, for tests/test_faults.py (run as a script).

    python tests/fault_worker.py {monitor|lightning} CASE OUTDIR

Prints ``RESULT {json}`` when training ends normally. Cases: ``sink`` (a sink that raises),
``fsize`` (RLIMIT_FSIZE: every file write beyond 4 KiB fails, as on a full disk), ``unwritable``
(the logdir is under a regular file), ``broken_tb`` (the test puts a tensorboard that raises
TypeError on import first on PYTHONPATH), ``sigterm`` / ``sigint`` (the process signals itself
mid-run), ``user_exc`` (the user's own code raises), ``fork_workers`` (DataLoader workers forked
while the monitor runs).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

STEPS, FAULT_AT = 30, 15


class UserBug(ValueError):
    """The user's own exception: it must reach the user unchanged."""


def fault(case: str, step: int) -> None:
    """Inject ``case`` at ``step`` (called from inside the training step)."""
    if step != FAULT_AT:
        return
    if case == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    elif case == "sigint":
        os.kill(os.getpid(), signal.SIGINT)
    elif case == "user_exc":
        raise UserBug("user bug 42")


def loader(case: str) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(STEPS * 8, 16, generator=g),
                         torch.randint(0, 4, (STEPS * 8,), generator=g))
    if case == "fork_workers":
        return DataLoader(data, batch_size=8, num_workers=2, multiprocessing_context="fork")
    return DataLoader(data, batch_size=8)


def logdir(case: str, out: Path) -> Path:
    if case == "unwritable":
        blocker = out / "a_file"
        blocker.write_text("user data")
        return blocker / "perf"
    return out / "perf"


def prepare(case: str) -> None:
    """Faults that must be in place before training starts (after every import)."""
    if case == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write is EFBIG, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def broken_sink() -> Any:
    from perfcallback.sinks import Sink

    class BrokenSink(Sink):
        def on_window(self, stats: Any) -> None:
            raise RuntimeError("sink bug")

    return BrokenSink()


def run_monitor(case: str, out: Path) -> dict[str, Any]:
    from perfcallback import PerfMonitor

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sinks = [broken_sink()] if case == "sink" else []
    perf = PerfMonitor(model=model, optimizer=opt, logdir=logdir(case, out), warmup_steps=2,
                       window_steps=5, sinks=sinks)
    prepare(case)
    with perf:
        for i, (x, y) in enumerate(perf.wrap_loader(loader(case))):
            with perf.step():
                fault(case, i)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                opt.zero_grad()
    report = perf.report()
    return {"steps": report.steps, "profiled": report.profiled_steps, "disabled": report.disabled}


def run_lightning(case: str, out: Path) -> dict[str, Any]:
    import lightning.pytorch as L
    from lightning.pytorch.loggers import CSVLogger

    from perfcallback import PerfCallback

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                           torch.nn.Linear(32, 4))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            fault(case, batch_idx)
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    sinks = [broken_sink()] if case == "sink" else []
    cb = PerfCallback(logdir=logdir(case, out), warmup_steps=2, window_steps=5, sinks=sinks)
    trainer = L.Trainer(callbacks=[cb], max_epochs=1, logger=CSVLogger(out / "csv"),
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    prepare(case)
    trainer.fit(Module(), loader(case))
    report = cb.report()
    return {"steps": report.steps, "profiled": report.profiled_steps, "disabled": report.disabled,
            "interrupted": bool(trainer.interrupted)}


if __name__ == "__main__":
    adapter, case, out_dir = sys.argv[1:4]
    torch.set_num_threads(1)
    run = run_monitor if adapter == "monitor" else run_lightning
    result = run(case, Path(out_dir))
    print("RESULT " + json.dumps(result), flush=True)
