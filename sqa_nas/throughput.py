"""The throughput objective: a trial's training step timed in rounds, paired with the
same-shape MHA model's step in the same process (A B, B A, A B, ...), until the 95%
confidence intervals of its tokens/s and of its speedup over MHA are narrow enough.

Why paired: a machine's load moves every step's time (another job, clock boost, a 2-core
CPU shared with the test runner); the ratio of two steps timed a moment apart does not move
with it. A round times `repeats` calls of one step and keeps their median; the order flips
every round, so a drift in the machine's speed weighs on both steps alike. The speedup is
the median of the rounds' ratios, with its distribution-free 95% interval (order statistics,
`stats.median_ci95`, so at least 6 rounds): another job's burst slows one round of one step
by any amount and moves the median by one rank, where it would drag a mean
(`experiments/paired_timing.py` measures it under a competing load). Tokens/s is the median
of the trial's own rounds, with theirs (it follows the load, and its interval says by how
much).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch

from sqa_nas.stats import MEDIAN_CI_MIN, median_ci95, rel_half_width
from sqa_nas.timing import time_queued
from sqa_nas.train import ThroughputConfig, TrainStep

WARMUP_S = 0.5  # least warm-up time of the first step timed on a device in this process
_warmed: dict[str, bool] = {}  # devices this process has timed a step on
MIN_ROUNDS = MEDIAN_CI_MIN  # fewer rounds establish no 95% interval
MAX_ROUNDS = 200


@dataclass(frozen=True)
class Throughput:
    """What `measure` found: tokens/s of the timed step and the larger relative distance to
    an end of its 95% interval (infinite below `MIN_ROUNDS` rounds); with a reference, the
    reference's tokens/s and the paired speedup (the reference's step time over the
    trial's) with its 95% interval."""

    tokens_per_s: float
    rel_ci95: float
    rounds: int
    seconds: float
    target: float  # the half-width the rounds aimed for
    reference_tokens_per_s: float | None = None
    speedup: float | None = None
    speedup_ci95: tuple[float, float] | None = None
    watched: tuple[str, ...] = ("throughput", "speedup")  # the intervals the rounds aimed at

    @property
    def speedup_rel_ci95(self) -> float | None:
        """The larger relative distance from the speedup to an end of its interval (None
        without a reference; infinite below `MIN_ROUNDS` rounds: no 95% interval)."""
        if self.speedup_ci95 is None or self.speedup is None:
            return None
        if self.rounds < MIN_ROUNDS:
            return math.inf
        return rel_half_width(self.speedup, *self.speedup_ci95)

    @property
    def noisy(self) -> bool:
        """A watched interval stayed wider than `target` (the time cap ended the rounds)."""
        widths = {"throughput": self.rel_ci95, "speedup": self.speedup_rel_ci95 or 0.0}
        return max(widths[w] for w in self.watched) > self.target


def paired_rounds(
    time_model: Callable[[], float],
    time_reference: Callable[[], float] | None,
    *,
    target: float,
    max_s: float,
    watch: Collection[str] = ("throughput", "speedup"),
    min_rounds: int = MIN_ROUNDS,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[float], list[float]]:
    """Seconds per call of the model and of the reference (empty without one), one value
    each per round, rounds alternating which goes first. Stops once `min_rounds` are in and
    the relative 95% half-widths of what `watch` names (``throughput``: the model's times;
    ``speedup``: the ratios) are <= `target`, or when `max_s` seconds have passed (after two
    rounds at least: an interval needs two), or at `MAX_ROUNDS`."""
    model: list[float] = []
    reference: list[float] = []
    start = clock()
    while len(model) < MAX_ROUNDS:
        if time_reference is not None and len(model) % 2:
            reference.append(time_reference())
            model.append(time_model())
        else:
            model.append(time_model())
            if time_reference is not None:
                reference.append(time_reference())
        n = len(model)
        if n >= min_rounds:
            widths = [0.0]
            if "throughput" in watch or not reference:
                widths.append(rel_half_width(*median_ci95(model)))
            if reference and "speedup" in watch:
                widths.append(rel_half_width(*median_ci95(_ratios(reference, model))))
            if max(widths) <= target:
                break
        if n >= 2 and clock() - start >= max_s:
            break
    return model, reference


def measure(
    step: TrainStep,
    cfg: ThroughputConfig,
    device: torch.device,
    reference: TrainStep | None = None,
    watch: Collection[str] = ("throughput", "speedup"),
) -> Throughput:
    """Time `step` (forward, loss and, with ``cfg.backward``, backward on random
    (batch_size, seq_len) tokens; the optimizer update, the same for every layout of a
    model, is left out) in rounds of ``cfg.repeats`` calls, paired with `reference` when
    given, until the intervals `watch` names are within ``cfg.ci_target`` or
    ``cfg.max_seconds`` pass (`paired_rounds`; a search watches its objectives'). Each step is
    warmed first: ``cfg.warmup`` calls (one for a step timed before, such as a worker's MHA
    reference), and at least `WARMUP_S` seconds for the first step timed on the device in
    this process (first calls pay kernel selection, allocator growth, oneDNN primitives; a
    new shape's own first call is among the warm-up calls). Leaves no gradients behind."""
    tokens = cfg.batch_size * cfg.seq_len
    steps = [s for s in (step, reference) if s is not None]

    def timer(s: TrainStep) -> Callable[[], float]:
        x = torch.randint(
            0, s.model.config.vocab_size, (cfg.batch_size, cfg.seq_len), device=device
        )

        def call(_):
            loss = s.loss(x, x)
            if cfg.backward:
                loss.backward()

        first = not _warmed.get(str(device))
        deadline = time.perf_counter() + (WARMUP_S if first else 0.0)
        calls = 0
        while calls < (1 if s.timed else cfg.warmup) or time.perf_counter() < deadline:
            call(None)
            calls += 1
        s.timed = _warmed[str(device)] = True
        # Queued calls (one synchronisation a round): a training step's steady state, where
        # its launches overlap the kernels before them. Synchronising each call would add
        # the launch time to every sample, which a small model's step is mostly made of.
        return lambda: statistics.median(time_queued(call, device=device, repeats=cfg.repeats))

    start = time.perf_counter()
    for s in steps:
        s.model.train(cfg.backward)
    with torch.set_grad_enabled(cfg.backward):
        time_model = timer(step)
        time_reference = timer(reference) if reference is not None else None
        model_s, reference_s = paired_rounds(
            time_model, time_reference, target=cfg.ci_target, max_s=cfg.max_seconds, watch=watch
        )
    for s in steps:
        s.model.zero_grad(set_to_none=True)
    per_call = median_ci95(model_s)
    result = Throughput(
        tokens_per_s=tokens / per_call[0],
        rel_ci95=rel_half_width(*per_call) if len(model_s) >= MIN_ROUNDS else math.inf,
        rounds=len(model_s),
        seconds=time.perf_counter() - start,
        target=cfg.ci_target,
        watched=tuple(w for w in ("throughput", "speedup") if w in watch or not reference_s),
    )
    if not reference_s:
        return result
    speedup, low, high = median_ci95(_ratios(reference_s, model_s))
    return dataclasses.replace(
        result,
        reference_tokens_per_s=tokens / statistics.median(reference_s),
        speedup=speedup,
        speedup_ci95=(low, high),
    )


def _ratios(reference: list[float], model: list[float]) -> list[float]:
    """Each round's speedup: the reference's time over the model's."""
    return [r / m for r, m in zip(reference, model)]
