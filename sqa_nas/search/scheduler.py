"""Multi-fidelity search in the driver: asynchronous successive halving over several
objectives (``budget.early_stopping.scheduler: mo_asha``).

A sampled trial first trains to the ladder's first rung (`EarlyStopping.rungs`), is
evaluated there, saves a checkpoint and waits, *paused*: still RUNNING in Optuna, its rungs
in its record. Whenever a worker is free the driver promotes the best paused trial of the
highest rung that lies in the top 1/eta of every trial that reached that rung (non-dominated
sorting, ties by crowding distance: `asha.promotable`), which resumes from its checkpoint on
any worker and trains on to the next rung; only when nothing is promotable does it start a new
trial. Baselines (seed trials) train straight to the full budget, evaluated at every rung on
the way, and rank with the others. When the trial budget is spent and nothing is running or
promotable, the paused trials end PRUNED at their rung and their checkpoints are deleted.

Everything the scheduler knows lives in the study (each trial's ``rungs`` and
``checkpoint``), so several drivers share one ladder, and a driver that died loses no
checkpoint: its paused trials stay paused, and a promoted trial whose driver died is paused
again at its last checkpoint (`rescue`). A study moved to another machine keeps its ladder:
a paused trial whose checkpoint stayed behind waits with its rung values, and trains again
from its start if promoted. Decisions that read then write the ladder run under
the driver's study lock.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sqa_nas.checkpoint import delete as delete_checkpoint
from sqa_nas.search.asha import Entry, promotable
from sqa_nas.search.space import SearchSpec


@dataclass
class Segment:
    """What one job of a multi-fidelity trial trains (`search.trial.TrialJob.segment`).

    rung: the ladder index it trains to; tokens: the tokens seen at its end;
    resume: the checkpoint it continues from (None: from scratch); restart: a promoted
    trial whose checkpoint is gone (the study moved to another machine, or the folder was
    cleaned) trains again from its start to this rung, with the same seed; save: where it
    leaves its checkpoint (None: the last rung, nothing to continue); eval_at: tokens at
    which a baseline is also evaluated on its way (its rung values); carry: the trial's
    stored metrics (its throughput, measured in the first segment only)."""

    rung: int
    tokens: int
    resume: str | None = None
    restart: bool = False
    save: str | None = None
    eval_at: list[int] = field(default_factory=list)
    carry: dict[str, Any] = field(default_factory=dict)

    @property
    def continues(self) -> bool:
        """A later segment of a trial (resumed or restarted): timed in its first one."""
        return self.resume is not None or self.restart


def checkpoint_folder(spec: SearchSpec, storage_url: str) -> Path:
    """Where paused trials keep their checkpoints: ``early_stopping.checkpoint_dir``, else
    beside a SQLite study (``<its folder>/checkpoints/<study>``), else
    ``runs/<study>/checkpoints``. On a cluster it must be a path every node reads."""
    chosen = spec.budget.early_stopping.checkpoint_dir
    if chosen:
        return Path(chosen).expanduser()
    if storage_url.startswith("sqlite:///"):
        db = Path(storage_url.removeprefix("sqlite:///"))
        return db.parent / "checkpoints" / spec.study_name
    return Path("runs") / spec.study_name / "checkpoints"


class Scheduler:
    """The MO-ASHA ladder of one driver's study (a no-op unless enabled).

    Args:
        spec: the search space (`budget.early_stopping`, objectives, directions).
        study, storage: the study and the storage the driver writes through.
        folder: where checkpoints go (`checkpoint_folder`).
        log: the driver's log line.
    """

    def __init__(
        self,
        spec: SearchSpec,
        study: optuna.Study,
        storage: BaseStorage,
        folder: Path,
        log: Callable[[str], None],
    ) -> None:
        stopping = spec.budget.early_stopping
        self.enabled = stopping.scheduler == "mo_asha"
        self.ladder = spec.ladder()
        self.eta, self.objectives = stopping.eta, list(spec.objectives)
        self.directions = [str(d) for d in spec.directions]
        self.study, self.storage, self.folder, self.log = study, storage, folder, log

    # ------------------------------------------------------------------- what a trial is
    @staticmethod
    def rungs_of(t: FrozenTrial) -> list[dict[str, Any]]:
        """The trial's rung entries as stored (`records.Rung` fields)."""
        return list(t.user_attrs.get("rungs") or [])

    def is_paused(self, t: FrozenTrial) -> bool:
        """RUNNING, its last rung paused: waiting for a promotion, no job of it in flight."""
        rungs = self.rungs_of(t)
        return t.state == TrialState.RUNNING and bool(rungs) and rungs[-1]["decision"] == "paused"

    def checkpoint_path(self, number: int, rung: int) -> Path:
        """The checkpoint file of trial `number` at `rung`."""
        return self.folder / f"trial-{number}-rung-{rung}.pt"

    # ------------------------------------------------------------------- jobs
    def first_segment(self, number: int, baseline: bool) -> Segment | None:
        """The segment a new trial trains: to the first rung (a baseline: to the full budget,
        evaluated at every rung on the way); None when the scheduler is off."""
        if not self.enabled:
            return None
        if baseline:
            return Segment(len(self.ladder) - 1, self.ladder[-1], eval_at=self.ladder[:-1])
        return Segment(0, self.ladder[0], save=str(self.checkpoint_path(number, 0)))

    def promote(
        self, in_flight: Collection[int], driver: dict[str, Any]
    ) -> tuple[FrozenTrial, Segment] | None:
        """The best promotable paused trial of the highest rung, marked promoted by `driver`
        (its identity: who runs it now), with the segment that resumes it; None when no
        paused trial is promotable. Call under the study lock (another driver may promote at
        the same moment)."""
        if not self.enabled:
            return None
        trials = self.study.get_trials(deepcopy=False)
        by_number = {t.number: t for t in trials}
        for rung in range(len(self.ladder) - 2, -1, -1):
            entries = self._entries(trials, rung)
            for number in promotable(entries, self.eta, self.directions):
                t = by_number[number]
                if number in in_flight or not self.is_paused(t):
                    continue
                rungs = self.rungs_of(t)
                rungs[-1] = {**rungs[-1], "decision": "promoted"}
                self._set(t, rungs=rungs, driver=driver)
                last = rung + 1 == len(self.ladder) - 1
                resume = t.user_attrs.get("checkpoint")
                if not resume or not Path(resume).is_file():
                    self.log(
                        f"trial {number}: its checkpoint {resume} is gone; it trains again "
                        f"from the start to rung {rung + 1}"
                    )
                    resume = None
                segment = Segment(
                    rung + 1,
                    self.ladder[rung + 1],
                    resume=resume,
                    restart=resume is None,
                    save=None if last else str(self.checkpoint_path(number, rung + 1)),
                    carry=dict(t.user_attrs.get("metrics") or {}),
                )
                return t, segment
        return None

    def _entries(self, trials: list[FrozenTrial], rung: int) -> list[Entry]:
        """Every trial that reached `rung` (paused, promoted, stopped or baseline), with its
        objective values there; repeats of another trial's layout are left out."""
        out = []
        for t in trials:
            if "duplicate_of" in t.user_attrs or t.state == TrialState.FAIL:
                continue
            at = next((r for r in self.rungs_of(t) if r["rung"] == rung), None)
            if at is None or any(o not in at["values"] for o in self.objectives):
                continue
            values = tuple(float(at["values"][o]) for o in self.objectives)
            out.append(Entry(t.number, values, at["decision"] != "paused"))
        return out

    # ------------------------------------------------------------------- outcomes
    def record_rungs(self, t: FrozenTrial, reached: list[dict[str, Any]]) -> dict[str, Any]:
        """The attrs that add the rungs a job `reached` (`records.Rung` fields) to trial `t`'s
        stored ones, a rung already stored replaced (a job run again after a worker died)."""
        done = {r["rung"] for r in reached}
        return {"rungs": [r for r in self.rungs_of(t) if r["rung"] not in done] + reached}

    def merged(self, t: FrozenTrial, attrs: dict[str, Any]) -> dict[str, Any]:
        """The attrs to store for a job's outcome `attrs` of trial `t`: its rungs added to the
        stored ones and, for a later segment, its timings added to the earlier segments'."""
        if "rungs" not in attrs:
            return attrs
        out = attrs | self.record_rungs(t, attrs["rungs"])
        before = t.user_attrs.get("timings")
        if before and self.rungs_of(t):  # a later segment of the trial
            out["timings"] = _add_timings(before, attrs.get("timings") or {})
        return out

    @staticmethod
    def describe(rung: dict[str, Any]) -> str:
        """One rung entry as a log line's end."""
        shown = ", ".join(f"{k} {v:.4g}" for k, v in rung["values"].items())
        return f"rung {rung['rung']} ({rung['tokens']:,} tokens, {rung['decision']}): {shown}"

    def paused(self, t: FrozenTrial, checkpoint: str) -> None:
        """Trial `t` (its rungs stored) waits at its last rung with `checkpoint`; the
        checkpoint of its rung before, if any, is no longer needed."""
        before = t.user_attrs.get("checkpoint")
        self._set(t, checkpoint=checkpoint)
        if before and before != checkpoint:
            delete_checkpoint(before)

    def finished(self, t: FrozenTrial) -> None:
        """Trial `t` ended (COMPLETE, FAIL or PRUNED): its checkpoint is deleted."""
        path = t.user_attrs.get("checkpoint")
        if path:
            delete_checkpoint(path)

    def rescue(self, t: FrozenTrial) -> bool:
        """For a RUNNING trial whose driver is gone or interrupted: True when the scheduler
        keeps it (a paused trial stays paused; a promoted one in flight is paused again at
        its last rung, promotable again), False when it is an ordinary running trial (its
        first segment: fail and re-queue it as before). A kept trial whose checkpoint is
        gone (another machine) keeps its rung values; a promotion trains it again from the
        start (`Segment.restart`)."""
        if not self.enabled or t.state != TrialState.RUNNING:
            return False
        rungs = self.rungs_of(t)
        if not rungs or rungs[-1]["decision"] not in ("paused", "promoted"):
            return False
        if rungs[-1]["decision"] == "promoted":
            rungs[-1] = {**rungs[-1], "decision": "paused"}
            self._set(t, rungs=rungs)
            self.log(f"trial {t.number}: its promotion stopped; paused again at its last rung")
        return True

    def stop_paused(self, in_flight: Collection[int]) -> int:
        """End every paused trial PRUNED at its rung and delete its checkpoint: the budget is
        spent and nothing is promotable. Skipped (0) while trials of the study are in flight
        anywhere, here or under another driver: their results may still promote. Returns
        how many it stopped."""
        if not self.enabled:
            return 0
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if in_flight or any(not self.is_paused(t) for t in trials):
            return 0
        for t in trials:
            rungs = self.rungs_of(t)
            last = rungs[-1]
            rungs[-1] = {**last, "decision": "stopped"}
            reason = (
                f"stopped at rung {last['rung']} ({last['tokens']:,} tokens): not in the top "
                f"1/{self.eta} of its rung"
            )
            self._set(t, rungs=rungs, fail_reason=reason)
            self.study.tell(t.number, state=TrialState.PRUNED, skip_if_finished=True)
            self.finished(t)
        if trials:
            self.log(f"{len(trials)} paused trial(s) stopped at their rungs; checkpoints deleted")
        return len(trials)

    def _set(self, t: FrozenTrial, **attrs: Any) -> None:
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(t._trial_id, key, value)


def _add_timings(before: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Timings of two segments of one trial: seconds summed, training windows joined."""
    out = dict(before)
    for key, value in new.items():
        if key.endswith("_s") and isinstance(value, int | float):
            out[key] = (out.get(key) or 0.0) + value
    windows = [w for t in (before, new) for w in t.get("train_windows") or [t.get("train_window")]]
    out["train_windows"] = [w for w in windows if w]
    return out
