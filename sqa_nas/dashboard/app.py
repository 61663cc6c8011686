"""The interactive dashboard (Textual): Pareto scatter (with the rung ladder under it in a
multi-fidelity study), trials table, trial detail and the search's progress, re-read from the
storage every few seconds while a search writes it.

Keys: x / y cycle the scatter's axes, p shows only the Pareto front, s / S sort by the next
column / reverse (or click a header), k selects the knee, b cycles the best-under-constraint
pickers, g cycles the GPU-type filter, e exports the selected trial, r reloads now, q quits.
"""

from __future__ import annotations

import importlib
import importlib.util
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Header, Static

from sqa_nas.dashboard import render
from sqa_nas.dashboard.ladder import last_rung
from sqa_nas.dashboard.scatter import Scatter
from sqa_nas.dashboard.table import TrialTable
from sqa_nas.dashboard.view import Source, StudyView
from sqa_nas.errors import UserError
from sqa_nas.printable import printable
from sqa_nas.search.figures import RunStats
from sqa_nas.search.records import TrialRecord

# Trial number, state, highest rung and the decision there of every trial: a reload that
# changes none of them (nor the runs' figures nor the study attrs the view reads) redraws
# nothing. A paused trial's promotion changes its rung's decision, not its state (RUNNING).
Signature = tuple[tuple[int, str, int, str], ...]
VIEW_ATTRS = ("noise", "confirm", "space")  # the study attrs a `StudyView` reads
# Screen rows: below this the search panel keeps its key rows only and moves beside the
# scatter, over the trial's detail, so that at 80x24 the scatter keeps 10 plot rows and its
# axes and the table 5 trials.
COMPACT_BELOW = 40
# Screen rows from which a multi-fidelity study's rung ladder has a panel under the scatter
# (which keeps about 8 plot rows at 48); below, it is one line of the search panel.
LADDER_PANEL_FROM = 48


