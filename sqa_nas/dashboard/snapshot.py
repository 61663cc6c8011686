"""The static outputs: `--once` (a rich snapshot: summary and Pareto table, the rung ladder of
a multi-fidelity study, plus the picked trial) and `--json` (the front as a JSON object: the
front's trials, the noise floor and whether it resolves the front, the last `sqa-nas
confirm`, the rung ladder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.text import Text

from sqa_nas.dashboard.render import (
    detail,
    ladder_text,
    ladder_title,
    pareto_table,
    plain,
    summary,
)
from sqa_nas.dashboard.view import StudyView
from sqa_nas.search.records import TrialRecord


def snapshot(
    view: StudyView,
    *,
    title: str,
    axes: tuple[str, str] | None = None,
    picked: tuple[str, TrialRecord] | None = None,
) -> RenderableType:
    """Summary, Pareto table, the rung ladder when the study has one, and the picked trial's
    detail when there is one."""
    parts: list[RenderableType] = [
        summary(view, view.progress(axes), title=title),
        Text(""),
        pareto_table(
            view,
            title=f"Pareto front ({len(view.front)} "
            f"trial{'' if len(view.front) == 1 else 's'}, best "
            f"{view.objectives[0]} first)",
            highlight=picked[1].number if picked else None,
        ),
    ]
    if view.ladder:
        parts += [Text(""), plain(ladder_title(view).capitalize(), "italic"), ladder_text(view)]
    if picked:
        spec, r = picked
        parts += [
            Text(""),
            Panel(
                detail(view, r),
                title=plain(f"picked by {spec}: trial #{r.number}"),
                title_align="left",
            ),
        ]
    return Group(*parts)


def view_json(view: StudyView) -> dict[str, Any]:
    """What `--json` writes: ``objectives`` and ``directions``; ``gpu_type`` (the filter, or
    null); ``noise`` (the study's `Noise`, unmeasured: ``n`` 0); ``resolved`` and ``verdict``
    (`Verdict.resolved`, `Verdict.summary`); ``indistinguishable`` (trial numbers off the
    front but within noise of it); ``confirm`` (the study's last `sqa-nas confirm`, or
    null); ``front``: one object per Pareto trial, best first objective first; ``rungs``: the
    multi-fidelity rung ladder, one object per rung (`RungRow.as_json`; [] for a study
    without rungs)."""
    confirmed = view.confirmation
    return {
        "objectives": view.objectives,
        "directions": view.directions,
        "gpu_type": view.gpu_type,
        "noise": view.noise.model_dump(mode="json"),
        "resolved": view.verdict.resolved,
        "verdict": view.verdict.summary(),
        "indistinguishable": [r.number for r in view.verdict.indistinguishable],
        "confirm": None if confirmed is None else confirmed.model_dump(mode="json"),
        "front": [trial_json(r) for r in view.front],
        "rungs": [x.as_json() for x in view.ladder],
    }


def trial_json(r: TrialRecord) -> dict[str, Any]:
    """One trial: number, values, params, allocation, layers, seed variant, GPU type,
    analytics and metrics, and its spread on top level (seeds' std, timing intervals, the
    noisy flag, the trial whose layout it repeats)."""
    m = r.metrics
    return {
        "number": r.number,
        "values": dict(r.values or {}),
        "params": r.params,
        "allocation": r.allocation,
        "layers": [x.stored() for x in r.layers],
        "seed_variant": r.seed_variant,
        "gpu_type": r.gpu_type,
        "analytics": r.analytics.stored(),
        "metrics": m.stored(),
        "val_loss_std": m.val_loss_std,
        "throughput_rel_ci95": m.throughput_rel_ci95,
        "speedup_ci95": None if m.speedup_ci95 is None else list(m.speedup_ci95),
        "noisy_throughput": bool(m.noisy_throughput),
        "duplicate_of": r.typed.duplicate_of,
    }


def write_json(view: StudyView, path: str) -> Path | None:
    """`path` '-' writes to stdout (returns None)."""
    text = json.dumps(view_json(view), indent=2, sort_keys=False, default=str)
    if path == "-":
        sys.stdout.write(text + "\n")
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return out
