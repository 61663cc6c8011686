"""A study's own attributes: written once when it is created (objectives, space, units,
corpus, format), checked whenever a driver resumes it, and Optuna kept quiet while a driver
works on it."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.trial import TrialState

import sqa_nas
from sqa_nas.errors import UserError
from sqa_nas.search.records import FORMAT, METHOD, check_format
from sqa_nas.search.space import SearchSpec

# Flags in a trial's user attrs that keep it out of the trial budget.
NOT_COUNTED = ("infeasible", "reaped", "interrupted")


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
    `UserError` says what differs. `url` names the storage in messages."""
    attrs = study.user_attrs
    if not attrs:
        study.set_metric_names(list(spec.objectives))
        study.set_user_attr("objectives", list(spec.objectives))
        study.set_user_attr("space", spec.model_dump(mode="json"))
        study.set_user_attr("space_hash", spec.space_hash())
        study.set_user_attr("units", dict(spec.units()))
        study.set_user_attr("corpus", {**corpus_summary(corpus_meta), "fingerprint": fingerprint})
        study.set_user_attr("method", METHOD)
        if spec.budget.noise_seeds == 0:
            study.set_user_attr("noise", {"n": 0, "reason": "off: budget.noise_seeds is 0"})
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


def corpus_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The corpus facts a study keeps (kind, vocabulary and sizes) from a dataset's meta."""
    keep: tuple[str, ...] = ("kind", "vocab_size", "tokens", "documents", "bytes")
    keep += ("val_fraction", "val_fraction_actual", "split")  # the split asked and made
    return {k: meta[k] for k in keep if k in meta}


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """`study`'s trials by state; ``counted`` is the budget's count (finished trials
    not flagged in `NOT_COUNTED`), ``infeasible`` the ones refused by a constraint,
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
