"""Executors run trials: `local` (worker processes on this machine) or `ray` (a Ray cluster)."""

from __future__ import annotations

from sqa_nas.search.executors.base import Executor
from sqa_nas.search.executors.local import LocalExecutor
from sqa_nas.search.space import SearchSpec


def make_executor(spec: SearchSpec) -> Executor:
    """The executor the spec's `execution` section asks for."""
    e = spec.execution
    if e.executor == "ray":
        # Imported only for Ray searches: importing ray costs about a second.
        from sqa_nas.search.executors.ray import RayExecutor

        return RayExecutor(spec)
    return LocalExecutor(
        workers=e.workers,
        trials_per_gpu=e.trials_per_gpu,
        device=e.device,
        trial_timeout_s=spec.budget.trial_timeout_s,
    )
