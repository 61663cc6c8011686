"""A study's noise floor, and what it says about the Pareto front.

The noise trial (the study's first baseline) trains with several seeds and times its step
once per seed; `Noise` keeps the spread: the standard deviation of its validation losses and
the relative standard deviations of its throughput and speedup measurements. The study
stores it as the ``noise`` user attr.

`assess` reads the front with it: a trial off the front is *indistinguishable* from it when
moving it 2 sigma towards better in every objective puts it out of reach of every front
member (a difference that size is within noise). The front is *resolved* only when the noise
was measured and no trial is indistinguishable.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from sqa_nas.search.pareto import candidates, pareto_front
from sqa_nas.search.records import OBJECTIVES, TrialRecord
from sqa_nas.stats import std, std_ci95

K_SIGMA = 2.0  # how many standard deviations a difference must exceed to count


class Noise(BaseModel):
    """The spread of one layout's objectives across seeds (`n` of them, 0: not measured)."""

    model_config = ConfigDict(extra="allow")

    n: int = 0
    val_loss_std: float | None = None  # absolute, nats
    throughput_rel_std: float | None = None  # std / mean of tokens/s
    speedup_rel_std: float | None = None  # std / mean of the paired speedup
    device: str | None = None
    trial: int | None = None  # the noise trial's number
    reason: str | None = None  # why it was not measured

    @classmethod
    def of(
        cls, losses: Sequence[float], measured: Sequence[Any], device: str, trial: int
    ) -> Noise:
        """From the noise trial's per-seed validation losses and `throughput.Throughput`s."""
        speeds = [m.tokens_per_s for m in measured]
        ratios = [m.speedup for m in measured if m.speedup is not None]
        return cls(
            n=len(losses) or len(measured),
            val_loss_std=std(losses),
            throughput_rel_std=_rel_std(speeds),
            speedup_rel_std=_rel_std(ratios),
            device=device,
            trial=trial,
        )

    @classmethod
    def read(cls, study_attrs: Mapping[str, Any]) -> Noise:
        """The study's stored noise: an unmeasured `Noise` when there is none, or one whose
        reason says the stored attr does not parse (a reader never stops on it)."""
        stored = study_attrs.get("noise")
        if not isinstance(stored, dict):
            return cls()
        try:
            return cls.model_validate(stored)
        except ValidationError:
            return cls(reason="the study's noise attr does not parse")

    def sigma(self, objective: str, value: float) -> float | None:
        """One standard deviation of `objective` at `value` (0 for analytic objectives, None
        when this objective's spread was not measured)."""
        if objective == "val_loss":
            return self.val_loss_std
        rel = {
            "throughput_tokens_per_s": self.throughput_rel_std,
            "speedup_vs_mha": self.speedup_rel_std,
        }
        if objective in rel:
            r = rel[objective]
            return None if r is None else r * abs(value)
        return 0.0

    def upper(self) -> Noise:
        """This noise at the upper end of its 95% interval (`std_ci95`, every spread): the
        floor a few seeds cannot rule out."""
        if self.n < 2:
            return self

        def high(x: float | None) -> float | None:
            return None if x is None else std_ci95(x, self.n)[1]  # type: ignore[index]

        return self.model_copy(
            update={
                "val_loss_std": high(self.val_loss_std),
                "throughput_rel_std": high(self.throughput_rel_std),
                "speedup_rel_std": high(self.speedup_rel_std),
            }
        )

    def describe(self) -> str:
        """'val_loss sigma 0.012 [0.0062, 0.075], throughput 1.4%, speedup 0.8% (3 seeds of
        trial 0)': the loss's sigma with its 95% interval (`std_ci95`)."""
        if self.n < 2:
            return f"noise not measured ({self.reason or 'no noise trial yet'})"
        parts = []
        if self.val_loss_std is not None:
            low, high = std_ci95(self.val_loss_std, self.n) or (0.0, 0.0)
            parts.append(f"val_loss sigma {self.val_loss_std:.4g} [{low:.2g}, {high:.2g}]")
        if self.throughput_rel_std is not None:
            parts.append(f"throughput {self.throughput_rel_std:.1%}")
        if self.speedup_rel_std is not None:
            parts.append(f"speedup {self.speedup_rel_std:.1%}")
        return f"{', '.join(parts)} ({self.n} seeds of trial {self.trial})"


