"""`confirm`: retrain the front's members with fresh seeds and see which stay on it.

A search ranks layouts from one training run each (or `budget.seeds`); `confirm` takes the
first `top` trials of the Pareto front (best first objective first), retrains each with `k`
seeds it never used (`trial.crn_seeds(..., "confirm")`: the same seeds for every trial, so
the comparison is paired), on the executor the study's space names, and recomputes the front
with their validation losses replaced by the confirmed means. A member *survives* when it is
on that front. The result is stored as the study's ``confirm`` record (`study_attrs`: an
artifact beside the storage; the dashboard shows it) and returned; `Confirmation` reads it
back.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict, ValidationError

from sqa_nas.errors import UserError
from sqa_nas.search.executors.base import Executor
from sqa_nas.search.pareto import pareto_front
from sqa_nas.search.records import METHOD, TrialRecord, of_gpu_type, trial_records
from sqa_nas.search.space import SearchSpec
from sqa_nas.search.study_attrs import write_record
from sqa_nas.search.trial import TrialJob, TrialOutcome, crn_seeds
from sqa_nas.stats import std


def confirm(
    study: optuna.Study,
    spec: SearchSpec,
    executor: Executor,
    *,
    top: int,
    seeds: int,
    url: str | None,
    gpu_type: str | None = None,
    on_done: Callable[[TrialOutcome], None] | None = None,
) -> dict[str, Any]:
    """Retrain the first `top` front members of `study` (trials measured on `gpu_type`, or
    all) with `seeds` fresh seeds on `executor`; store the ``confirm`` record beside `url`,
    the storage `study` was opened from (`study_attrs.write_record`), and return it
    (`on_done` is called with each finished retraining). `UserError` for a study measured
    the old way or without a completed trial."""
    if study.user_attrs.get("method", 1) != METHOD:
        raise UserError(
            f"study {study.study_name!r} was measured the old way (unpaired timing, a seed "
            "per trial): retrained values would not compare with its trials; search again "
            "under a new study name first"
        )
    records, _ = of_gpu_type(trial_records(study), gpu_type)
    objectives = list(spec.objectives)
    front = pareto_front(records, objectives)[:top]
    if not front:
        raise UserError(f"study {study.study_name!r} has no completed trial to confirm")
    fresh = crn_seeds(spec, seeds, "confirm")
    jobs = [
        TrialJob(
            r.number,
            dict(r.params),
            spec.model_dump(mode="json"),
            r.seed_variant,
            compile_choice=dict(study.user_attrs.get("compile_choice", {})),
            seeds=fresh,
        )
        for r in front
    ]
    outcomes = _run_all(executor, jobs, on_done)
    confirmed = {n: _summary(o) for n, o in outcomes.items() if o.state == "COMPLETE"}
    # The front again, with the confirmed validation losses in place of the search's.
    updated = [
        replace(r, values={**r.values, "val_loss": confirmed[r.number]["val_loss_mean"]})
        if r.number in confirmed and r.values and "val_loss" in r.values
        else r
        for r in records
    ]
    on_front = {r.number for r in pareto_front(updated, objectives)}
    for number, row in confirmed.items():
        row["on_front"] = number in on_front
    survivors = sorted(n for n in confirmed if n in on_front)
    failed = sorted(n for n, o in outcomes.items() if o.state != "COMPLETE")
    summary = (
        f"{len(survivors)} of {len(confirmed)} front members confirmed with {seeds} fresh "
        f"seed(s) stay on the front ({', '.join(map(str, survivors)) or 'none'})"
        + (f"; retraining failed for {', '.join(map(str, failed))}" if failed else "")
    )
    result = {
        "seeds": fresh,
        "ended": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "summary": summary,
        "survivors": survivors,
        "failed": {str(n): outcomes[n].attrs.get("fail_reason") for n in failed},
        "trials": {str(n): row for n, row in confirmed.items()},
    }
    write_record(study, url, "confirm", result)
    return result


def _run_all(
    executor: Executor, jobs: list[TrialJob], on_done: Callable[[TrialOutcome], None] | None
) -> dict[int, TrialOutcome]:
    """Run `jobs` on `executor` as slots free up; their outcomes by trial number."""
    waiting, done = list(jobs), dict[int, TrialOutcome]()
    executor.start()
    try:
        while len(done) < len(jobs):
            while waiting and executor.free_slots() > 0:
                executor.submit(waiting.pop(0))
            for event in executor.poll(timeout=0.5):
                if event.kind == "done" and event.outcome is not None:
                    done[event.number] = event.outcome
                    if on_done:
                        on_done(event.outcome)
    except BaseException:
        executor.shutdown(cancel=True)
        raise
    executor.shutdown()
    return done


def _summary(outcome: TrialOutcome) -> dict[str, Any]:
    """Mean and spread of one retrained trial (its per-seed losses, its throughput)."""
    m = outcome.attrs.get("metrics", {})
    losses = m.get("val_loss_seeds") or [m["val_loss"]]
    return {
        "val_loss_mean": statistics.fmean(losses),
        "val_loss_std": std(losses),
        "val_loss_seeds": losses,
        "throughput_mean": m.get("throughput_tokens_per_s"),
        "throughput_rel_ci95": m.get("throughput_rel_ci95"),
        "speedup_mean": m.get("speedup_vs_mha"),
    }


def confirmed_rows(front: list[TrialRecord], result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per confirmed trial for a table: number, allocation, the search's val_loss,
    the confirmed mean and std, seeds, survives."""
    rows = []
    for r in front:
        row = result["trials"].get(str(r.number))
        if row is None:
            continue
        rows.append(
            {
                "trial": r.number,
                "allocation": r.allocation,
                "search_val_loss": (r.values or {}).get("val_loss"),
                **row,
            }
        )
    return rows


