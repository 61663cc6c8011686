"""The Optuna sampler a search space asks for (`sampler:` section), seeded from it."""

from __future__ import annotations

import optuna

from sqa_nas.errors import UserError
from sqa_nas.search.space import SearchSpec


def make_sampler(spec: SearchSpec, drawn: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler `spec.sampler` names, seeded with `spec.sampler.seed` plus `drawn`.

    Args:
        spec: the validated search space; with no sampler name, NSGA-II for several
            objectives and TPE for one.
        drawn: the trials the study already holds. A driver that resumes a study (or joins
            one another driver runs) seeded as the first one was would propose that run's
            layouts again, each a repeat; seeded past them, its draws are new and still
            reproducible from the seed and the study.
    Returns:
        an NSGA-II, TPE (multivariate), random, grid (`CoveredGridSampler` over every
        architecture) or GP sampler.
    Raises:
        UserError: ``gp`` without scipy installed.
    """
    s = spec.sampler
    seed = None if s.seed is None else s.seed + drawn
    name = s.name or ("nsga2" if len(spec.objectives) > 1 else "tpe")
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=s.population, seed=seed)
    if name == "tpe":
        # The search space is static: TPE never falls back to independent sampling (and
        # Optuna >= 4.9 deprecates the switch that silenced that warning).
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        space = {k: list(d.choices) for k, d in spec.distributions().items()}
        return CoveredGridSampler(space, seed=seed)
    try:
        return optuna.samplers.GPSampler(seed=seed)
    except ImportError as exc:
        raise UserError(f"sampler.name: gp needs {exc.name} (pip install scipy)") from None


class CoveredGridSampler(optuna.samplers.GridSampler):
    """GridSampler without its `study.stop()` once the grid is covered: that call is only
    allowed inside `study.optimize`, and the driver's budget (capped at the grid's size in
    `Driver.run`) already ends an ask/tell search there."""

    def after_trial(self, study, trial, state, values) -> None:
        """Does nothing, where GridSampler would stop the study (see the class)."""
        pass
