"""The static outputs: `--once` (a rich snapshot: summary and Pareto table, plus the picked
trial) and `--json` (the front as a JSON list)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.text import Text

from sqa_nas.dashboard.render import detail, pareto_table, summary
from sqa_nas.dashboard.view import StudyView
from sqa_nas.search.records import TrialRecord


def snapshot(
    view: StudyView,
    *,
    title: str,
    axes: tuple[str, str] | None = None,
    picked: tuple[str, TrialRecord] | None = None,
) -> RenderableType:
    """Summary, Pareto table, and the picked trial's detail when there is one."""
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
    if picked:
        spec, r = picked
        parts += [
            Text(""),
            Panel(
                detail(view, r), title=f"picked by {spec}: trial #{r.number}", title_align="left"
            ),
        ]
    return Group(*parts)


def front_json(view: StudyView) -> list[dict[str, Any]]:
    """One object per Pareto trial, best first objective first."""
    return [
        {
            "number": r.number,
            "values": dict(r.values or {}),
            "params": r.params,
            "allocation": r.allocation,
            "layers": [x.stored() for x in r.layers],
            "seed_variant": r.seed_variant,
            "gpu_type": r.gpu_type,
            "analytics": r.analytics.stored(),
            "metrics": r.metrics.stored(),
        }
        for r in view.front
    ]


def write_json(view: StudyView, path: str) -> Path | None:
    """`path` '-' writes to stdout (returns None)."""
    text = json.dumps(front_json(view), indent=2, sort_keys=False, default=str)
    if path == "-":
        sys.stdout.write(text + "\n")
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return out
