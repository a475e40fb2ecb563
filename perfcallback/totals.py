"""RunTotals: running sums over every measured step of a run (O(1) memory, whatever its length).

The ring buffer holds recent steps for windows and percentiles; these sums are what the Report's
whole-run means come from, and what a checkpoint must carry for a resumed run to continue them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from perfcallback.stats import DATA, PHASE_NAMES

_N_PHASES = len(PHASE_NAMES)


class RunTotals:
    """Sums of phase times, samples, GC, device times and validation over the measured steps."""

    def __init__(self) -> None:
        self.steps = 0
        self.phase_s = [0.0] * _N_PHASES
        self.step_s = 0.0
        self.samples = 0
        self.gc = {"pause_s": 0.0, "collections": 0, "gen0": 0, "gen1": 0, "gen2": 0}
        self.device_phase_s = [0.0] * _N_PHASES
        self.device_step_s = 0.0
        self.device_steps = 0
        self.validation_s = 0.0
        self.validation_runs = 0
        self.comm_exposed_s = 0.0

    def add_step(
        self,
        phases: Sequence[float],
        step_s: float,
        samples: int,
        gc_pause_s: float,
        gc_n: int,
        comm_s: float = 0.0,
    ) -> None:
        self.comm_exposed_s += comm_s
        totals = self.phase_s
        for i in range(_N_PHASES):
            totals[i] += phases[i]
        self.step_s += step_s
        self.samples += samples
        self.steps += 1
        self.gc["pause_s"] += gc_pause_s
        self.gc["collections"] += gc_n

    def add_gc_generation(self, generation: int) -> None:
        key = f"gen{generation}"
        if key in self.gc:
            self.gc[key] += 1

    def add_device_step(self, step_s: float, phases: Sequence[float]) -> None:
        self.device_step_s += step_s
        self.device_steps += 1
        for i, p in enumerate(phases):
            self.device_phase_s[i] += p

    def add_validation(self, seconds: float) -> None:
        self.validation_s += seconds
        self.validation_runs += 1

    # ----------------------------------------------------------------- figures
    def breakdown(self) -> dict[str, float]:
        """Mean seconds per step for each phase and the whole step (zeros before any step)."""
        n = self.steps or 1
        out = {name: self.phase_s[i] / n for i, name in enumerate(PHASE_NAMES)}
        out["step"] = self.step_s / n
        return out

    def device_breakdown(self) -> dict[str, float] | None:
        """CUDA-event means per step (no "data": the fetch happens before the step's events)."""
        if not self.device_steps:
            return None
        k = self.device_steps
        out = {n: self.device_phase_s[i] / k for i, n in enumerate(PHASE_NAMES) if i != DATA}
        out["step"] = self.device_step_s / k
        return out

    def throughput(self) -> dict[str, float]:
        out = {"steps_per_s": self.steps / self.step_s if self.step_s else 0.0}
        if self.samples and self.step_s:
            out["samples_per_s"] = self.samples / self.step_s
        return out

    def gc_figures(self) -> dict[str, float]:
        n = self.steps or 1
        return {
            "collections_per_step": self.gc["collections"] / n,
            "pause_s_per_step": self.gc["pause_s"] / n,
            "gen0_collections": float(self.gc["gen0"]),
            "gen1_collections": float(self.gc["gen1"]),
            "gen2_collections": float(self.gc["gen2"]),
        }

    def validation_summary(self) -> dict[str, float]:
        """Validation during training: ``runs``, ``total_s`` and ``mean_s`` per run."""
        runs = self.validation_runs
        mean = self.validation_s / runs if runs else 0.0
        return {"runs": float(runs), "total_s": self.validation_s, "mean_s": mean}

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "measured": self.steps,
            "totals": list(self.phase_s),
            "total_step_s": self.step_s,
            "total_samples": self.samples,
            "gc_totals": dict(self.gc),
            "device": [list(self.device_phase_s), self.device_step_s, self.device_steps],
            "validation": [self.validation_s, self.validation_runs],
            "comm_exposed_s": self.comm_exposed_s,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["measured"])
        self.phase_s = [float(x) for x in state["totals"]]
        self.step_s = float(state["total_step_s"])
        self.samples = int(state["total_samples"])
        self.gc.update(state["gc_totals"])
        dev_totals, self.device_step_s, self.device_steps = state["device"]
        self.device_phase_s = [float(x) for x in dev_totals]
        self.validation_s, self.validation_runs = state["validation"]
        self.comm_exposed_s = float(state.get("comm_exposed_s", 0.0))
