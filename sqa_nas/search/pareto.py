"""Pareto fronts and pickers over study records.

Only COMPLETE, feasible trials with finite values are candidates; FAIL, PRUNED, RUNNING and
infeasible trials never reach a front. Two objectives use the O(n log n) sweep; more compare
each trial with the front found so far, O(n * front size), in numpy blocks.

Pickers (`pick`), shared by the dashboard, `--pick` and export:

- ``knee``: on the front of the first two objectives, normalised to [0, 1], the trial
  farthest from the straight line between the two extreme trials (the "knee" of the curve).
- ``best:OBJ``: the best trial for one objective (ties go to the trial that is better on the
  other objectives, in order, so the pick is on the front).
- ``best:OBJ:within=OTHER+1%``: the best OBJ among trials whose OTHER is within 1% of the
  best OTHER, e.g. ``best:throughput_tokens_per_s:within=val_loss+1%`` = the fastest trial
  within 1% of the best validation loss. An absolute margin is written without ``%``.

Hypervolume (`hypervolume_2d`, `hypervolume_history`): the area dominated by a two-objective
front and bounded by a reference point, and how it grew trial after trial, for the
dashboard's progress view.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

import numpy as np

from sqa_nas.errors import UserError
from sqa_nas.search.asha import hypervolume
from sqa_nas.search.records import OBJECTIVES, TrialRecord

_BLOCK = 32  # trials per numpy comparison for 3+ objectives (fastest here: 16 to 256 tried)
_PICK = re.compile(
    r"^best:(?P<obj>\w+)"
    r"(?::within=(?P<other>\w+)\+(?P<tol>\d+(?:\.\d+)?)(?P<pct>%)?)?$"
)


def candidates(records: Sequence[TrialRecord], objectives: Sequence[str]) -> list[TrialRecord]:
    """The records a Pareto front may contain: COMPLETE, feasible, not a repeat of another
    trial's layout, and with a finite value for every one of `objectives`."""
    out = []
    for r in records:
        if r.state != "COMPLETE" or not r.values or not r.feasible:
            continue
        if r.typed.duplicate_of is not None:  # its original stands for it
            continue
        try:
            if all(math.isfinite(r.values[o]) for o in objectives):
                out.append(r)
        except (KeyError, TypeError):  # a missing or non-numeric value
            continue
    return out


def _values(r: TrialRecord) -> dict[str, float]:
    """A candidate's values: `candidates` keeps only trials that have them."""
    assert r.values is not None
    return r.values


def _keyer(objectives: Sequence[str], directions: Sequence[str]):
    """A function of a trial: its values turned into 'smaller is better'."""
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    if len(objectives) == 2:  # the common case, unrolled: it runs once per trial per redraw
        (a, b), (sa, sb) = objectives, signs
        return lambda r: (sa * r.values[a], sb * r.values[b])
    pairs = list(zip(objectives, signs))
    return lambda r: tuple(s * r.values[o] for o, s in pairs)


def pareto_front(
    records: Sequence[TrialRecord],
    objectives: Sequence[str],
    directions: Sequence[str] | None = None,
) -> list[TrialRecord]:
    """The non-dominated trials, sorted by the first objective (best first). Trials with
    equal values are all kept (none dominates the other)."""
    directions = directions or [OBJECTIVES[o] for o in objectives]
    pool = candidates(records, objectives)
    key = _keyer(objectives, directions)
    keyed = sorted((key(r), r.number, r) for r in pool)
    if len(objectives) == 1:
        best = keyed[0][0] if keyed else None
        return [r for k, _, r in keyed if k == best]
    if len(objectives) == 2:
        front, best_second, last = [], math.inf, None
        for k, _, r in keyed:  # sorted by (first, second): sweep keeps a falling second value
            if k[1] < best_second or k == last:
                front.append(r)
                best_second, last = min(best_second, k[1]), k
        return front
    # In lexicographic order a trial can only be dominated by an earlier one, and whoever
    # dominates it, some front member does too (dominance is transitive). So trials are tested
    # in blocks, with numpy, against the front found so far and against the block itself.
    keys = np.array([k for k, _, _ in keyed]).reshape(len(keyed), len(objectives))
    front_keys, on_front = keys[:0], np.zeros(len(keyed), dtype=bool)
    for start in range(0, len(keys), _BLOCK):
        block = keys[start : start + _BLOCK]
        dominated = np.zeros(len(block), dtype=bool)
        for other in (front_keys, block):  # [i, j]: does other[j] dominate block[i]?
            le = (other[None, :, :] <= block[:, None, :]).all(axis=2)
            lt = (other[None, :, :] < block[:, None, :]).any(axis=2)
            dominated |= np.any(le & lt, axis=1)  # np.any: numpy's stubs type le as maybe 0-d
        on_front[start : start + _BLOCK] = ~dominated
        front_keys = np.concatenate([front_keys, block[~dominated]])
    return [r for (_, _, r), keep in zip(keyed, on_front) if keep]


