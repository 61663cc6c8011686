"""Fronts and pickers (`knee`, `best:OBJ`, `best:OBJ:within=OTHER+TOL[%]`) against the
brute-force definitions in tests/brute.py, on studies whose objectives live on very different
scales (loss ~1-3, throughput ~1e3-1e7, KV cache ~1e2-1e5), with ties, equal points, mixed
directions, three objectives, and trials that must never be picked."""

from __future__ import annotations

import math
import random

import pytest

from sqa_nas.search.pareto import pareto_front, pick
from sqa_nas.search.records import TrialRecord
from tests import brute

LOSS, SPEED, KV = "val_loss", "throughput_tokens_per_s", "kv_cache_bytes"
OBJ2 = [LOSS, SPEED]
OBJ3 = [LOSS, SPEED, KV]


def scaled_records(rnd: random.Random, n: int, objectives, *, coarse: bool) -> list[TrialRecord]:
    """Trials with loss in [1, 3], throughput log-uniform in [1e3, 1e7], KV cache in
    [1e2, 1e5]. `coarse` rounds values to few levels, so equal values and equal points are
    common; some trials copy another's values outright. Failed, running, pruned, infeasible
    and non-finite trials carry the best values of all and must never be picked."""

    def value(o):
        if o == LOSS:
            x = rnd.uniform(1, 3)
            return round(x, 1) if coarse else x
        if o == SPEED:
            x = 10 ** rnd.uniform(3, 7)
            return float(f"{x:.1g}") if coarse else x
        x = 10 ** rnd.uniform(2, 5)
        return float(f"{x:.1g}") if coarse else round(x)

    out: list[TrialRecord] = []
    for number in range(n):
        values = {o: value(o) for o in objectives}
        if out and rnd.random() < 0.1:  # an equal point
            values = dict(rnd.choice(out).values or values)
        state, attrs = "COMPLETE", {}
        roll = rnd.random()
        if roll < 0.04:
            state = rnd.choice(["FAIL", "RUNNING", "PRUNED"])
            values = {LOSS: 0.5, SPEED: 1e9, KV: 1.0}
        elif roll < 0.07:
            attrs = {"infeasible": ["max_kv_cache_bytes: too large"]}
            values = {LOSS: 0.5, SPEED: 1e9, KV: 1.0}
        elif roll < 0.09:
            values = {**values, rnd.choice(objectives): rnd.choice([math.nan, math.inf])}
        out.append(TrialRecord(number, state, {o: values[o] for o in objectives}, {}, attrs))
    rnd.shuffle(out)  # picks must not depend on the order trials come in
    return out


CASES = [
    (seed, objectives, coarse)
    for seed in range(8)
    for objectives in (OBJ2, OBJ3)
    for coarse in (False, True)
]


def ids(case):
    seed, objectives, coarse = case
    return f"{len(objectives)}obj-{'coarse' if coarse else 'fine'}-{seed}"


@pytest.fixture(params=CASES, ids=ids)
def study(request):
    seed, objectives, coarse = request.param
    rnd = random.Random(seed)
    return scaled_records(rnd, rnd.randrange(3, 90), objectives, coarse=coarse), objectives


@pytest.mark.parametrize("flip", [False, True])
def test_front_matches_brute_force(study, flip):
    records, objectives = study
    directions = [
        ("maximize" if d == "minimize" else "minimize") if flip else d
        for d in brute.directions_of(objectives)
    ]
    front = pareto_front(records, objectives, directions)
    assert {r.number for r in front} == brute.front(records, objectives, directions)


def test_knee_matches_brute_force(study):
    records, objectives = study
    assert pick(records, objectives, "knee").number in brute.knee(records, objectives)


def test_best_matches_brute_force(study):
    records, objectives = study
    for obj in objectives:
        chosen = pick(records, objectives, f"best:{obj}").number
        assert {chosen} == brute.best(records, objectives, obj)
        assert chosen in brute.front(records, objectives)


@pytest.mark.parametrize("tol", ["0.5%", "1%", "10%", "0.05", "0.3", "1e5"])
def test_best_within_matches_brute_force(study, tol):
    records, objectives = study
    if tol == "1e5":
        tol = "100000"
    percent = tol.endswith("%")
    amount = float(tol.rstrip("%"))
    for obj in objectives:
        for other in objectives:
            if other == obj:
                continue
            spec = f"best:{obj}:within={other}+{tol}"
            chosen = pick(records, objectives, spec).number
            assert chosen in brute.best(
                records, objectives, obj, within=(other, amount, percent)
            ), spec


def test_mixed_directions_with_three_objectives():
    rnd = random.Random(11)
    objectives = ["a", "b", "c"]
    for _ in range(30):
        directions = [rnd.choice(["minimize", "maximize"]) for _ in objectives]
        records = [
            TrialRecord(
                i,
                "COMPLETE",
                {
                    "a": rnd.randrange(4) * 1e6,
                    "b": rnd.randrange(4) / 1e3,
                    "c": float(rnd.randrange(4)),
                },
                {},
            )
            for i in range(rnd.randrange(1, 25))
        ]
        front = {r.number for r in pareto_front(records, objectives, directions)}
        assert front == brute.front(records, objectives, directions)
        assert pick(records, objectives, "knee", directions).number in brute.knee(
            records, objectives, directions
        )
        for obj in objectives:
            assert {pick(records, objectives, f"best:{obj}", directions).number} == brute.best(
                records, objectives, obj, directions
            )
            spec = f"best:{obj}:within={objectives[0]}+10%"
            assert pick(records, objectives, spec, directions).number in brute.best(
                records, objectives, obj, directions, within=(objectives[0], 10.0, True)
            )


