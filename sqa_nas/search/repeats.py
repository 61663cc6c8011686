"""Trials that repeat a layout: told the evaluated trial's values instead of training again.

Samplers propose layouts a study already holds (NSGA-II did in 2 of 10 trials of an
81-layout space). The driver keys every trial by its layout (`space.layout_key`: the
resolved per-layer model, backends included) and hands a repeat to `Repeats`: a repeat of a
completed trial is told its values at once; a repeat of a trial still running here waits for
it; a repeat of a trial the multi-fidelity scheduler paused or stopped at a rung ends FAIL
(the original's rungs stand for the layout). Either way it records ``duplicate_of`` and never
counts against the trial budget. A repeat of a failed trial is trained again (the failure
may have been the machine's).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

RUNNING = TrialState.RUNNING
COPIED = ("allocation", "metrics", "analytics", "model", "layers", "seeds")


class Repeats:
    """The repeats of one driver: held ones by the running trial they wait for."""

    def __init__(
        self, study: optuna.Study, storage: BaseStorage, log: Callable[[str], None]
    ) -> None:
        self.study, self.storage, self.log = study, storage, log
        self.held: dict[int, list[int]] = {}  # running trial -> trials with its layout
        self.exhausted = ""  # why no new layout is left, once none is

    def check(self, trial: optuna.Trial, layout: str, running: Collection[int]) -> bool:
        """Whether `trial` (just asked, its ``layout`` attr set) repeats a completed trial
        (told now) or one in `running` (held); sets `exhausted` when every layout of the
        space is evaluated."""
        trials = self.study.get_trials(deepcopy=False)
        for t in trials:
            if t.number == trial.number or "duplicate_of" in t.user_attrs:
                continue
            if t.user_attrs.get("layout") != layout:
                continue
            if t.state == TrialState.COMPLETE:
                self.finish(trial.number, t)
                return True
            rungs = t.user_attrs.get("rungs")
            if rungs and t.number not in running and t.state in (RUNNING, TrialState.PRUNED):
                # Paused or stopped by the multi-fidelity scheduler: its rungs stand for both.
                trial.set_user_attr("duplicate_of", t.number)
                where = "paused" if t.state == RUNNING else "stopped"
                self.finish(trial.number, None, f"trial {t.number} has it, {where} at a rung")
                return True
            if t.state == TrialState.RUNNING and t.number in running:
                trial.set_user_attr("duplicate_of", t.number)
                self.held.setdefault(t.number, []).append(trial.number)
                return True
        return False

    def evaluated(self) -> int:
        """Distinct layouts the study completed."""
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return len({t.user_attrs.get("layout") for t in done} - {None})

    def release(self, number: int) -> None:
        """Trial `number` is finished: its held repeats get its values (or FAIL)."""
        for held in self.held.pop(number, []):
            self.finish(held, self.study.get_trials(deepcopy=False)[number])

    def abandon(self, why: str) -> None:
        """FAIL every held repeat with `why` (the driver stops; none counts)."""
        for numbers in self.held.values():
            for number in numbers:
                self.finish(number, None, why)
        self.held.clear()

    def finish(self, number: int, original: FrozenTrial | None, why: str = "") -> None:
        """Tell trial `number` the values of `original` and record it as its duplicate;
        without a completed original, FAIL it with `why`."""
        t = self.study.get_trials(deepcopy=False)[number]
        if t.state.is_finished():
            return
        of = original.number if original is not None else t.user_attrs.get("duplicate_of")
        attrs = {"duplicate_of": of}
        if original is not None and original.state == TrialState.COMPLETE:
            attrs |= {k: original.user_attrs[k] for k in COPIED if k in original.user_attrs}
            self._mark(t, attrs)
            self.study.tell(number, original.values, skip_if_finished=True)
            self.log(
                f"trial {number} [{original.user_attrs.get('allocation', '')}] repeats trial "
                f"{of}: told its values without training"
            )
            return
        why = why or f"trial {of}, with the same layout, did not complete"
        self._mark(t, attrs | {"fail_reason": f"duplicate: {why}"})
        self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)

    def _mark(self, t: FrozenTrial, attrs: dict) -> None:
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(t._trial_id, key, value)
