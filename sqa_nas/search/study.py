"""A study's own attributes: written once when it is created (objectives, space, units,
corpus, format; the large ones as a record, `study_attrs`), checked whenever a driver resumes
it, and Optuna kept quiet while a driver works on it."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

import sqa_nas
from sqa_nas.errors import UserError
from sqa_nas.search.records import FORMAT, METHOD, check_format
from sqa_nas.search.space import SearchSpec
from sqa_nas.search.study_attrs import write_record

# Flags in a trial's user attrs that keep it out of the trial budget.
NOT_COUNTED = ("infeasible", "reaped", "interrupted")
# A FAIL that is not the trial's own doing: its driver stopped (reaped), Ctrl-C, or its
# worker or node died under it (``lost``, `Executor.failed`; a time limit is the trial's
# own). A lost baseline is run again (`baselines_to_run`) and not counted; a lost sampled
# trial counts (nothing re-runs it, and a layout that kills every worker must not keep the
# budget open).
LOST = ("reaped", "interrupted", "lost")
# A baseline that failed by itself (out of memory, an exception) this often is not queued
# again: it would fail again.
OWN_FAILURES = 2


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna at WARNING and its experimental-API warnings off while a driver works on the
    study; the caller's verbosity and warning filters come back on exit.

    Metric names, heartbeats and the multivariate TPE are stable in practice, and the driver
    drives heartbeats itself (ask/tell), which Optuna's "Heartbeat of storage is supposed to
    be used with Study.optimize" does not foresee. Set here, not at import: importing the
    search leaves the process's logging and warnings as they were."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings(
                "ignore", message="Heartbeat of storage is supposed to be used"
            )
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def init_or_check(
    study: optuna.Study, spec: SearchSpec, corpus_meta: dict[str, Any], fingerprint: str, url: str
) -> None:
    """A new study gets the space, objectives, units and corpus it is run on; an existing one
    must have been made by sqa-nas (`check_format`) from the same space and corpus, else a
    `UserError` says what differs. `url` names the storage in messages and says where the
    study's records go (`study_attrs.write_record`): the user attrs hold only the small ones.

    A study a driver stopped while creating it (`unfinished`: no ``sqa_nas`` mark, which is
    written last, and no trial) is finished here as a new one, so the rerun adopts it."""
    attrs = study.user_attrs
    if unfinished(study):
        summary = corpus_summary(corpus_meta)
        study.set_metric_names(list(spec.objectives))
        study.set_user_attr("objectives", list(spec.objectives))
        study.set_user_attr("space_hash", spec.space_hash())
        study.set_user_attr("corpus", {"kind": summary.get("kind"), "fingerprint": fingerprint})
        study.set_user_attr("method", METHOD)
        if spec.budget.noise_seeds == 0:
            study.set_user_attr("noise", {"n": 0, "reason": "off: budget.noise_seeds is 0"})
        space, units = spec.model_dump(mode="json"), dict(spec.units())
        write_record(study, url, "study", {"space": space, "units": units, "corpus": summary})
        # Last: a study carrying "sqa_nas" is complete.
        study.set_user_attr("sqa_nas", {"format": FORMAT, "version": sqa_nas.__version__})
    else:
        check_format(study, url)
        if attrs.get("method", 1) != METHOD:
            raise UserError(
                f"study {spec.study_name!r} in {url} was measured the old way (one "
                "unpaired throughput median per trial, a seed and data order per trial); "
                "its values do not compare with this version's (paired timing, common "
                "random numbers): use --study NEW_NAME to search again"
            )
        if attrs.get("space_hash") != spec.space_hash():
            raise UserError(
                f"study {spec.study_name!r} in {url} was created from a different "
                "search space (model, choices, objectives, data or per-trial budget "
                "changed); use --study NEW_NAME, or the original file"
            )
        if attrs.get("corpus", {}).get("fingerprint") != fingerprint:
            raise UserError(
                f"study {spec.study_name!r} was run on another corpus (fingerprint "
                f"{attrs['corpus'].get('fingerprint')}, this machine has "
                f"{fingerprint}); validation losses on different corpora are never "
                "compared: use --study NEW_NAME"
            )


def unfinished(study: optuna.Study) -> bool:
    """Whether `study` is new or was left half-created: no ``sqa_nas`` mark (the attribute
    `init_or_check` writes last) and no trial. A study with trials but no mark is not ours."""
    return "sqa_nas" not in study.user_attrs and not study.get_trials(deepcopy=False)


def create_or_load(
    storage: Any,
    spec: SearchSpec,
    sampler: optuna.samplers.BaseSampler,
    corpus: tuple[dict[str, Any], str],
    url: str,
    *,
    locked: bool,
) -> optuna.Study:
    """Study ``spec.study_name`` in `storage`, created if new, checked by `init_or_check`
    (`corpus`: the data's meta and fingerprint; `url` names the storage in messages).

    A study a driver stopped while creating it is finished, not refused: it is `unfinished`
    (no mark, no trial). Under the study lock (`locked`) none is at it now, so one holding
    some attributes or other directions (perhaps from another space) is deleted and created
    afresh; without the lock another driver may be creating it right now, and
    `init_or_check` finishes it as it is."""

    def create() -> optuna.Study:
        return optuna.create_study(
            study_name=spec.study_name,
            storage=storage,
            directions=spec.directions,
            sampler=sampler,
            load_if_exists=True,
        )

    study = create()
    directions = [d.name.lower() for d in study.directions]
    if (
        locked
        and unfinished(study)
        and (study.user_attrs or study.metric_names or directions != spec.directions)
    ):
        optuna.delete_study(study_name=spec.study_name, storage=storage)
        study = create()
    init_or_check(study, spec, *corpus, url)
    return study


class Baselines:
    """A study's seed (baseline) trials, kept until each has run: queued when missing, and
    queued again after failing (`baselines_to_run` decides), at most once a run for each
    variant (a rerun tries once more).

    Args:
        study: the study.
        seeds: (variant name, its params) per seed trial (`SearchSpec.seed_params`); none
            for a grid search, whose grid holds every seed allocation already.
    """

    def __init__(self, study: optuna.Study, seeds: list[tuple[str, dict[str, Any]]]) -> None:
        self.study, self.seeds = study, seeds
        self.retried: set[str] = set()

    def enqueue(self, names: Iterable[str] | None = None) -> None:
        """Enqueue the variants of `names` (default: all) that `baselines_to_run` names,
        each labelled ``seed_variant`` (and ``retry_of`` its last failed trial). The caller
        holds the study lock."""
        trials = self.study.get_trials(deepcopy=False)
        wanted = set(baselines_to_run(self.study, {name for name, _ in self.seeds}))
        for name, params in self.seeds:
            if name in wanted and (names is None or name in names):
                failed = [t.number for t in trials if t.user_attrs.get("seed_variant") == name]
                retry = {"retry_of": failed[-1]} if failed else {}
                self.study.enqueue_trial(params, user_attrs={"seed_variant": name, **retry})

    def retry(self, trial: FrozenTrial) -> str | None:
        """The variant of `trial`, which ended FAIL, when it is a baseline not yet queued
        again in this run (then `enqueue` it); else None."""
        name = trial.user_attrs.get("seed_variant")
        if name not in dict(self.seeds) or name in self.retried:
            return None
        self.retried.add(name)
        return name


def lost(t: FrozenTrial) -> bool:
    """Whether `t` ended FAIL for a cause outside it (`LOST`: reaped, interrupted, lost by
    its executor) rather than by itself (out of memory, an exception)."""
    return t.state == TrialState.FAIL and any(t.user_attrs.get(k) for k in LOST)


def baselines_to_run(study: optuna.Study, names: Iterable[str]) -> list[str]:
    """The seed variants among `names` to queue (again): those with no trial that
    completed, was pruned (refused by a constraint or stopped by the scheduler: a rerun
    decides the same), runs or waits (queued, or re-queued after a failure). A variant whose
    trials all failed is queued again unless `OWN_FAILURES` of them failed by themselves;
    one lost to its worker, its driver or Ctrl-C is always queued again, so the study never
    ends without its baselines while a rerun could give them."""
    trials: dict[str, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get("seed_variant")
        if name is not None:
            trials.setdefault(name, []).append(t)
    return [
        name
        for name in names
        if all(t.state == TrialState.FAIL for t in trials.get(name, []))
        and sum(not lost(t) for t in trials.get(name, [])) < OWN_FAILURES
    ]


def corpus_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The corpus facts a study keeps (kind, vocabulary, sizes, split, files skipped by
    reason: ``binary``, ``not_utf8``, ``over_2MiB``) from a dataset's meta."""
    keep: tuple[str, ...] = ("kind", "vocab_size", "tokens", "documents", "bytes")
    keep += ("val_fraction", "val_fraction_actual", "split")  # the split asked and made
    summary = {k: meta[k] for k in keep if k in meta}
    skipped = meta.get("skipped")  # file names by reason: counted here
    if isinstance(skipped, dict):
        summary["skipped"] = {k: len(v) for k, v in skipped.items() if isinstance(v, list) and v}
    return summary


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """`study`'s trials by state; ``counted`` is the budget's count (finished trials
    not flagged in `NOT_COUNTED`, nor baselines `lost`: they run again), ``infeasible`` the
    ones refused by a constraint,
    ``duplicates`` the ones told an evaluated trial's values (in no other count), ``paused``
    the running ones waiting at a rung for a promotion (`search.scheduler`)."""
    c = {
        "complete": 0,
        "failed": 0,
        "pruned": 0,
        "infeasible": 0,
        "running": 0,
        "counted": 0,
        "waiting": 0,
        "duplicates": 0,
        "paused": 0,
    }
    for t in study.get_trials(deepcopy=False):
        if "duplicate_of" in t.user_attrs:  # told another trial's values: no budget
            c["duplicates"] += 1
            continue
        # A completed trial counts, whatever a reaper marked on it meanwhile.
        flags = [k for k in NOT_COUNTED if t.user_attrs.get(k) and t.state != TrialState.COMPLETE]
        if "seed_variant" in t.user_attrs and lost(t):
            flags.append("lost")
        if t.state == TrialState.RUNNING:
            c["running"] += 1
            rungs = t.user_attrs.get("rungs") or [{}]
            c["paused"] += rungs[-1].get("decision") == "paused"  # of running: at a rung
        elif t.state == TrialState.WAITING:
            c["waiting"] += 1
        elif "infeasible" in flags:
            c["infeasible"] += 1
        elif t.state == TrialState.COMPLETE:
            c["complete"] += 1
        elif t.state == TrialState.FAIL:
            c["failed"] += 1
        elif t.state == TrialState.PRUNED:
            c["pruned"] += 1
        if t.state.is_finished() and not flags:
            c["counted"] += 1
    return c
