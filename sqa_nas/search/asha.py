"""The decisions of a multi-objective asynchronous successive-halving scheduler (MO-ASHA).

ASHA (Li et al., MLSys 2020) trains trials to rungs of growing token budgets. A trial waits
at the rung it reached; when a worker frees, the driver promotes the best `promotable` trial
of the highest rung to the next one, else it starts a new trial. A trial is promotable when
it is in the top 1/eta of the trials that reached its rung. MO-ASHA (Schmucker et al., 2021)
ranks several objectives instead of one metric; here, as in NSGA-II (Deb et al., 2002), by
non-dominated sorting, then by crowding distance within a front (`order`).

`kendall_tau` and `hypervolume` measure the scheduler in the benchmark: how well rankings at
a low rung predict those at the full budget, and how much of the objective space the
full-budget front covers.

Everything here is pure: a point is a tuple of floats, one per objective, and directions are
Optuna's study directions as strings ("minimize" / "maximize").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

Point = tuple[float, ...]


@dataclass(frozen=True)
class Entry:
    """One trial at one rung: its trial number, its values there, and whether it was already
    sent on to the next rung (or is a baseline, which always continues)."""

    key: int
    values: Point
    promoted: bool


def _signed(points: Sequence[Point], directions: Sequence[str]) -> list[Point]:
    """`points` made 'smaller is better': maximised objectives change sign."""
    if not directions or any(d not in ("minimize", "maximize") for d in directions):
        raise ValueError(f"directions: expected 'minimize' or 'maximize' each, got {directions}")
    signs = [1 if d == "minimize" else -1 for d in directions]
    out = []
    for i, p in enumerate(points):
        if len(p) != len(signs):
            raise ValueError(f"point {i} has {len(p)} values for {len(signs)} directions")
        out.append(tuple(s * v for s, v in zip(signs, p)))
    return out


def _dominates(a: Point, b: Point) -> bool:
    """Minimisation: `a` is no worse than `b` anywhere and better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def _fronts(keys: Sequence[Point], members: list[int]) -> list[list[int]]:
    """Non-dominated sorting of `members` (indices into `keys`), front 0 first: Deb's
    peeling, counting for each point the points that dominate it."""
    beats: dict[int, list[int]] = {i: [] for i in members}
    beaten_by = dict.fromkeys(members, 0)
    for i, j in combinations(members, 2):
        if _dominates(keys[i], keys[j]):
            beats[i].append(j)
            beaten_by[j] += 1
        elif _dominates(keys[j], keys[i]):
            beats[j].append(i)
            beaten_by[i] += 1
    fronts, front = [], [i for i in members if beaten_by[i] == 0]
    while front:
        fronts.append(front)
        after = []
        for i in front:
            for j in beats[i]:
                beaten_by[j] -= 1
                if beaten_by[j] == 0:
                    after.append(j)
        front = after
    return fronts


