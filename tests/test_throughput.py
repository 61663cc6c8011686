"""sqa_nas.throughput: paired rounds stop on the confidence interval or the time cap, a load
shared by both steps cancels in the speedup, and `measure` warms, times and cleans up as
documented. Timers here are fakes with known noise, so the expected figures are exact."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from sqa_nas import throughput as throughput_module
from sqa_nas.model import build_model
from sqa_nas.stats import median_ci95, rel_half_width, std
from sqa_nas.throughput import Throughput, measure, paired_rounds
from sqa_nas.train import ThroughputConfig, TrainStep

CPU = torch.device("cpu")
TINY = dict(vocab_size=64, d_model=16, n_layers=1, n_heads=2, ffn_dim=32)


class Clock:
    """A fake clock that the fake timers advance by the time they report."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def loaded_pair(clock: Clock, model_s: float, reference_s: float, jitter: float, seed: int):
    """Two timers under one machine load that changes every round by up to 8x (another job
    coming and going), each with its own `jitter` (relative std)."""
    rng = random.Random(seed)
    state = {"calls": 0, "factor": 1.0}

    def timer(base: float):
        def once() -> float:
            if state["calls"] % 2 == 0:  # the first call of a round, whichever step it is
                state["factor"] = rng.choice([1.0, 1.5, 3.0, 8.0])
            state["calls"] += 1
            value = base * state["factor"] * (1 + rng.gauss(0, jitter))
            clock.now += value
            return value

        return once

    return timer(model_s), timer(reference_s)


def _speedup(m, r):
    return median_ci95([b / a for a, b in zip(m, r)])


def test_a_load_that_moves_every_round_cancels_in_the_paired_speedup():
    clock = Clock()
    model, reference = loaded_pair(clock, 0.5, 1.0, jitter=0.005, seed=1)
    m, r = paired_rounds(model, reference, target=0.03, max_s=1e9, watch=["speedup"], clock=clock)
    speedup, low, high = _speedup(m, r)
    assert speedup == pytest.approx(2.0, rel=0.01)
    assert rel_half_width(speedup, low, high) <= 0.03 and 6 <= len(m) < 20  # closed early
    # The model's own tokens/s follows the load: watching it too, the rounds run to the cap.
    clock = Clock()
    model, reference = loaded_pair(clock, 0.5, 1.0, jitter=0.005, seed=1)
    m, r = paired_rounds(model, reference, target=0.03, max_s=100.0, clock=clock)
    assert rel_half_width(*median_ci95(m)) > 0.03 and clock.now >= 100.0


def test_a_burst_in_one_round_moves_the_median_not_the_speedup():
    """Another job's burst slows one step of one round 15x: the median ignores it."""
    model = iter([1.0] * 3 + [15.0] + [1.0] * 20)
    m, r = paired_rounds(lambda: next(model), lambda: 2.0, target=0.03, max_s=1e9)
    speedup, low, high = _speedup(m, r)
    # The range holds the burst up to 8 rounds; from 9 the interval is ranks 2 and 8.
    assert len(m) == 9 and speedup == 2.0 and (low, high) == (2.0, 2.0)


def test_rounds_stop_at_the_time_cap_when_the_interval_stays_wide():
    clock = Clock()
    model, reference = loaded_pair(clock, 0.5, 1.0, jitter=0.3, seed=2)
    m, r = paired_rounds(model, reference, target=0.01, max_s=30.0, clock=clock)
    assert 2 <= len(m) == len(r)
    assert clock.now >= 30.0 and clock.now < 30.0 + 8 * 1.0 * 2 * 2  # ended by the cap
    assert rel_half_width(*_speedup(m, r)) > 0.01


def test_rounds_alternate_which_step_goes_first():
    order = []
    paired_rounds(
        lambda: order.append("A") or 1.0,
        lambda: order.append("B") or 1.0,
        target=0.5,
        max_s=1e9,
        min_rounds=4,
    )
    assert "".join(order) == "ABBAABBA"  # equal times: the interval is 0 after 4 rounds


