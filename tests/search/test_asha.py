"""MO-ASHA's decisions (ranking, promotion) and the benchmark's measures (Kendall's tau-b,
hypervolume): hand-worked examples, then seeded random sets against brute force and against
the independent implementations in `sqa_nas.search.pareto`."""

from __future__ import annotations

import itertools
import math
import random
from datetime import datetime, timedelta

import pytest

from sqa_nas.search.asha import Entry, hypervolume, kendall_tau, order, promotable
from sqa_nas.search.pareto import hypervolume_2d, hypervolume_history, pareto_front
from sqa_nas.search.records import TrialRecord
from tests.brute import dominates

MIN2 = ["minimize", "minimize"]
# Two fronts and a straggler. Front 0 = {0, 1, 2, 3}; crowding (ranges 4 and 4): 0 and 3 are
# ends (inf); 1 = (3-1)/4 + (5-2)/4 = 1.25 and 2 = (5-2)/4 + (3-1)/4 = 1.25 tie, so index
# decides. Front 1 = {4, 5} (both dominated by 1), two points: both ends. Front 2 = {6}.
TWO_FRONTS = [(1, 5), (2, 3), (3, 2), (5, 1), (3, 4), (4, 3), (6, 6)]
TWO_FRONTS_ORDER = [0, 3, 1, 2, 4, 5, 6]


def signed(p, directions):
    return [v if d == "minimize" else -v for v, d in zip(p, directions)]


# ------------------------------------------------------------------------------------ order
def test_order_two_fronts_with_a_crowding_tie():
    assert order(TWO_FRONTS, MIN2) == TWO_FRONTS_ORDER


def test_order_prefers_the_less_crowded_point_over_the_lower_index():
    # One front. Ends: 2 = (4, 0) and 3 = (0, 4). Crowding over ranges 4 and 4:
    # 0 = (3, 1): (4-1)/4 + (2-0)/4 = 1.25; 1 = (1, 2): (3-0)/4 + (4-1)/4 = 1.5.
    assert order([(3, 1), (1, 2), (4, 0), (0, 4)], MIN2) == [2, 3, 1, 0]


def test_crowding_normalises_each_objective_by_its_range():
    # Ends: 2 = (100, 0) and 3 = (0, 1). Over ranges 100 and 1, 1 = (40, 0.5) has
    # 50/100 + 0.95/1 = 1.45 and 0 = (50, 0.05) has 60/100 + 0.5/1 = 1.1; in raw units 0 would
    # lead (60.5 against 50.95).
    assert order([(50, 0.05), (40, 0.5), (100, 0), (0, 1)], MIN2) == [2, 3, 1, 0]


def test_order_flips_maximised_objectives():
    points = [(2, 2), (1, 1), (3, 3)]
    assert order(points, MIN2) == [1, 0, 2]  # three fronts, smallest first
    assert order(points, ["maximize", "maximize"]) == [2, 0, 1]
    # Minimise x, maximise y: one front; 1 and 2 are its ends, 0 sits between them.
    assert order(points, ["minimize", "maximize"]) == [1, 2, 0]
    negated = [(x, -y) for x, y in TWO_FRONTS]
    assert order(negated, ["minimize", "maximize"]) == TWO_FRONTS_ORDER


def test_order_puts_non_finite_points_last_in_index_order():
    # -inf would dominate everything if it were ranked; it is not.
    points = [(math.nan, 1.0), (1.0, 1.0), (math.inf, 0.0), (2.0, 2.0), (-math.inf, 5.0)]
    assert order(points, MIN2) == [1, 3, 0, 2, 4]
    assert order([(math.nan, math.nan)], MIN2) == [0]


def test_order_ignores_an_objective_the_whole_front_shares():
    # One front, equal in the third objective: it adds no distance (and no division by zero).
    # 1 is between 0 and 2 in both others: (3-1)/2 + (3-1)/2 = 2.
    assert order([(1, 3, 7), (2, 2, 7), (3, 1, 7)], MIN2 + ["minimize"]) == [0, 2, 1]


