"""Pareto fronts, pickers and hypervolume against brute force on random data with ties and
trials that must never reach a front (failed, running, pruned, infeasible, non-finite)."""

from __future__ import annotations

import itertools
import math
import random
from datetime import datetime, timedelta

import pytest

from sqa_nas.errors import UserError
from sqa_nas.search.pareto import (
    candidates,
    hypervolume_2d,
    hypervolume_history,
    pareto_front,
    pick,
)
from sqa_nas.search.records import TrialRecord
from tests import brute

NAMES = ["a", "b", "c", "d"]
T0 = datetime(2026, 1, 1)


def random_records(rnd: random.Random, n: int, objectives, levels: int = 6):
    """Values on a coarse grid so that ties (equal values, equal points) are common."""
    out = []
    for number in range(n):
        state = rnd.choices(["COMPLETE", "FAIL", "RUNNING", "PRUNED"], [8, 1, 1, 1])[0]
        values = None
        if state == "COMPLETE":
            values = {o: float(rnd.randrange(levels)) for o in objectives}
            if rnd.random() < 0.03:
                values[rnd.choice(objectives)] = math.nan
        elif rnd.random() < 0.5:  # a failed or running trial may carry values: still excluded
            values = {o: -1e9 for o in objectives}
        attrs = {"infeasible": ["kv cache too large"]} if rnd.random() < 0.05 else {}
        out.append(
            TrialRecord(
                number, state, values, {}, attrs, T0, T0 + timedelta(minutes=rnd.randrange(1000))
            )
        )
    return out


@pytest.mark.parametrize("n_obj", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(12))
def test_front_equals_brute_force(n_obj, seed):
    rnd = random.Random(seed * 10 + n_obj)
    objectives = NAMES[:n_obj]
    directions = [rnd.choice(["minimize", "maximize"]) for _ in objectives]
    records = random_records(rnd, rnd.randrange(1, 120), objectives, levels=rnd.choice([3, 8]))
    front = pareto_front(records, objectives, directions)
    assert {r.number for r in front} == brute.front(records, objectives, directions)
    assert all(r.state == "COMPLETE" and r.feasible for r in front)
    assert len(front) == len({r.number for r in front})
    first = [brute.key(r, objectives, directions)[0] for r in front]
    assert first == sorted(first)  # sorted by the first objective, best first


@pytest.mark.parametrize("n_obj, levels", [(3, 4), (3, 50), (4, 6)])
def test_front_equals_brute_force_across_many_blocks(n_obj, levels):
    # hundreds of trials: 3+ objectives are compared in numpy blocks of 32
    rnd = random.Random(levels)
    objectives = NAMES[:n_obj]
    directions = [rnd.choice(["minimize", "maximize"]) for _ in objectives]
    records = random_records(rnd, 400, objectives, levels=levels)
    front = pareto_front(records, objectives, directions)
    assert {r.number for r in front} == brute.front(records, objectives, directions)


def test_equal_points_are_all_kept_and_nothing_else():
    objectives = ["a", "b"]
    pts = [(1, 5), (1, 5), (2, 3), (2, 4), (1, 6), (3, 3), (0, 9)]
    records = [TrialRecord(i, "COMPLETE", {"a": a, "b": b}, {}) for i, (a, b) in enumerate(pts)]
    front = pareto_front(records, objectives, ["minimize", "minimize"])
    assert [r.number for r in front] == [6, 0, 1, 2]


def test_failed_running_pruned_never_on_front_even_when_better():
    objectives = ["a", "b"]
    records = [TrialRecord(0, "COMPLETE", {"a": 5.0, "b": 5.0}, {})]
    for number, state in enumerate(["FAIL", "RUNNING", "PRUNED", "WAITING"], start=1):
        records.append(TrialRecord(number, state, {"a": 0.0, "b": 0.0}, {}))
    records.append(
        TrialRecord(9, "COMPLETE", {"a": 0.0, "b": 0.0}, {}, {"infeasible": ["too many heads"]})
    )
    assert [r.number for r in pareto_front(records, objectives, ["minimize"] * 2)] == [0]


def test_large_study_sweep_agrees_with_the_block_comparison():
    # 20000 trials: the two-objective sweep and the numpy blocks of 3+ objectives (here with a
    # third objective that is equal for all, so it changes no dominance) find the same front.
    # How fast they are is measured by benchmarks, not asserted here.
    rnd = random.Random(0)
    records = [
        TrialRecord(i, "COMPLETE", {"a": round(rnd.random(), 3), "b": rnd.random(), "c": 1.0}, {})
        for i in range(20000)
    ]
    two = pareto_front(records, ["a", "b"], ["minimize", "maximize"])
    three = pareto_front(records, ["a", "b", "c"], ["minimize", "maximize", "minimize"])
    assert [r.number for r in two] == [r.number for r in three]
    sample = records[:500]  # brute force is quadratic: a slice of the same study
    assert {
        r.number for r in pareto_front(sample, ["a", "b"], ["minimize", "maximize"])
    } == brute.front(sample, ["a", "b"], ["minimize", "maximize"])