def _crowding(keys: Sequence[Point], front: list[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each point of `front`: per objective, the gap between
    its two neighbours divided by the front's range; the two ends of each objective's sort
    (the lower index first among equal values) get infinity. An objective on which the whole
    front is equal separates nobody and adds nothing."""
    distance = dict.fromkeys(front, 0.0)
    for m in range(len(keys[front[0]])):
        ranked = sorted(front, key=lambda i: (keys[i][m], i))
        lo, hi = keys[ranked[0]][m], keys[ranked[-1]][m]
        if hi == lo:
            continue
        distance[ranked[0]] = distance[ranked[-1]] = math.inf
        for before, i, after in zip(ranked, ranked[1:], ranked[2:]):
            distance[i] += (keys[after][m] - keys[before][m]) / (hi - lo)
    return distance


def order(points: Sequence[Point], directions: Sequence[str]) -> list[int]:
    """The indices of `points`, best first: by non-dominated front (front 0 first), within a
    front by crowding distance (larger first), then by index. A point with a non-finite value
    (NaN or infinity) cannot be compared fairly: all such points come after every finite
    point, in index order.

    Arguments:
        points: one tuple per candidate, one value per objective.
        directions: "minimize" or "maximize" for each objective.
    Return:
        a permutation of ``range(len(points))``.
    """
    keys = _signed(points, directions)
    finite = [i for i, k in enumerate(keys) if all(math.isfinite(v) for v in k)]
    out: list[int] = []
    for front in _fronts(keys, finite):
        distance = _crowding(keys, front)
        out += sorted(front, key=lambda i: (-distance[i], i))
    kept = set(finite)
    return out + [i for i in range(len(keys)) if i not in kept]


def promotable(entries: Sequence[Entry], eta: int, directions: Sequence[str]) -> list[int]:
    """ASHA's promotion rule at one rung: the keys of the entries not yet promoted that are in
    the top ``len(entries) // eta`` of `order` over all the rung's entries (promoted ones
    count and are ranked too), best first. None with fewer than `eta` entries; an entry with
    a non-finite value is never promotable.

    Arguments:
        entries: every trial that reached the rung.
        eta: the reduction factor (>= 2): one trial in eta continues.
        directions: "minimize" or "maximize" for each objective of `Entry.values`.
    Return:
        trial keys, best first.
    """
    if eta < 2:
        raise ValueError(f"eta: expected an integer >= 2, got {eta}")
    top = order([e.values for e in entries], directions)[: len(entries) // eta]
    return [
        entries[i].key
        for i in top
        if not entries[i].promoted and all(math.isfinite(v) for v in entries[i].values)
    ]


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b between two rankings of the same items (for example val_loss at a low
    rung and at the full budget): (concordant - discordant) pairs over the geometric mean of
    the pairs untied on each side, in [-1, 1]. Items with a NaN on either side are left out.

    Arguments:
        a, b: one value per item, the same items in the same order.
    Return:
        tau-b, or None with fewer than 2 items or when one side is constant.
    """
    if len(a) != len(b):
        raise ValueError(f"kendall_tau: {len(a)} values against {len(b)}")
    items = [(x, y) for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
    concordant = discordant = tied_a = tied_b = 0
    for (x1, y1), (x2, y2) in combinations(items, 2):
        sa, sb = (x1 > x2) - (x1 < x2), (y1 > y2) - (y1 < y2)
        tied_a += sa == 0
        tied_b += sb == 0
        concordant += sa * sb > 0
        discordant += sa * sb < 0
    pairs = len(items) * (len(items) - 1) // 2
    if pairs == tied_a or pairs == tied_b:
        return None
    return (concordant - discordant) / math.sqrt((pairs - tied_a) * (pairs - tied_b))


def hypervolume(points: Sequence[Point], reference: Point, directions: Sequence[str]) -> float:
    """The exact volume of the region that `points` dominate and `reference` bounds (an area
    for two objectives). Points that are not strictly better than `reference` in every
    objective (NaN included) add nothing.

    Arguments:
        points: one tuple per trial, one value per objective, in the objectives' own units.
        reference: a point in the same units, worse than the points that should count.
        directions: "minimize" or "maximize" for each objective.
    Return:
        the volume, in the product of the objectives' units.
    """
    (ref,) = _signed([reference], directions)
    inside = [p for p in _signed(points, directions) if all(x < r for x, r in zip(p, ref))]
    return _volume(inside, ref)


def _volume(points: list[Point], ref: Point) -> float:
    """`hypervolume` of points that all lie strictly inside `ref`, every objective minimised.
    Two objectives sum the steps of the front's staircase; more slice the space along the
    last objective (While et al., 2006): between two consecutive values of it, the cross
    section is the (d-1)-volume of the points below, kept as their non-dominated set."""
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    if len(ref) == 2:
        area, best_y = 0.0, ref[1]
        for x, y in sorted(points):
            if y < best_y:  # a new step of the staircase: the strip [x, rx] x [y, best_y]
                area += (ref[0] - x) * (best_y - y)
                best_y = y
        return area
    ranked = sorted(points, key=lambda p: p[-1])
    volume, base = 0.0, ref[:-1]
    below: list[Point] = []
    for p, top in zip(ranked, [q[-1] for q in ranked[1:]] + [ref[-1]]):
        q = p[:-1]
        if not any(all(x <= y for x, y in zip(o, q)) for o in below):  # else it adds nothing
            below = [o for o in below if not all(x <= y for x, y in zip(q, o))] + [q]
        if top > p[-1]:
            volume += _volume(below, base) * (top - p[-1])
    return volume