def test_order_edge_cases_and_bad_input():
    assert order([], MIN2) == []
    assert order([(1.0, 2.0)], MIN2) == [0]
    with pytest.raises(ValueError, match="'minimize' or 'maximize'"):
        order([(1.0, 2.0)], ["minimize", "max"])
    with pytest.raises(ValueError, match="point 1 has 3 values for 2 directions"):
        order([(1.0, 2.0), (1.0, 2.0, 3.0)], MIN2)


@pytest.mark.parametrize("n_obj", [2, 3, 4])
@pytest.mark.parametrize("seed", range(8))
def test_order_never_ranks_a_point_below_one_it_dominates(n_obj, seed):
    rnd = random.Random(seed * 10 + n_obj)
    directions = [rnd.choice(["minimize", "maximize"]) for _ in range(n_obj)]
    levels = rnd.choice([3, 10])  # a coarse grid: equal values and equal points
    points = [
        tuple(float(rnd.randrange(levels)) for _ in range(n_obj))
        for _ in range(rnd.randrange(1, 60))
    ]
    ranked = order(points, directions)
    assert sorted(ranked) == list(range(len(points)))
    keys = [signed(points[i], directions) for i in ranked]
    for before, after in itertools.combinations(keys, 2):
        assert not dominates(after, before)
    # Front 0 comes first and is pareto_front's front (an independent implementation).
    objectives = [f"o{m}" for m in range(n_obj)]
    records = [
        TrialRecord(i, "COMPLETE", dict(zip(objectives, p)), {}, {}, None, None)
        for i, p in enumerate(points)
    ]
    front = {r.number for r in pareto_front(records, objectives, directions)}
    assert set(ranked[: len(front)]) == front


# ------------------------------------------------------------------------------- promotable
def entries(points, promoted=()):
    """Keys 10, 11, ...: distinct from the indices, so a mix-up shows."""
    return [Entry(10 + i, tuple(map(float, p)), i in promoted) for i, p in enumerate(points)]


def test_nothing_is_promotable_below_eta_entries():
    assert promotable(entries(TWO_FRONTS[:2]), 3, MIN2) == []
    assert promotable(entries(TWO_FRONTS[:3]), 4, MIN2) == []


def test_promotable_is_the_top_floor_n_over_eta():
    # 7 entries ranked 0, 3, 1, 2, ...: eta 3 -> the top 2; eta 2 -> the top 3.
    assert promotable(entries(TWO_FRONTS), 3, MIN2) == [10, 13]
    assert promotable(entries(TWO_FRONTS), 2, MIN2) == [10, 13, 11]
    assert promotable(entries(TWO_FRONTS[:3]), 3, MIN2) == [10]


def test_promoted_entries_count_but_are_not_returned():
    # 0 is already on: the top 2 are still 0 and 3, so 1 does not move up into its place.
    assert promotable(entries(TWO_FRONTS, promoted={0}), 3, MIN2) == [13]
    assert promotable(entries(TWO_FRONTS, promoted={0, 3}), 3, MIN2) == []
    assert promotable(entries(TWO_FRONTS, promoted={6}), 3, MIN2) == [10, 13]


def test_promotable_with_three_objectives():
    # Front 0 = {0, 1, 2}: 3 and 4 are dominated by 2, 5 by 0. 1 = (3, 2, 1) is there only
    # through the third objective (on the first two, 2 dominates it). Crowding: 0 and 1 are
    # ends of objectives 1 and 3; the second is equal on the front and adds nothing.
    points = [(1, 2, 3), (3, 2, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4), (2, 3, 4)]
    three = MIN2 + ["minimize"]
    assert order(points, three) == [0, 1, 2, 3, 5, 4]  # then front {3, 5}, then 4
    assert promotable(entries(points), 3, three) == [10, 11]
    assert promotable(entries(points, promoted={1}), 3, three) == [10]
    # Maximising the third objective instead: front 0 = {0, 5}, as 0 = (1, 2, 3) now
    # dominates 1, 2 and 3, and 5 = (2, 3, 4) dominates 3 and 4.
    flipped = ["minimize", "minimize", "maximize"]
    assert order(points, flipped)[:2] == [0, 5]
    assert promotable(entries(points), 3, flipped) == [10, 15]


