"""The Optuna sampler a search space asks for (`sampler:` section), seeded from it."""

from __future__ import annotations

import optuna

from sqa_nas.errors import UserError
from sqa_nas.search.space import SearchSpec


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    """The sampler `spec.sampler` names, seeded with `spec.sampler.seed`.

    Args:
        spec: the validated search space; with no sampler name, NSGA-II for several
            objectives and TPE for one.
    Returns:
        an NSGA-II, TPE (multivariate), random, grid (`CoveredGridSampler` over every
        architecture) or GP sampler.
    Raises:
        UserError: ``gp`` without scipy installed.
    """
    s = spec.sampler
    name = s.name or ("nsga2" if len(spec.objectives) > 1 else "tpe")
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=s.population, seed=s.seed)
    if name == "tpe":
        # The search space is static: TPE never falls back to independent sampling (and
        # Optuna >= 4.9 deprecates the switch that silenced that warning).
        return optuna.samplers.TPESampler(seed=s.seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if name == "grid":
        space = {k: list(d.choices) for k, d in spec.distributions().items()}
        return CoveredGridSampler(space, seed=s.seed)
    try:
        return optuna.samplers.GPSampler(seed=s.seed)
    except ImportError as exc:
        raise UserError(f"sampler.name: gp needs {exc.name} (pip install scipy)") from None


class CoveredGridSampler(optuna.samplers.GridSampler):
    """GridSampler without its `study.stop()` once the grid is covered: that call is only
    allowed inside `study.optimize`, and the driver's budget (capped at the grid's size in
    `Driver.run`) already ends an ask/tell search there."""

    def after_trial(self, study, trial, state, values) -> None:
        """Does nothing, where GridSampler would stop the study (see the class)."""
        pass