def pick(
    records: Sequence[TrialRecord],
    objectives: Sequence[str],
    spec: str,
    directions: Sequence[str] | None = None,
) -> TrialRecord:
    """The trial a picker names (see the module docstring). `UserError` on a bad spec or an
    empty study."""
    directions = list(directions or [OBJECTIVES[o] for o in objectives])
    pool = candidates(records, objectives)
    if not pool:
        raise UserError("no completed feasible trial to pick from")
    if spec == "knee":
        front = pareto_front(pool, objectives[:2], directions[:2])
        return _knee(front, objectives, directions)
    m = _PICK.match(spec)
    if not m:
        raise UserError(
            f"--pick {spec!r}: expected 'knee', 'best:OBJECTIVE' or "
            "'best:OBJECTIVE:within=OTHER+TOL[%]'"
        )
    obj, other = m["obj"], m["other"]
    for name in filter(None, (obj, other)):
        if name not in objectives:
            raise UserError(
                f"--pick {spec!r}: {name!r} is not an objective of this study "
                f"({', '.join(objectives)})"
            )
    if other:
        d = directions[objectives.index(other)]
        best = _values(min(pool, key=_keyer([other], [d])))[other]
        tol = float(m["tol"]) * (abs(best) / 100 if m["pct"] else 1.0)
        limit = best + tol if d == "minimize" else best - tol
        pool = [
            r
            for r in pool
            if (_values(r)[other] <= limit if d == "minimize" else _values(r)[other] >= limit)
        ]
    order = [obj] + [o for o in objectives if o != obj]
    key = _keyer(order, [directions[objectives.index(o)] for o in order])
    return min(pool, key=lambda r: (key(r), r.number))


def _knee(front: list[TrialRecord], objectives, directions) -> TrialRecord:
    if len(objectives) < 2 or len(front) <= 2:
        return front[0]
    key = _keyer(objectives[:2], directions[:2])
    pts = [key(r) for r in front]
    lo = [min(p[i] for p in pts) for i in (0, 1)]
    span = [max(p[i] for p in pts) - lo[i] or 1.0 for i in (0, 1)]
    norm = [((p[0] - lo[0]) / span[0], (p[1] - lo[1]) / span[1]) for p in pts]
    (x0, y0), (x1, y1) = norm[0], norm[-1]  # the two extremes of the sorted front

    def distance(p):
        return abs((y1 - y0) * p[0] - (x1 - x0) * p[1] + x1 * y0 - y1 * x0)

    best = max(range(len(front)), key=lambda i: (distance(norm[i]), -front[i].number))
    return front[best]


# ------------------------------------------------------------------------------ hypervolume
def hypervolume_2d(points: Sequence[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by `points` and bounded by `ref`, both objectives minimised. Points not
    strictly better than `ref` in both coordinates add nothing (`asha.hypervolume`)."""
    return hypervolume(points, ref, ("minimize", "minimize"))


def hypervolume_history(
    records: Sequence[TrialRecord],
    objectives: Sequence[str],
    directions: Sequence[str] | None = None,
    ref: tuple[float, float] | None = None,
) -> list[tuple[TrialRecord, float]]:
    """The hypervolume of the two-objective front after each candidate trial, in completion
    order: ``[(trial, hypervolume), ...]``. `ref` is in the objectives' own units and
    defaults to the worst value seen for each; O(n log n) plus list moves, as each trial
    updates a staircase front and only the steps it touches."""
    if len(objectives) != 2:
        raise ValueError(f"hypervolume_history needs two objectives, got {len(objectives)}")
    directions = directions or [OBJECTIVES[o] for o in objectives]
    pool = sorted(
        candidates(records, objectives),
        key=lambda r: (r.datetime_complete is None, r.datetime_complete or 0, r.number),
    )
    keys = list(map(_keyer(objectives, directions), pool))
    if ref is None:
        rx, ry = (max((k[i] for k in keys), default=0.0) for i in (0, 1))
    else:
        rx, ry = (v if d == "minimize" else -v for v, d in zip(ref, directions))
    xs: list[float] = []  # the staircase: x ascending, y strictly descending
    ys: list[float] = []

    def steps(lo: int, hi: int) -> float:
        return sum(
            ((xs[i + 1] if i + 1 < len(xs) else rx) - xs[i]) * (ry - ys[i])
            for i in range(max(lo, 0), hi)
        )

    area, out = 0.0, []
    for r, (x, y) in zip(pool, keys):
        i = bisect_right(xs, x)
        if x < rx and y < ry and not (i and ys[i - 1] <= y):  # inside and not dominated
            lo = bisect_left(xs, x)
            hi = lo
            while hi < len(ys) and ys[hi] >= y:  # the steps the new trial dominates
                hi += 1
            area -= steps(lo - 1, hi)
            xs[lo:hi], ys[lo:hi] = [x], [y]
            area += steps(lo - 1, lo + 1)
        out.append((r, area))
    return out