def _rel_std(xs: Sequence[float]) -> float | None:
    s = std(xs)
    return None if s is None else s / statistics.fmean(xs)


@dataclass
class Verdict:
    """The front read against the noise: its members, the trials within noise of it, and
    whether it is resolved (`summary` says it in one sentence)."""

    front: list[TrialRecord]
    indistinguishable: list[TrialRecord]
    noise: Noise
    measured: bool  # the noise of every objective is known
    within_upper: list[TrialRecord] = field(default_factory=list)  # close at `Noise.upper`

    @property
    def resolved(self) -> bool:
        """Measured, and no trial off the front is within noise of it."""
        return self.measured and not self.indistinguishable

    def summary(self) -> str:
        """One plain sentence for the final table and the dashboard."""
        if not self.measured:
            return (
                f"Not known whether the front is resolved: {self.noise.describe()}; set "
                "budget.noise_seeds (>= 2) or run `sqa-nas confirm` before trusting an order."
            )
        if self.indistinguishable:
            numbers = ", ".join(str(r.number) for r in self.indistinguishable[:8])
            more = "" if len(self.indistinguishable) <= 8 else ", ..."
            return (
                f"Front NOT resolved at this budget: {len(self.indistinguishable)} trial(s) "
                f"({numbers}{more}) lie within {K_SIGMA:g} sigma of it ({self.noise.describe()}); "
                "more tokens per trial, budget.seeds or `sqa-nas confirm` can separate them."
            )
        text = (
            f"Front resolved at this budget: every other trial lies more than {K_SIGMA:g} "
            f"sigma behind it ({self.noise.describe()})."
        )
        if self.within_upper:
            numbers = ", ".join(str(r.number) for r in self.within_upper[:8])
            text += (
                f" But {self.noise.n} seeds place sigma only within its interval: at its "
                f"upper end {len(self.within_upper)} trial(s) ({numbers}"
                f"{'' if len(self.within_upper) <= 8 else ', ...'}) would lie within "
                f"{K_SIGMA:g} sigma of the front; "
                "more budget.noise_seeds narrow the floor."
            )
        return text


def assess(
    records: Sequence[TrialRecord],
    objectives: Sequence[str],
    noise: Noise,
    directions: Sequence[str] | None = None,
) -> Verdict:
    """The front of `records` and the trials indistinguishable from it under `noise`."""
    directions = list(directions or [OBJECTIVES[o] for o in objectives])
    front = pareto_front(records, objectives, directions)
    sigmas = {o: noise.sigma(o, 1.0) for o in objectives}
    measured = noise.n >= 2 and all(s is not None for s in sigmas.values())
    if not measured:
        return Verdict(front, [], noise, measured)
    close = _within(records, objectives, directions, front, noise)
    upper = [] if close else _within(records, objectives, directions, front, noise.upper())
    return Verdict(front, close, noise, measured, upper)


def _within(
    records: Sequence[TrialRecord],
    objectives: Sequence[str],
    directions: Sequence[str],
    front: list[TrialRecord],
    noise: Noise,
) -> list[TrialRecord]:
    """The trials off `front` that `K_SIGMA` sigmas of `noise` towards better put out of
    reach of every front member."""
    on_front = {r.number for r in front}
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]

    def key(r: TrialRecord, shift: float) -> list[float]:  # smaller is better
        assert r.values is not None  # candidates have values
        out = []
        for o, sign in zip(objectives, signs):
            value = r.values[o]
            out.append(sign * value - shift * (noise.sigma(o, value) or 0.0))
        return out

    front_keys = [key(f, 0.0) for f in front]
    return [
        r
        for r in candidates(records, objectives)
        if r.number not in on_front and not any(_dominates(f, key(r, K_SIGMA)) for f in front_keys)
    ]


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))