# ---------------------------------------------------------------------------------- pickers
def two(values):
    return [
        TrialRecord(i, "COMPLETE", {"val_loss": v, "throughput_tokens_per_s": t}, {})
        for i, (v, t) in enumerate(values)
    ]


OBJ = ["val_loss", "throughput_tokens_per_s"]


def test_best_and_best_within():
    records = two([(2.00, 100), (2.01, 300), (2.03, 900), (2.50, 1000), (2.00, 90)])
    records.append(TrialRecord(9, "FAIL", None, {}))
    assert pick(records, OBJ, "best:val_loss").number == 0  # tie with #4, #0 is faster
    assert pick(records, OBJ, "best:throughput_tokens_per_s").number == 3
    assert pick(records, OBJ, "best:throughput_tokens_per_s:within=val_loss+1%").number == 1
    assert pick(records, OBJ, "best:throughput_tokens_per_s:within=val_loss+0.05").number == 2
    # within 10% of 1000 tokens/s: 900 is in (the bound is inclusive), and has the lower loss
    assert pick(records, OBJ, "best:val_loss:within=throughput_tokens_per_s+10%").number == 2
    assert pick(records, OBJ, "best:val_loss:within=throughput_tokens_per_s+5%").number == 3


def test_best_tie_break_lands_on_front():
    rnd = random.Random(3)
    for _ in range(50):
        records = two([(rnd.randrange(3), rnd.randrange(3)) for _ in range(10)])
        front = {r.number for r in pareto_front(records, OBJ)}
        for spec in ("best:val_loss", "best:throughput_tokens_per_s"):
            assert pick(records, OBJ, spec).number in front


def test_knee_is_the_corner():
    # An L-shaped front: the corner trial is the knee whatever the scales.
    records = two([(3.0, 1000), (2.1, 900), (2.0, 100), (2.05, 50), (2.9, 990)])
    assert pick(records, OBJ, "knee").number == 1
    records = two([(3.0, 1e7), (2.1, 9e6), (2.0, 1e3)])
    assert pick(records, OBJ, "knee").number == 1


def test_knee_with_three_objectives_uses_the_first_two():
    records = [
        TrialRecord(i, "COMPLETE", {"a": a, "b": b, "c": c}, {})
        for i, (a, b, c) in enumerate([(0, 10, 5), (1, 1, 5), (10, 0, 5), (5, 5, 0)])
    ]
    assert pick(records, ["a", "b", "c"], "knee", ["minimize"] * 3).number == 1


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fastest", "expected 'knee'"),
        ("best:speed", "'speed' is not an objective"),
        ("best:val_loss:within=nope+1%", "'nope' is not an objective"),
    ],
)
def test_bad_pick_specs_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        pick(two([(2.0, 1.0)]), OBJ, spec)


def test_pick_without_candidates():
    with pytest.raises(UserError, match="no completed feasible trial"):
        pick([TrialRecord(0, "RUNNING", None, {})], OBJ, "knee")


# ------------------------------------------------------------------------------ hypervolume
def brute_hypervolume(points, ref):
    """Unit cells of the integer grid dominated by some point, counted one by one."""
    return sum(
        1
        for cx, cy in itertools.product(
            range(min(p[0] for p in points), ref[0]), range(min(p[1] for p in points), ref[1])
        )
        if any(px <= cx and py <= cy for px, py in points)
    )


@pytest.mark.parametrize("seed", range(20))
def test_hypervolume_2d_counts_cells(seed):
    rnd = random.Random(seed)
    points = [(rnd.randrange(10), rnd.randrange(10)) for _ in range(rnd.randrange(1, 25))]
    ref = (rnd.randrange(5, 12), rnd.randrange(5, 12))
    assert hypervolume_2d(points, ref) == brute_hypervolume(points, ref)


@pytest.mark.parametrize("seed", range(10))
def test_hypervolume_history_matches_recomputation(seed):
    rnd = random.Random(seed)
    objectives = ["a", "b"]
    directions = [rnd.choice(["minimize", "maximize"]) for _ in objectives]
    records = random_records(rnd, 80, objectives, levels=rnd.choice([4, 20]))
    history = hypervolume_history(records, objectives, directions)
    pool = candidates(records, objectives)
    assert [r.number for r, _ in history] == [
        r.number for r in sorted(pool, key=lambda r: (r.datetime_complete, r.number))
    ]
    ref = [max(brute.key(r, objectives, directions)[i] for r in pool) for i in (0, 1)]
    seen = []
    for r, area in history:
        seen.append(brute.key(r, objectives, directions))
        assert area == pytest.approx(hypervolume_2d(seen, ref), abs=1e-9)
    areas = [a for _, a in history]
    assert areas == sorted(areas)  # a front never loses area


def test_hypervolume_history_with_a_reference_in_objective_units():
    records = two([(2.0, 100.0), (1.0, 50.0)])
    history = hypervolume_history(records, OBJ, ref=(3.0, 0.0))
    # (3 - 2) * 100 after the first; the second adds (2 - 1) * 50.
    assert [a for _, a in history] == [100.0, 150.0]
