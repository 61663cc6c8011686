"""What the search driver needs from an executor: slots, submit, poll, shutdown.

The driver owns the Optuna study and its storage; an executor only runs `TrialJob`s and
reports `Event`s: progress of a running trial, or its `TrialOutcome`. A trial whose worker
dies or that outlives its time limit comes back as a FAIL outcome with the reason; an executor
that loses what runs its trials altogether raises `ExecutorLost` from `poll`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from sqa_nas.errors import UserError
from sqa_nas.search.trial import TrialJob, TrialOutcome


class ExecutorLost(UserError):
    """What runs the trials is gone (a Ray instance's raylet or GCS died), raised by `poll`.
    The driver records the trials in flight as FAIL with `reason` and re-queues them, then
    stops: the CLI prints the message as one line and exits with code 2.

    Args:
        reason: what died, e.g. "the private Ray instance's raylet (pid 7) died: SIGKILL".
    """

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"{reason}; the trials in flight are recorded as FAIL and re-queued: rerun the "
            "same command to resume"
        )
        self.reason = reason


@dataclass
class Event:
    """Something an executor reports from `poll`: a running trial's progress, or its outcome."""

    kind: str  # "progress" or "done"
    number: int
    info: dict[str, Any] = field(default_factory=dict)  # progress: step, of, loss
    outcome: TrialOutcome | None = None


@dataclass
class Running:
    """A trial in flight: its job, where it runs, when it started (monotonic) and its last
    progress."""

    job: TrialJob
    where: str  # "cpu worker 0", "node-a GPU 1 (NVIDIA H200)"
    started: float = field(default_factory=time.monotonic)
    progress: dict[str, Any] = field(default_factory=dict)


@dataclass
class Usage:
    """When one worker (or GPU) was inside trials (or training), in one clock: for the
    in-trial fraction and the training-step share."""

    intervals: list[tuple[float, float]] = field(default_factory=list)

    def add(self, started: float, ended: float) -> None:
        """Record one trial's [started, ended] (seconds)."""
        self.intervals.append((started, ended))

    def covered(self) -> float:
        """Seconds inside the intervals: the length of their union."""
        total, reach = 0.0, float("-inf")
        for a, b in sorted(self.intervals):  # the union: fractional GPUs overlap
            if b > reach:
                total += b - max(a, reach)
                reach = b
        return total

    def span(self) -> float:
        """From its first trial's start to its last trial's end (start-up not counted)."""
        return max(b for _, b in self.intervals) - min(a for a, _ in self.intervals)


def in_trial_fraction(usages) -> float:
    """Time inside trials over the spans of `usages` (idle gaps between trials count). Not
    GPU work: a trial also builds, compiles, measures and waits on the host (the GPU's own
    figures are `figures.RunMeter`'s)."""
    usages = [u for u in usages if u.intervals]
    span = sum(u.span() for u in usages)
    return round(sum(u.covered() for u in usages) / span, 4) if span > 0 else 1.0


class Executor(ABC):
    """Runs trials somewhere. Implementations: `local.LocalExecutor`, `ray.RayExecutor`."""

    def __init__(self) -> None:
        self.running: dict[int, Running] = {}

    @abstractmethod
    def start(self) -> None:
        """Bring up the workers (or connect to the cluster); called once, before anything."""

    @abstractmethod
    def free_slots(self) -> int:
        """How many more trials can start now."""

    @abstractmethod
    def submit(self, job: TrialJob) -> None:
        """Start `job` in a free slot; the driver calls it only while `free_slots()` > 0.
        From here until its "done" event the trial is in `running`."""

    @abstractmethod
    def poll(self, timeout: float) -> list[Event]:
        """Wait up to `timeout` seconds for events; finished trials leave `running`."""

    @abstractmethod
    def shutdown(self, *, cancel: bool = False) -> list[int]:
        """Stop the workers; with `cancel`, kill in-flight trials and return their numbers."""

    def describe(self) -> str:
        """One line for the progress panel: what runs the trials and where."""
        return type(self).__name__

    def stats(self) -> dict[str, Any]:
        """Executor-specific figures for the end-of-search summary (e.g. in-trial fraction)."""
        return {}

    def local_gpus(self) -> list[int] | None:
        """The CUDA ordinals (this process's numbering) its trials use on this host, for the
        driver's NVML sampler: [] when they run on the CPU (the default), None for every GPU
        this host shows (trials may land on any)."""
        return []

    def _finish(self, number: int, outcome: TrialOutcome) -> Event:
        self.running.pop(number, None)
        return Event("done", number, outcome=outcome)

    @staticmethod
    def failed(job: TrialJob, reason: str, where: str = "", *, lost: bool = False) -> TrialOutcome:
        """A FAIL outcome for `job` with `reason` as its fail_reason (and `where` as its device
        name, when given), for trials the executor lost rather than ran; `lost`: its worker or
        node died (flagged ``lost``: a baseline so lost runs again, `study.baselines_to_run`),
        not the trial's own doing (a time limit)."""
        attrs: dict[str, Any] = {"fail_reason": reason, **({"lost": True} if lost else {})}
        if where:
            attrs["device"] = {"name": where}
        return TrialOutcome(job.number, "FAIL", attrs=attrs)
