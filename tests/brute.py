"""Brute-force definitions of the Pareto front and the pickers, independent of
`sqa_nas.search.pareto`: the one reference every test of fronts and picks compares with.

They are written from the definitions in `sqa_nas.search.pareto`'s docstring, the slow and obvious
way: all-pairs dominance, exact rational arithmetic for the knee, and for picks that sit on a
floating-point boundary (a distance or a tolerance that ties up to rounding) every answer the
definition allows.
"""

from __future__ import annotations

import math
from fractions import Fraction

from sqa_nas.search.records import OBJECTIVES

TOL = 1e-9  # relative: answers this close to a boundary are all accepted


def directions_of(objectives, directions=None) -> list[str]:
    return list(directions or [OBJECTIVES[o] for o in objectives])


def key(r, objectives, directions) -> list[float]:
    """The trial's values made 'smaller is better'."""
    return [
        r.values[o] if d == "minimize" else -r.values[o] for o, d in zip(objectives, directions)
    ]


def pool(records, objectives) -> list:
    """Completed, feasible trials with a finite value for every objective."""
    return [
        r
        for r in records
        if r.state == "COMPLETE"
        and not r.attrs.get("infeasible")
        and r.values
        and all(
            isinstance(r.values.get(o), int | float) and math.isfinite(r.values[o])
            for o in objectives
        )
    ]


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def front(records, objectives, directions=None) -> set[int]:
    """Numbers of the non-dominated candidates, by comparing every pair."""
    directions = directions_of(objectives, directions)
    keys = {r.number: key(r, objectives, directions) for r in pool(records, objectives)}
    return {n for n, k in keys.items() if not any(dominates(o, k) for o in keys.values())}


def best(records, objectives, obj, directions=None, within=None) -> set[int]:
    """``best:OBJ[:within=OTHER+TOL[%]]``: the trials the picker may return. `within` is
    (other, tol, percent). Ties on OBJ go to the trial better on the other objectives in
    order, then to the lower number; a trial within rounding of the tolerance bound may be
    counted either side of it."""
    directions = directions_of(objectives, directions)
    candidates = pool(records, objectives)
    order = [obj] + [o for o in objectives if o != obj]
    order_dirs = [directions[objectives.index(o)] for o in order]

    def winner(trials):
        return min(trials, key=lambda r: (key(r, order, order_dirs), r.number)).number

    if within is None:
        return {winner(candidates)}
    other, tol, percent = within
    sign = 1 if directions[objectives.index(other)] == "minimize" else -1
    best_other = min(sign * r.values[other] for r in candidates)  # smaller is better
    margin = tol * abs(best_other) / 100 if percent else tol
    slack = TOL * max(1.0, abs(best_other), margin)
    inside = [r for r in candidates if sign * r.values[other] <= best_other + margin - slack]
    edge = [r for r in candidates if sign * r.values[other] <= best_other + margin + slack]
    return {winner(trials) for trials in (inside, edge) if trials}


def knee(records, objectives, directions=None) -> set[int]:
    """``knee``: on the front of the first two objectives, each normalised to [0, 1] over the
    front, the trial farthest from the line through the two extreme trials (best on the first
    objective, best on the second). A front of one or two trials gives its trial best on the
    first objective (then second, then number). Computed in exact rationals; every trial at
    the largest distance, up to rounding, counts (the library's float arithmetic may order
    exact ties either way; tests check its tie-break, the lower number, on exact data)."""
    objectives, directions = objectives[:2], directions_of(objectives, directions)[:2]
    on_front = front(records, objectives, directions)
    trials = sorted(
        (r for r in pool(records, objectives) if r.number in on_front),
        key=lambda r: (key(r, objectives, directions), r.number),
    )
    if len(trials) <= 2:
        return {trials[0].number}
    pts = [[Fraction(v) for v in key(r, objectives, directions)] for r in trials]
    lo = [min(p[i] for p in pts) for i in (0, 1)]
    span = [max(p[i] for p in pts) - lo[i] or Fraction(1) for i in (0, 1)]
    norm = [[(p[i] - lo[i]) / span[i] for i in (0, 1)] for p in pts]
    (x0, y0), (x1, y1) = norm[0], norm[-1]
    length = math.hypot(x1 - x0, y1 - y0) or 1.0

    def distance(p):  # perpendicular distance to the line through the extremes
        return float(abs((x1 - x0) * (y0 - p[1]) - (x0 - p[0]) * (y1 - y0))) / length

    dist = [distance(p) for p in norm]
    top = max(dist)
    return {r.number for r, d in zip(trials, dist) if d >= top - TOL * max(top, 1e-300)}