def test_without_a_reference_only_the_model_is_timed():
    m, r = paired_rounds(lambda: 1.0, None, target=0.03, max_s=1e9)
    assert m == [1.0] * 6 and r == []  # six rounds: the fewest with a 95% interval


def test_the_median_interval_is_the_binomial_order_statistics():
    # n = 6: P(Bin(6, 1/2) = 0) = 1/64 <= 0.025 < 7/64, so the range; n = 9: ranks 2 and 8.
    assert median_ci95([5.0, 1.0, 3.0, 2.0, 6.0, 4.0]) == (3.5, 1.0, 6.0)
    assert median_ci95([float(x) for x in range(1, 10)]) == (5.0, 2.0, 8.0)
    # n = 17: P(Bin(17, 1/2) <= 4) = 0.0245, so ranks 5 and 13.
    assert median_ci95([float(x) for x in range(1, 18)]) == (9.0, 5.0, 13.0)
    assert median_ci95([3.0, 1.0]) == (2.0, 1.0, 3.0)  # below six: the range
    assert rel_half_width(2.0, 1.9, 2.3) == pytest.approx(0.15)


def test_the_sample_standard_deviation_divides_by_n_minus_one():
    assert std([1.0, 3.0]) == pytest.approx(math.sqrt(2))  # two values: the fewest with one
    assert std([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == pytest.approx(math.sqrt(32 / 7))
    assert std([5.0]) is None and std([]) is None


def test_without_a_reference_the_models_interval_decides_whatever_is_watched():
    # Only the speedup watched, but no reference to pair with: the model's own interval is
    # the one figure measured, and its wide times run the rounds on to the cap.
    clock = Clock()
    times = itertools.cycle([1.0, 3.0])

    def model() -> float:
        clock.now += (value := next(times))
        return value

    m, r = paired_rounds(model, None, target=0.03, max_s=40.0, watch=["speedup"], clock=clock)
    assert r == [] and len(m) == 20 and clock.now >= 40.0


def test_the_time_cap_ends_the_rounds_after_two_at_least():
    clock = Clock()

    def slow() -> float:
        clock.now += 100.0
        return 100.0

    m, r = paired_rounds(slow, slow, target=0.03, max_s=1.0, clock=clock)
    assert len(m) == len(r) == 2  # one round alone is past the cap, but no interval


def test_rounds_end_at_max_rounds_when_nothing_else_ends_them():
    times = itertools.cycle([1.0, 3.0])  # the interval never closes; no time cap
    m, r = paired_rounds(lambda: next(times), None, target=0.01, max_s=math.inf)
    assert len(m) == throughput_module.MAX_ROUNDS == 200 and r == []


class FakeTimeQueued:
    """Stands in for `time_queued`: runs the step once, records it, and returns samples whose
    median is the next of `medians` (the mean differs: the median must be used)."""

    def __init__(self, medians):
        self.medians, self.calls = list(medians), []

    def __call__(self, fn, *, device, repeats):
        self.calls.append(repeats)
        fn(None)
        m = self.medians.pop(0)
        return [m, m * 0.5, m * 9.0]


@pytest.mark.parametrize("backward", [True, False])
def test_measure_warms_each_step_then_times_them_in_pairs(monkeypatch, backward):
    torch.manual_seed(0)
    model, reference = build_model(TINY), build_model(TINY)
    seen = []
    for m in (model, reference):
        m.register_forward_pre_hook(
            lambda mod, args, m=m: seen.append((m is model, mod.training, torch.is_grad_enabled()))
        )
    # Rounds: A B, B A, ... -> model medians 1 and reference 2 (in call order), six rounds.
    fake = FakeTimeQueued([1.0, 2.0, 2.0, 1.0] * 3)
    monkeypatch.setattr(throughput_module, "time_queued", fake)
    monkeypatch.setattr(throughput_module, "WARMUP_S", 0.0)
    cfg = ThroughputConfig(seq_len=12, batch_size=3, warmup=2, repeats=7, backward=backward)
    a, b = TrainStep(model, CPU, 12), TrainStep(reference, CPU, 12)
    out = measure(a, cfg, CPU, b)
    assert fake.calls == [7] * 12
    assert out.rounds == 6 and out.tokens_per_s == pytest.approx(36.0)
    assert out.reference_tokens_per_s == pytest.approx(18.0)
    assert out.speedup == pytest.approx(2.0) and out.speedup_ci95 == pytest.approx((2.0, 2.0))
    assert out.rel_ci95 == 0.0 and not out.noisy
    # 2 warm-up calls each, then one call per timed round, all in the asked mode.
    assert [x[0] for x in seen[:4]] == [True, True, False, False]
    assert len(seen) == 4 + 12
    assert {(x[1], x[2]) for x in seen} == {(backward, backward)}
    assert all(p.grad is None for p in [*model.parameters(), *reference.parameters()])
    assert a.timed and b.timed
    # The next trial's step against the same reference: it warms fully, the reference once.
    seen.clear()
    fake.medians = [1.0, 2.0, 2.0, 1.0] * 3
    measure(TrainStep(model, CPU, 12), cfg, CPU, b)
    assert [x[0] for x in seen[:3]] == [True, True, False] and len(seen) == 3 + 12


def test_a_wide_interval_is_flagged_noisy():
    wide = Throughput(1.0, 0.05, 6, 1.0, 0.03)
    assert wide.noisy
    paired = Throughput(1.0, 0.01, 6, 1.0, 0.03, 2.0, 2.0, (1.8, 2.2))
    assert paired.speedup_rel_ci95 == pytest.approx(0.1) and paired.noisy
    assert not Throughput(1.0, 0.01, 6, 1.0, 0.03, 2.0, 2.0, (1.99, 2.01)).noisy
    # Fewer than six rounds (the time cap came first): no 95% interval, so noisy.
    assert Throughput(1.0, 0.01, 5, 1.0, 0.03, 2.0, 2.0, (1.99, 2.01)).noisy
    # An interval exactly as wide as the target is within it: noisy means wider.
    assert not Throughput(1.0, 0.03, 6, 1.0, 0.03).noisy


def test_measure_without_a_reference_watches_the_models_interval(monkeypatch):
    # Asked to watch the speedup alone, without a reference: the rounds aim at the model's
    # interval, and the time cap ending them before six rounds leaves the result noisy.
    monkeypatch.setattr(throughput_module, "time_queued", FakeTimeQueued([1.0, 3.0] * 100))
    monkeypatch.setattr(throughput_module, "WARMUP_S", 0.0)
    cfg = ThroughputConfig(seq_len=12, batch_size=3, warmup=1, repeats=3, max_seconds=1e-9)
    out = measure(TrainStep(build_model(TINY), CPU, 12), cfg, CPU, watch=["speedup"])
    assert out.speedup is None and out.rounds == 2
    assert "throughput" in out.watched and out.noisy


def test_only_the_first_step_on_a_device_warms_for_warmup_s(monkeypatch):
    class FakeTime:  # one second passes at every reading
        now = 0.0

        def perf_counter(self) -> float:
            self.now += 1.0
            return self.now

    monkeypatch.setattr(throughput_module, "time", FakeTime())
    monkeypatch.setattr(throughput_module, "WARMUP_S", 5.0)
    monkeypatch.setattr(throughput_module, "_warmed", {})  # nothing timed on the CPU yet
    monkeypatch.setattr(throughput_module, "time_queued", FakeTimeQueued([1.0] * 12))
    torch.manual_seed(0)
    model, reference = build_model(TINY), build_model(TINY)
    seen = []
    for m in (model, reference):
        m.register_forward_pre_hook(lambda mod, args, m=m: seen.append(m is model))
    cfg = ThroughputConfig(seq_len=12, batch_size=3, warmup=2, repeats=1)
    measure(TrainStep(model, CPU, 12), cfg, CPU, TrainStep(reference, CPU, 12))
    first = seen.index(False)  # the model's warm-up calls, then the reference's
    second = seen.index(True, first) - first
    assert first > cfg.warmup  # the device's first step: WARMUP_S (5 fake seconds) of calls
    assert second == cfg.warmup  # the device is warm: its own warm-up calls only