def test_non_finite_entries_are_never_promotable():
    nan = math.nan
    assert promotable(entries([(nan, 1), (nan, 2), (nan, 3)]), 3, MIN2) == []
    assert promotable(entries([(nan, 1), (2, 2), (3, 3)]), 3, MIN2) == [11]
    with pytest.raises(ValueError, match="eta"):
        promotable(entries(TWO_FRONTS), 1, MIN2)


# ------------------------------------------------------------------------------ kendall_tau
def test_kendall_tau_hand_worked():
    # One discordant pair (2, 3) of 6: (5 - 1) / 6.
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # Ties: pair (0, 1) tied in a, pair (1, 2) tied in b, the 4 others concordant:
    # 4 / sqrt((6 - 1) * (6 - 1)) = 0.8.
    assert kendall_tau([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, math.nan, 3], [1, 2, 0, 3]) == pytest.approx(1.0)


def test_kendall_tau_undefined():
    assert kendall_tau([], []) is None
    assert kendall_tau([1.0], [2.0]) is None
    assert kendall_tau([1, 2, 3], [5, 5, 5]) is None
    assert kendall_tau([1, 1], [1, 2]) is None
    assert kendall_tau([1, math.nan], [1, 2]) is None  # one item left
    with pytest.raises(ValueError, match="3 values against 2"):
        kendall_tau([1, 2, 3], [1, 2])


@pytest.mark.parametrize("seed", range(10))
def test_kendall_tau_symmetries(seed):
    rnd = random.Random(seed)
    n = rnd.randrange(3, 30)
    a = [float(rnd.randrange(5)) for _ in range(n)]
    b = [x + rnd.randrange(4) for x in a]  # correlated, with ties on both sides
    tau = kendall_tau(a, b)
    assert tau is not None and -1 <= tau <= 1
    assert kendall_tau(b, a) == pytest.approx(tau)
    assert kendall_tau(a, [-x for x in b]) == pytest.approx(-tau)
    assert kendall_tau(a, [2 * x + 1 for x in a]) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(10))
def test_kendall_tau_matches_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rnd = random.Random(seed)
    a = [float(rnd.randrange(6)) for _ in range(rnd.randrange(3, 40))]
    b = [rnd.choice([x, float(rnd.randrange(6))]) for x in a]
    expected = stats.kendalltau(a, b).statistic
    tau = kendall_tau(a, b)
    assert (tau is None and math.isnan(expected)) or tau == pytest.approx(expected)


# ------------------------------------------------------------------------------ hypervolume
def test_hypervolume_hand_worked_boxes():
    # A staircase: [1,4]x[3,4] + [2,4]x[2,3] + [3,4]x[1,2] = 3 + 2 + 1.
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (4, 4), MIN2) == 6.0
    three = MIN2 + ["minimize"]
    assert hypervolume([(1, 2, 3)], (4, 4, 4), three) == 3 * 2 * 1
    # Two boxes to (3, 3, 3): 3*3*1 and 1*1*3, overlapping in the unit cube [2,3]^3.
    assert hypervolume([(0, 0, 2), (2, 2, 0)], (3, 3, 3), three) == 9 + 3 - 1
    assert hypervolume([(1, 1, 1, 1)], (2, 3, 4, 5), MIN2 + MIN2) == 1 * 2 * 3 * 4
    assert hypervolume([(4,), (2,)], (5,), ["minimize"]) == 3
    assert hypervolume([], (1, 1), MIN2) == 0.0


