"""Pareto fronts and pickers over study records.

Only COMPLETE, feasible trials with finite values are candidates; FAIL, PRUNED, RUNNING and
infeasible trials never reach a front. Two objectives use the O(n log n) sweep; more use the
O(n^2) pairwise test.

Pickers (`pick`), shared by the dashboard, `--pick` and export:

- ``knee``: on the front of the first two objectives, normalised to [0, 1], the trial
  farthest from the straight line between the two extreme trials (the "knee" of the curve).
- ``best:OBJ``: the best trial for one objective.
- ``best:OBJ:within=OTHER+1%``: the best OBJ among trials whose OTHER is within 1% of the
  best OTHER, e.g. ``best:throughput_tokens_per_s:within=val_loss+1%`` = the fastest trial
  within 1% of the best validation loss. An absolute margin is written without ``%``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from sqa_nas.errors import UserError
from sqa_nas.search.records import OBJECTIVES, TrialRecord

_PICK = re.compile(r"^best:(?P<obj>\w+)(?::within=(?P<other>\w+)\+(?P<tol>[0-9.]+)(?P<pct>%)?)?$")


def candidates(records: Sequence[TrialRecord], objectives: Sequence[str]) -> list[TrialRecord]:
    return [r for r in records if r.state == "COMPLETE" and r.feasible and r.values
            and all(_finite(r.values.get(o)) for o in objectives)]


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _keys(r: TrialRecord, objectives, directions) -> tuple[float, ...]:
    """Values turned into 'smaller is better'."""
    return tuple(r.values[o] if d == "minimize" else -r.values[o]
                 for o, d in zip(objectives, directions))


def pareto_front(records: Sequence[TrialRecord], objectives: Sequence[str],
                 directions: Sequence[str] | None = None) -> list[TrialRecord]:
    """The non-dominated trials, sorted by the first objective (best first). Trials with
    equal values are all kept (none dominates the other)."""
    directions = directions or [OBJECTIVES[o] for o in objectives]
    pool = candidates(records, objectives)
    keyed = sorted((_keys(r, objectives, directions), r.number, r) for r in pool)
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
    front = []
    for k, _, r in keyed:
        if not any(_dominates(o, k) for o, _, _ in keyed):
            front.append(r)
    return front


def _dominates(a: tuple, b: tuple) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pick(records: Sequence[TrialRecord], objectives: Sequence[str], spec: str,
         directions: Sequence[str] | None = None) -> TrialRecord:
    """The trial a picker names (see the module docstring). `UserError` on a bad spec or an
    empty study."""
    directions = list(directions or [OBJECTIVES[o] for o in objectives])
    pool = candidates(records, objectives)
    if not pool:
        raise UserError("no completed feasible trial to pick from")
    if spec == "knee":
        return _knee(pareto_front(pool, objectives, directions), objectives, directions)
    m = _PICK.match(spec)
    if not m:
        raise UserError(f"--pick {spec!r}: expected 'knee', 'best:OBJECTIVE' or "
                        "'best:OBJECTIVE:within=OTHER+TOL[%]'")
    obj, other = m["obj"], m["other"]
    for name in filter(None, (obj, other)):
        if name not in objectives:
            raise UserError(f"--pick {spec!r}: {name!r} is not an objective of this study "
                            f"({', '.join(objectives)})")
    if other:
        d = directions[objectives.index(other)]
        best = min(pool, key=lambda r: _signed(r, other, d)).values[other]
        tol = float(m["tol"]) * (abs(best) / 100 if m["pct"] else 1.0)
        limit = best + tol if d == "minimize" else best - tol
        pool = [r for r in pool if (r.values[other] <= limit if d == "minimize"
                                    else r.values[other] >= limit)]
    d = directions[objectives.index(obj)]
    return min(pool, key=lambda r: (_signed(r, obj, d), r.number))


def _signed(r: TrialRecord, objective: str, direction: str) -> float:
    v = r.values[objective]
    return v if direction == "minimize" else -v


def _knee(front: list[TrialRecord], objectives, directions) -> TrialRecord:
    if len(objectives) < 2 or len(front) <= 2:
        return front[0]
    pts = [_keys(r, objectives[:2], directions[:2]) for r in front]
    lo = [min(p[i] for p in pts) for i in (0, 1)]
    span = [max(p[i] for p in pts) - lo[i] or 1.0 for i in (0, 1)]
    norm = [((p[0] - lo[0]) / span[0], (p[1] - lo[1]) / span[1]) for p in pts]
    (x0, y0), (x1, y1) = norm[0], norm[-1]  # the two extremes of the sorted front

    def distance(p):
        return abs((y1 - y0) * p[0] - (x1 - x0) * p[1] + x1 * y0 - y1 * x0)

    best = max(range(len(front)), key=lambda i: (distance(norm[i]), -front[i].number))
    return front[best]