# ------------------------------------------------------------------ cases worked out by hand
def two(values, numbers=None):
    numbers = numbers or range(len(values))
    return [
        TrialRecord(n, "COMPLETE", {LOSS: v, SPEED: t}, {}) for n, (v, t) in zip(numbers, values)
    ]


def test_knee_ignores_the_scale_of_each_objective():
    # Normalised ('smaller is better'), the front is (0, 1), (0.25, 0.25), (0.5, 0.125),
    # (1, 0): the knee is the second point whatever unit either objective is counted in.
    for scale in (1e-3, 1.0, 1e4):
        records = two([(1.0, 0.0), (1.5, 6e6 * scale), (2.0, 7e6 * scale), (3.0, 8e6 * scale)])
        assert pick(records, OBJ2, "knee").number == 1
        assert brute.knee(records, OBJ2) == {1}
    # Normalised: (0, 1), (0.05, 0.5), (0.1, 0.1), (1, 0); farthest from x + y = 1: #2.
    records = two([(1.0, 1e3), (1.1, 5e6), (1.2, 9e6), (3.0, 1e7)])
    assert pick(records, OBJ2, "knee").number == 2
    assert brute.knee(records, OBJ2) == {2}


def test_knee_tie_goes_to_the_lower_number():
    # Normalised (dyadic, so exact in floats): (0, 1), (0.25, 0.5), (0.5, 0.25), (1, 0):
    # the middle two are at the same distance, 0.25 / sqrt(2), from the line x + y = 1.
    values = [(1.0, 1024.0), (1.5, 3072.0), (2.0, 4096.0), (3.0, 5120.0)]
    assert pick(two(values, [0, 7, 3, 9]), OBJ2, "knee").number == 3
    assert pick(two(values, [0, 3, 7, 9]), OBJ2, "knee").number == 3
    assert brute.knee(two(values, [0, 7, 3, 9]), OBJ2) == {3, 7}


def test_knee_of_a_front_of_two_is_the_best_first_objective():
    records = two([(2.0, 100.0), (1.0, 10.0), (3.0, 5.0)], numbers=[1, 5, 0])
    assert pick(records, OBJ2, "knee").number == 5  # (3.0, 5.0) is dominated
    assert brute.knee(records, OBJ2) == {5}


def test_knee_uses_the_front_of_the_first_two_objectives_only():
    # On all three objectives every trial is on the front; on the first two #3 is dominated
    # by #1, and were it on that front it would be the farthest from the line (0.95 vs 0.75).
    records = [
        TrialRecord(i, "COMPLETE", {LOSS: a, SPEED: b, KV: c}, {})
        for i, (a, b, c) in enumerate(
            [(1.0, 1e3, 9e4), (1.1, 8e6, 5e4), (3.0, 1e7, 1e4), (2.9, 1.5e3, 1e2)]
        )
    ]
    assert pick(records, OBJ3, "knee").number == 1
    assert brute.knee(records, OBJ3) == {1}


def test_best_within_bounds_are_inclusive_for_both_directions():
    records = two([(2.0, 100.0), (2.5, 800.0), (2.6, 900.0), (3.0, 1000.0)])
    # minimised OTHER: 2.0 + 0.5 = 2.0 + 25% of 2.0 = 2.5 exactly, and 2.5 is in
    assert pick(records, OBJ2, f"best:{SPEED}:within={LOSS}+0.5").number == 1
    assert pick(records, OBJ2, f"best:{SPEED}:within={LOSS}+25%").number == 1
    # maximised OTHER: 1000 - 200 = 1000 - 20% = 800 exactly, and 800 is in
    assert pick(records, OBJ2, f"best:{LOSS}:within={SPEED}+200").number == 1
    assert pick(records, OBJ2, f"best:{LOSS}:within={SPEED}+20%").number == 1
    assert pick(records, OBJ2, f"best:{LOSS}:within={SPEED}+199").number == 2


def test_best_ties_are_broken_by_the_other_objectives_in_order():
    records = [
        TrialRecord(n, "COMPLETE", {LOSS: a, SPEED: b, KV: c}, {})
        for n, (a, b, c) in zip(
            [4, 2, 9, 1], [(1.0, 1e3, 5.0), (1.0, 1e3, 2.0), (1.0, 1e5, 9.0), (2.0, 1e7, 1.0)]
        )
    ]
    assert pick(records, OBJ3, f"best:{LOSS}").number == 9  # faster wins the loss tie
    assert pick(records, OBJ3, f"best:{KV}").number == 1
    equal = [TrialRecord(n, "COMPLETE", {LOSS: 1.0, SPEED: 1e3, KV: 2.0}, {}) for n in (8, 3, 5)]
    assert pick(equal, OBJ3, f"best:{SPEED}").number == 3  # equal points: the lower number
    assert pick(equal, OBJ3, "knee").number == 3