def test_hypervolume_flips_maximised_objectives():
    # Maximise x: (3, 2) and (2, 1) become (-3, 2) and (-2, 1) against (0, 4):
    # [-3,0]x[2,4] + [-2,0]x[1,2] = 6 + 2.
    assert hypervolume([(3, 2), (2, 1)], (0, 4), ["maximize", "minimize"]) == 8.0
    assert hypervolume([(3, 3)], (1, 1), ["maximize", "maximize"]) == 4.0
    assert hypervolume([(3, 3)], (1, 1), MIN2) == 0.0  # wrong side of the reference


def test_hypervolume_counts_only_points_strictly_inside_the_reference():
    # (4, 0) and (0, 4) touch the reference, (5, 5) is beyond it, NaN is nowhere.
    points = [(1, 1), (4, 0), (0, 4), (5, 5), (math.nan, 0)]
    assert hypervolume(points, (4, 4), MIN2) == 9.0


def cells(points, ref):
    """Unit cells of the integer grid inside `ref` that some point dominates, one by one."""
    return sum(
        1
        for cell in itertools.product(
            *(range(min(p[m] for p in points), r) for m, r in enumerate(ref))
        )
        if any(all(x <= c for x, c in zip(p, cell)) for p in points)
    )


@pytest.mark.parametrize("n_obj", [2, 3, 4])
@pytest.mark.parametrize("seed", range(10))
def test_hypervolume_counts_cells(n_obj, seed):
    rnd = random.Random(seed * 10 + n_obj)
    points = [tuple(rnd.randrange(6) for _ in range(n_obj)) for _ in range(rnd.randrange(1, 20))]
    ref = tuple(rnd.randrange(3, 8) for _ in range(n_obj))
    inside = [p for p in points if all(x < r for x, r in zip(p, ref))]
    expected = cells(inside, ref) if inside else 0
    assert hypervolume(points, ref, ["minimize"] * n_obj) == expected


@pytest.mark.parametrize("n_obj", [2, 3, 4])
@pytest.mark.parametrize("seed", range(6))
def test_hypervolume_never_falls_when_a_point_is_added(n_obj, seed):
    rnd = random.Random(seed * 10 + n_obj)
    directions = [rnd.choice(["minimize", "maximize"]) for _ in range(n_obj)]
    reference = tuple(1.0 if d == "minimize" else 0.0 for d in directions)
    points: list[tuple[float, ...]] = []
    last = 0.0
    for _ in range(60 if n_obj < 4 else 30):
        points.append(tuple(rnd.random() for _ in range(n_obj)))
        volume = hypervolume(points, reference, directions)
        assert volume >= last - 1e-12
        last = volume
    assert 0 < last <= 1


@pytest.mark.parametrize("seed", range(6))
def test_hypervolume_agrees_with_pareto_in_two_dimensions(seed):
    # hypervolume_history updates a staircase trial by trial: an independent computation.
    rnd = random.Random(seed)
    directions = [rnd.choice(["minimize", "maximize"]) for _ in range(2)]
    t0 = datetime(2026, 1, 1)
    points = [(rnd.random(), rnd.random()) for _ in range(80)]
    records = [
        TrialRecord(i, "COMPLETE", {"a": x, "b": y}, {}, {}, t0, t0 + timedelta(minutes=i))
        for i, (x, y) in enumerate(points)
    ]
    reference = tuple(0.9 if d == "minimize" else 0.1 for d in directions)
    history = hypervolume_history(records, ["a", "b"], directions, ref=reference)
    for n, (_, area) in enumerate(history, start=1):
        assert hypervolume(points[:n], reference, directions) == pytest.approx(area, abs=1e-12)
    flipped = [tuple(signed(p, directions)) for p in points]
    assert hypervolume(points, reference, directions) == pytest.approx(
        hypervolume_2d(flipped, tuple(signed(reference, directions)))
    )