class ConfirmedTrial(BaseModel):
    """One front member retrained by `sqa-nas confirm` with fresh seeds."""

    model_config = ConfigDict(extra="allow")

    val_loss_mean: float | None = None
    val_loss_std: float | None = None
    val_loss_seeds: list[float] = []  # one per seed of `Confirmation.seeds`
    throughput_mean: float | None = None  # tokens/s
    throughput_rel_ci95: float | None = None  # of the retrained trial's timing
    speedup_mean: float | None = None
    on_front: bool | None = None  # on the front of the confirmed values

    def describe(self) -> str:
        """'val_loss 1.712 ± 0.011 over 3 seeds (survives on the front)'."""
        k = len(self.val_loss_seeds)
        if self.val_loss_mean is None:
            line = "no val_loss"
        else:
            spread = "" if self.val_loss_std is None else f" ± {self.val_loss_std:.3g}"
            line = f"val_loss {self.val_loss_mean:.4g}{spread}"
        if k:
            line += f" over {k} seed{'' if k == 1 else 's'}"
        if self.on_front is not None:
            line += " (survives on the front)" if self.on_front else " (drops off the front)"
        return line


class Confirmation(BaseModel):
    """The study's last `sqa-nas confirm`: the seeds it trained with, when it ended, its
    one-sentence summary, the trials that stay on the front, and each retrained trial."""

    model_config = ConfigDict(extra="allow")

    seeds: list[int] = []
    ended: str | None = None  # ISO 8601
    summary: str | None = None
    survivors: list[int] = []  # trial numbers
    trials: dict[int, ConfirmedTrial] = {}  # by trial number (stored as JSON string keys)

    @classmethod
    def read(cls, study_attrs: Mapping[str, Any]) -> Confirmation | None:
        """The ``confirm`` record of a study's attrs (`StudyAttrs.as_attrs`), None when there
        is none or it does not parse (a reader never stops on one odd attr)."""
        stored = study_attrs.get("confirm")
        if not isinstance(stored, dict):
            return None
        try:
            return cls.model_validate(stored)
        except ValidationError:
            return None

    def of(self, number: int) -> ConfirmedTrial | None:
        """Trial `number`'s confirmed figures, None when it was not retrained."""
        return self.trials.get(number)