class Dashboard(App):
    """The terminal app: Pareto scatter, trial detail, search progress and the trials table
    of one `Source`, reloaded every `refresh_s` seconds; keys in `BINDINGS`."""

    TITLE = "sqa-nas dashboard"
    CSS = """
    #top { height: 3fr; min-height: 16; }
    #left { width: 3fr; }
    #right { width: 2fr; }
    #scatter { border: round $primary; border-subtitle-align: left; }
    #ladder { height: auto; padding: 0 1; border: round $secondary; }
    #detail-box { border: round $secondary; }
    #progress, #progress-side { height: auto; padding: 0 1; border: round $secondary; }
    #progress { max-height: 16; }
    #progress-side { display: none; }
    #trials { height: 2fr; min-height: 8; border: round $secondary; }
    .compact #top { height: 1fr; min-height: 14; }
    .compact #progress { display: none; }
    .compact #progress-side { display: block; }
    .compact #trials { height: 8; border-bottom: none; }
    """
    BINDINGS = [
        Binding("x", "next_axis(0)", "x axis"),
        Binding("y", "next_axis(1)", "y axis"),
        Binding("p", "toggle_front", "Pareto only"),
        Binding("s", "sort(False)", "sort"),
        Binding("S", "sort(True)", "reverse", show=False),
        Binding("k", "knee", "knee"),
        Binding("b", "best", "best pick"),
        Binding("g", "gpu", "GPU filter"),
        Binding("e", "export", "export"),
        Binding("r", "reload", "reload"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(
        self,
        source: Source,
        *,
        records: list[TrialRecord] | None = None,
        axes: tuple[str, str] | None = None,
        gpu_type: str | None = None,
        pick: str | None = None,
        refresh_s: float = 2.0,
        export_dir: str | Path = "exports",
    ):
        super().__init__()
        self.source = source
        self.records = records if records is not None else source.records()
        self.runs = source.runs()
        self.attrs = _view_attrs(source.study_attrs())
        self.signature: Signature = _signature(self.records)
        self.gpu_type = gpu_type
        self.view = self._make_view()
        self.axes = axes or self.view.default_axes()
        self.front_only = False
        self.sort_key, self.sort_reverse = "number", False
        self.selected: int | None = None
        self.initial_pick = pick
        self.pick_index = -1
        self.refresh_s = refresh_s
        self.export_dir = Path(export_dir)
        self.reloads = 0  # reads of the storage that changed something (tests watch it)
        self._loading = False

    def _make_view(self) -> StudyView:
        return StudyView(
            self.records,
            self.source.objectives,
            self.source.directions,
            gpu_type=self.gpu_type,
            now=datetime.now(),  # Optuna's clock
            runs=self.runs,
            study_attrs=self.attrs,
        )

    # ---------------------------------------------------------------------------- layout
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="top"):
            with Vertical(id="left"):
                yield Scatter(id="scatter")
                yield Static(id="ladder")
            with Vertical(id="right"):
                yield Static(id="progress-side")  # the search panel on a short screen
                with VerticalScroll(id="detail-box"):
                    yield Static(id="detail")
        yield Static(id="progress")
        yield TrialTable(id="trials")
        yield Footer()

    def on_mount(self) -> None:
        self.title = printable(f"sqa-nas · {self.source.name}")  # Textual shows these plain
        self.sub_title = printable(self.source.where)
        self.query_one("#scatter").border_title = "Pareto front"
        self.query_one("#detail-box").border_title = "trial"
        self.query_one("#progress").border_title = "search"
        self.query_one("#progress-side").border_title = "search"
        self.redraw()
        if self.initial_pick:
            self.apply_pick(self.initial_pick)
        self.set_interval(self.refresh_s, self.action_reload)
        self.query_one(TrialTable).focus()

    # ---------------------------------------------------------------------------- reload
    def action_reload(self) -> None:
        """Start a background reload unless one is in flight (also run every `refresh_s`)."""
        if not self._loading:
            self._loading = True
            self._load()

    @work(thread=True, group="reload")
    def _load(self) -> None:
        """Read the storage and build the new view here, off the UI thread: the Pareto
        front, every row's table cells and the progress panel are the slow part at
        thousands of trials, and the UI keeps answering keys meanwhile."""
        try:
            records, runs = self.source.records(), self.source.runs()
            attrs = _view_attrs(self.source.study_attrs())
        except Exception as exc:  # a locked or vanished database: say so, keep the old data
            self.call_from_thread(
                self.notify, printable(f"reload failed: {exc}"), severity="warning", markup=False
            )
            records, runs, attrs = None, self.runs, self.attrs
        view = None
        if records is not None and (
            _signature(records) != self.signature or runs != self.runs or attrs != self.attrs
        ):
            view = StudyView(
                records,
                self.source.objectives,
                self.source.directions,
                gpu_type=self.gpu_type,
                now=datetime.now(),
                runs=runs,
                study_attrs=attrs,
            )
            view.sorted_records(self.sort_key, self.sort_reverse, front_only=self.front_only)
            view.progress(self.axes)
        self.call_from_thread(self._loaded, records, runs, attrs, view)

    def _loaded(
        self,
        records: list[TrialRecord] | None,
        runs: list[RunStats],
        attrs: dict[str, Any],
        view: StudyView | None,
    ) -> None:
        self._loading = False
        if records is None or view is None:
            return
        self.records, self.signature, self.runs = records, _signature(records), runs
        self.attrs = attrs
        # The GPU filter may have changed while the worker built the view.
        self.view = view if view.gpu_type == self.gpu_type else self._make_view()
        self.reloads += 1
        self.redraw()

    # ---------------------------------------------------------------------------- drawing
    def redraw(self) -> None:
        """Redraw the table, the progress panel and the selection from `view`."""
        self.fill_table()
        self.draw_progress()
        self.draw_selection()

    def rows(self) -> list[TrialRecord]:
        """The table's rows in the current sort, Pareto-only when that filter is on."""
        return self.view.sorted_records(
            self.sort_key, self.sort_reverse, front_only=self.front_only
        )

    def fill_table(self) -> None:
        """Refill the table (sort arrow on the sorted column), keeping the selection when shown."""
        table = self.query_one(TrialTable)
        labels = [
            c.label + ((" ▼" if self.sort_reverse else " ▲") if c.key == self.sort_key else "")
            for c in self.view.columns
        ]
        table.set_rows(self.view, self.rows(), labels=labels, select=self.selected)
        self.selected = table.selected.number if table.selected else None
        table.border_title = Text(
            f"{len(table.records)} trials" + (" on the Pareto front" if self.front_only else "")
        )

    def draw_progress(self) -> None:
        """The search panel and the rung ladder's panel: on a short screen (`COMPACT_BELOW`
        rows) the search panel's key rows only; below `LADDER_PANEL_FROM` rows the ladder
        is one line of the search panel, not a panel."""
        title = self.source.name + (" · Pareto only" if self.front_only else "")
        rows = self.size.height or LADDER_PANEL_FROM  # 0 before the first layout
        panel = bool(self.view.ladder) and rows >= LADDER_PANEL_FROM
        compact = rows < COMPACT_BELOW
        self.screen.set_class(compact, "compact")
        self.query_one("#progress-side" if compact else "#progress", Static).update(
            render.summary(
                self.view,
                self.view.progress(self.axes),
                title=title,
                compact=compact,
                rungs=not panel,
            )
        )
        ladder = self.query_one("#ladder", Static)
        ladder.display = panel
        if panel:
            ladder.border_title = render.plain(render.ladder_title(self.view))
            ladder.update(render.ladder_text(self.view, no_wrap=True, overflow="ellipsis"))

    def on_resize(self, event: events.Resize) -> None:
        """Redraw the search and ladder panels: the screen's height decides what shows."""
        if self.query("#progress"):  # composed
            self.draw_progress()

    def draw_selection(self) -> None:
        """Show the selected trial's detail and mark it on the scatter."""
        r = self.view.by_number.get(self.selected) if self.selected is not None else None
        self.query_one("#detail", Static).update(render.detail(self.view, r))
        self.query_one(Scatter).show(self.view, self.axes, self.selected)

    def select(self, number: int) -> None:
        """Select a trial, showing it in the table (leaving Pareto-only if needed)."""
        self.selected = number
        table = self.query_one(TrialTable)
        if not table.move_to(number):
            self.front_only = False
            self.fill_table()
        self.draw_selection()

    def on_trial_table_highlighted(self, event: TrialTable.Highlighted) -> None:
        if event.number != self.selected:
            self.selected = event.number
            self.draw_selection()

    def on_trial_table_header_selected(self, event: TrialTable.HeaderSelected) -> None:
        """A click on a header sorts by that column; on the sorted one it reverses the order."""
        self.sort_reverse = not self.sort_reverse if event.key == self.sort_key else False
        self.sort_key = event.key
        self.fill_table()

    # ---------------------------------------------------------------------------- actions
    def action_next_axis(self, which: int) -> None:
        """Move axis `which` (0: x, 1: y) to the next metric, skipping the other axis's (with
        only two metrics the axes swap)."""
        axes = self.view.axes
        other = self.axes[1 - which]
        i = axes.index(self.axes[which]) if self.axes[which] in axes else -1
        for step in range(1, len(axes) + 1):
            candidate = axes[(i + step) % len(axes)]
            if candidate != other or len(axes) == 1:
                break
        new = list(self.axes)
        new[which] = candidate
        if candidate == other:  # two axes only: swap them
            new[1 - which] = self.axes[which]
        self.axes = (new[0], new[1])
        self.draw_progress()
        self.draw_selection()

    def action_toggle_front(self) -> None:
        self.front_only = not self.front_only
        self.fill_table()
        self.draw_progress()
        self.notify(
            "showing the Pareto front only" if self.front_only else "showing all trials", timeout=2
        )

    def action_sort(self, reverse: bool) -> None:
        """Sort by the next column, or with `reverse` flip the current order."""
        keys = [c.key for c in self.view.columns]
        if reverse:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_key = keys[(keys.index(self.sort_key) + 1) % len(keys)]
            self.sort_reverse = False
        self.fill_table()

    def action_knee(self) -> None:
        self.apply_pick("knee")

    def action_best(self) -> None:
        """Select the trial of the next picker in `StudyView.picker_specs` (after the knee)."""
        specs = self.view.picker_specs()[1:]
        self.pick_index = (self.pick_index + 1) % len(specs)
        self.apply_pick(specs[self.pick_index])

    def apply_pick(self, spec: str) -> None:
        """Select the trial picker `spec` names; when it finds none, say so in a notice."""
        try:
            r = self.view.pick(spec, self.axes)
        except UserError as exc:
            self.notify(printable(exc), severity="warning", markup=False)
            return
        self.select(r.number)
        self.notify(printable(f"{spec}: trial #{r.number}"), timeout=3, markup=False)

    def action_gpu(self) -> None:
        """Cycle the GPU filter: all trials, then each GPU type in turn."""
        choices = [None] + self.view.gpu_types
        self.gpu_type = choices[(choices.index(self.gpu_type) + 1) % len(choices)]
        self.view = self._make_view()
        self.redraw()
        self.notify(printable(f"GPU type: {self.gpu_type or 'all'}"), timeout=2, markup=False)

    def action_export(self) -> None:
        """Export the selected trial to `export_dir` in a background thread."""
        r = self.view.by_number.get(self.selected) if self.selected is not None else None
        if r is None:
            self.notify("select a trial to export", severity="warning")
            return
        export = _export_function()
        if export is None:
            self.notify(
                "export is not available in this sqa-nas (no sqa_nas.export.export_trial)",
                severity="warning",
            )
            return
        if self.source.study is None:
            self.notify("export needs a study in a storage", severity="warning")
            return
        out = self.export_dir / f"{self.source.name}-trial{r.number}"
        self.notify(printable(f"exporting trial #{r.number} to {out} …"), timeout=3, markup=False)
        self._export(export, r, out)

    @work(thread=True, group="export")
    def _export(self, export, r: TrialRecord, out: Path) -> None:
        try:
            path = export(self.source.study, r, out)
        except Exception as exc:  # shown, not raised: the dashboard keeps running
            self.call_from_thread(
                self.notify,
                printable(f"export of trial #{r.number} failed: {exc}"),
                severity="error",
                timeout=10,
                markup=False,
            )
            return
        self.call_from_thread(
            self.notify,
            printable(f"exported trial #{r.number} to {path}"),
            timeout=10,
            markup=False,
        )


def _export_function():
    """`sqa_nas.export.export_trial` when that package provides it."""
    if importlib.util.find_spec("sqa_nas.export") is None:
        return None
    return getattr(importlib.import_module("sqa_nas.export"), "export_trial", None)


def _signature(records: list[TrialRecord]) -> Signature:
    def rung(r: TrialRecord) -> tuple[int, str]:
        last = last_rung(r)
        return (-1, "") if last is None else (last.rung, last.decision)

    return tuple((r.number, r.state, *rung(r)) for r in records)


def _view_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The study attrs the view reads (`VIEW_ATTRS`): a reload compares them."""
    return {k: attrs[k] for k in VIEW_ATTRS if k in attrs}
