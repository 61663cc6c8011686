"""The live panel a search shows while it runs: the budget bar, the best values, the size
of the Pareto front, and one row per running trial (where, step, loss, elapsed)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import optuna
from rich.console import Group
from rich.table import Table

from sqa_nas.search.executors.base import Executor
from sqa_nas.search.pareto import pareto_front
from sqa_nas.search.records import trial_records
from sqa_nas.search.space import SearchSpec

BAR_WIDTH = 30


def progress_panel(
    spec: SearchSpec,
    executor: Executor,
    url: str,
    n_trials: int,
    counts: Mapping[str, int],
    study: optuna.Study | None = None,
) -> Group:
    """The panel for `rich.live.Live`.

    Args:
        spec: the search space (study name, objectives and their directions).
        executor: where trials run; its `running` trials get a row each.
        url: the storage URL, shown under the bar.
        n_trials: the trial budget the bar fills towards.
        counts: the driver's `Driver.counts()` ({} before the study is open).
        study: the open study, or None before it is (no best values, no front).
    Returns:
        the header lines and the table of running trials.
    """
    done = counts.get("counted", 0)
    filled = int(BAR_WIDTH * min(done, n_trials) / max(n_trials, 1))
    head = (
        f"[bold]{spec.study_name}[/] {'█' * filled}{'░' * (BAR_WIDTH - filled)} "
        f"{done}/{n_trials} evaluated | complete {counts.get('complete', 0)}, running "
        f"{counts.get('running', 0)}, failed {counts.get('failed', 0)}, pruned "
        f"{counts.get('pruned', 0)}, infeasible {counts.get('infeasible', 0)}"
        + (f", repeats told {counts['duplicates']}" if counts.get("duplicates") else "")
        + (f" | paused at a rung {counts['paused']}" if counts.get("paused") else "")
    )
    lines = [head, f"[dim]{executor.describe()} | storage {url}[/]"]
    if study is not None:
        records = trial_records(study)
        front = pareto_front(records, spec.objectives)
        best = []
        for o, d in zip(spec.objectives, spec.directions):
            vals = [r.values[o] for r in records if r.values and r.feasible]
            if vals:
                best.append(f"{o} {(min if d == 'minimize' else max)(vals):.4g}")
        lines.append(f"best: {', '.join(best) or '-'} | Pareto front: {len(front)} trials")
    table = Table(box=None, padding=(0, 1), show_header=bool(executor.running))
    for col in ("trial", "where", "step", "loss", "elapsed"):
        table.add_column(col)
    for number, r in sorted(executor.running.items()):
        p = r.progress
        step = f"{p['step']}/{p['of']}" if p.get("of", -1) > 0 else str(p.get("step", "-"))
        table.add_row(
            str(number),
            r.where,
            step,
            f"{p['loss']:.3f}" if "loss" in p else "-",
            f"{time.monotonic() - r.started:.0f}s",
        )
    return Group(*lines, table)
