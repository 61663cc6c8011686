"""What the dashboard shows, computed once per reload from the study's records: the front,
the per-trial columns, the search's progress. No rich or Textual here, so the interactive
app, `--once`, `--json` and `--png` all read the same numbers.

A `Source` yields the records and the study's user attrs: `StorageSource` reads an Optuna
storage (and re-reads it on every refresh; Optuna's cached storage only re-fetches unfinished
trials), `MemorySource` holds a list (tests, benchmarks of the renderer).

The front is read against the study's noise floor (`sqa_nas.search.noise`): the view keeps
the `Verdict` (resolved or not, the trials within noise of the front), each point's error
bars (`spread.error_bar`) and the study's `sqa-nas confirm` results. A study searched with the
multi-fidelity scheduler also has its rung ladder (`ladder.ladder`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from sqa_nas.dashboard.ladder import RungRow, ladder, planned, state_label
from sqa_nas.dashboard.spread import TIMED, Bar, error_bar, noisy_note
from sqa_nas.errors import UserError
from sqa_nas.printable import printable
from sqa_nas.search.confirm import Confirmation
from sqa_nas.search.figures import RunStats, run_stats
from sqa_nas.search.noise import Noise, assess
from sqa_nas.search.pareto import hypervolume_history, pick
from sqa_nas.search.records import (
    OBJECTIVES,
    TrialRecord,
    finite,
    load_study,
    objective_names,
    of_gpu_type,
    trial_records,
)
from sqa_nas.search.storage import default_storage
from sqa_nas.search.study_attrs import read_study_attrs

# metric name -> where a trial stores it when it is not one of the study's objectives
_ANALYTICS = {
    "kv_cache_bytes": "kv_cache_bytes_per_token",
    "params": "params",
    "attention_flops": "attention_flops_per_token",
    "speedup_vs_mha": "analytic_speedup_vs_mha",
}


class Source:
    """Where records come from. `study` is the Optuna study when there is one (export)."""

    name: str
    where: str
    objectives: list[str]
    directions: list[str]
    study: Any = None

    def records(self) -> list[TrialRecord]:
        """Every trial, read afresh."""
        raise NotImplementedError

    def runs(self) -> list[RunStats]:
        """The figures of the search runs, oldest first (none by default)."""
        return []

    def study_attrs(self) -> dict[str, Any]:
        """The study's user attrs, read afresh (``noise``, ``confirm``, ...; none by default)."""
        return {}


class StorageSource(Source):
    """The trials of a study in an Optuna storage (default: its ``runs/<name>/study.db``)."""

    def __init__(self, name: str, storage: str | None = None):
        self.name = name
        self.where = storage or default_storage(name)
        self.study = load_study(name, storage)  # UserError: unknown study or storage
        self.objectives = objective_names(self.study)
        self.directions = [d.name.lower() for d in self.study.directions]
        if len(self.objectives) != len(self.directions):
            raise UserError(
                f"study {name!r} in {self.where} names {len(self.objectives)} "
                f"objectives but has {len(self.directions)} directions"
            )

    def records(self) -> list[TrialRecord]:
        return trial_records(self.study)

    def runs(self) -> list[RunStats]:
        """The study's run records, read afresh (`read_study_attrs`)."""
        return run_stats(read_study_attrs(self.study, self.where).runs)

    def study_attrs(self) -> dict[str, Any]:
        return read_study_attrs(self.study, self.where).as_attrs()


class MemorySource(Source):
    """Trials already in memory, with their objectives (directions default to the known ones)
    and the study attrs to show (e.g. ``{"noise": {...}}``; none: the noise is unmeasured)."""

    def __init__(
        self,
        name: str,
        objectives: Sequence[str],
        records: list[TrialRecord],
        directions: Sequence[str] | None = None,
        runs: Sequence[RunStats] = (),
        attrs: Mapping[str, Any] | None = None,
    ):
        self.name, self.where = name, "memory"
        self.objectives = list(objectives)
        self.directions = list(directions or [OBJECTIVES[o] for o in objectives])
        self._records, self._runs = records, list(runs)
        self._attrs = dict(attrs or {})

    def records(self) -> list[TrialRecord]:
        return list(self._records)

    def runs(self) -> list[RunStats]:
        return list(self._runs)

    def study_attrs(self) -> dict[str, Any]:
        return dict(self._attrs)


@dataclass(frozen=True)
class Column:
    """A column of the trials table: its label, its cell text and its sort key."""

    key: str
    label: str
    value: Callable[[TrialRecord], Any]  # a number or a string; None sorts last
    text: Callable[[Any], str]
    note: Callable[[TrialRecord], str] | None = None  # appended to the cell's text


@dataclass(frozen=True)
class Progress:
    """The progress panel's figures: state counts, trial rate and the hypervolume history."""

    counts: Counter
    per_hour: float | None  # finished trials per hour since the first trial started
    last_hour: int  # trials finished in the last hour (of the search, once it has stopped)
    hypervolume: list[float]  # after each completed trial, normalised to [0, 1]
    hv_axes: tuple[str, str] | None


class StudyView:
    """The records of one reload, optionally restricted to one GPU type, and everything the
    dashboard derives from them; `run` is the last search run's figures (`Source.runs`),
    None before any run recorded them. `study_attrs` (`Source.study_attrs`) gives the
    study's noise floor (`noise`, unmeasured without one), hence the front's `verdict`, and
    its `confirmation` (None until `sqa-nas confirm` ran); its ``space`` the planned rung
    ladder (`schedule`: the scheduler and its tokens, None unless ``mo_asha``), whence
    `ladder` ([] for a study without rungs)."""

    def __init__(
        self,
        records: Sequence[TrialRecord],
        objectives: Sequence[str],
        directions: Sequence[str],
        *,
        gpu_type: str | None = None,
        now: datetime | None = None,
        runs: Sequence[RunStats] = (),
        study_attrs: Mapping[str, Any] | None = None,
    ):
        self.run = runs[-1] if runs else None
        self.all_records = list(records)
        self.records, self.gpu_types = of_gpu_type(self.all_records, gpu_type)
        self.gpu_type = gpu_type
        self.objectives = list(objectives)
        self.directions = list(directions)
        attrs = study_attrs or {}
        self.noise = Noise.read(attrs)
        self.confirmation = Confirmation.read(attrs)
        self.schedule = planned(attrs.get("space"))
        self.ladder: list[RungRow] = ladder(
            self.records, self.schedule[1] if self.schedule else ()
        )
        self.verdict = assess(self.records, self.objectives, self.noise, self.directions)
        self.front = self.verdict.front
        self.front_numbers = {r.number for r in self.front}
        self.close_numbers = {r.number for r in self.verdict.indistinguishable}
        self.by_number = {r.number: r for r in self.records}
        self.now = now
        # per-view memos: a view lives for one reload, and redraws (axis switch, sort,
        # filter) must not recompute 5,000 rows
        self._cells: dict[int, tuple[list, list[str]]] = {}
        self._picks: dict[tuple, TrialRecord | UserError] = {}
        self._progress: dict[tuple, Progress] = {}

    # ------------------------------------------------------------------------- metrics
    @cached_property
    def axes(self) -> list[str]:
        """Metrics a scatter axis can show: the objectives first, then any other known
        metric that the trials record (e.g. KV cache when only loss and speed are searched)."""
        extra = [
            m
            for m in OBJECTIVES
            if m not in self.objectives
            and any(self.value(r, m) is not None for r in self.front or self.records)
        ]
        return self.objectives + extra

    def default_axes(self) -> tuple[str, str]:
        """(x, y): the second objective across, the first up (e.g. loss against speed)."""
        return (self.axes[1] if len(self.axes) > 1 else self.axes[0]), self.axes[0]

    def direction(self, metric: str) -> str:
        """ "minimize" or "maximize" for `metric`: the study's direction for an objective, else
        the known one (minimize when unknown)."""
        if metric in self.objectives:
            return self.directions[self.objectives.index(metric)]
        return OBJECTIVES.get(metric, "minimize")

    def value(self, r: TrialRecord, metric: str) -> float | None:
        """An objective's value, else the trial's measured metric, else its analytic cost."""
        key = _ANALYTICS.get(metric)
        for value in (
            (r.values or {}).get(metric),
            r.metrics.value(metric),
            r.analytics.value(key) if key else None,
        ):
            if finite(value):
                return float(value)
        return None

    def points(self, x: str, y: str) -> list[tuple[TrialRecord, float, float]]:
        """Completed, feasible trials with finite values on both axes; a repeat of another
        trial's layout (``duplicate_of``) is not a point of its own."""
        out = []
        for r in self.records:
            if r.state != "COMPLETE" or not r.feasible or r.typed.duplicate_of is not None:
                continue
            vx, vy = self.value(r, x), self.value(r, y)
            if vx is not None and vy is not None:
                out.append((r, vx, vy))
        return out

    def on_front(self, r: TrialRecord) -> bool:
        """Whether `r` is on the Pareto front of the objectives."""
        return r.number in self.front_numbers

    def within_noise(self, r: TrialRecord) -> bool:
        """Whether `r` is off the front but indistinguishable from it (`Verdict`)."""
        return r.number in self.close_numbers

    def error_bar(self, r: TrialRecord, metric: str, value: float) -> Bar | None:
        """The +-2 sigma bar of `r` at `value` on `metric` (`spread.error_bar`)."""
        return error_bar(r, metric, value, self.noise)

    def standing(self, r: TrialRecord) -> str:
        """The front column: ★ on the front, ≈ within noise of it, '= trial N' for a repeat
        of trial N's layout (told its values), else empty."""
        if self.on_front(r):
            return "★"
        if self.within_noise(r):
            return "≈"
        original = r.typed.duplicate_of
        return "" if original is None else f"= trial {original}"

    # ------------------------------------------------------------------------- columns
    @cached_property
    def columns(self) -> list[Column]:
        """The trials table's columns: number, state (with the rung of a trial the scheduler
        stopped or paused), front, seed, the objectives, cost columns not already objectives,
        GPU and allocation."""

        def metric(m):
            return lambda r: self.value(r, m)

        def noisy(m):  # ' ±7%' after a timed figure whose interval stayed wide
            return (lambda r: noisy_note(r, m)) if m in TIMED else None

        cols = [
            Column("number", "#", lambda r: r.number, str),
            Column("state", "state", state_label, str),  # "PRUNED r1": stopped at rung 1
            Column("front", "front", self.standing, str),
            Column("seed", "seed", lambda r: r.seed_variant or "", str),
        ]
        cols += [
            Column(o, objective_label(o, d), metric(o), fmt_number, noisy(o))
            for o, d in zip(self.objectives, self.directions)
        ]
        cols += [
            Column(m, label, metric(m), text, noisy(m))
            for m, label, text in (
                ("params", "params", fmt_number),
                ("kv_cache_bytes", "KV B/token", fmt_number),
                ("speedup_vs_mha", "× MHA", lambda v: "" if v is None else f"{v:.2f}x"),
            )
            if m not in self.objectives
        ]
        cols += [
            Column("gpu", "GPU", lambda r: r.gpu_type or "", str),
            Column("allocation", "allocation", lambda r: r.allocation, str),
        ]
        return cols

    def cells(self, r: TrialRecord) -> tuple[list, list[str]]:
        """A trial's values and texts for `columns`, computed once per view; the texts are
        `printable` (a study's strings go to the terminal as they are shown here)."""
        got = self._cells.get(r.number)
        if got is None:
            values = [c.value(r) for c in self.columns]
            texts = [
                c.text(v) + (c.note(r) if c.note else "") for c, v in zip(self.columns, values)
            ]
            got = self._cells[r.number] = (values, [printable(t) for t in texts])
        return got

    def sorted_records(
        self, column: str = "number", reverse: bool = False, *, front_only: bool = False
    ) -> list[TrialRecord]:
        """Rows for the table; missing values sort last whatever the direction."""
        i = [c.key for c in self.columns].index(column)
        rows = [(self.cells(r)[0][i], r) for r in (self.front if front_only else self.records)]
        present = [(v, r.number, r) for v, r in rows if v is not None]
        present.sort(key=lambda t: t[:2], reverse=reverse)
        return [r for _, _, r in present] + [r for v, r in rows if v is None]

    # ------------------------------------------------------------------------- pickers
    def picker_specs(self) -> list[str]:
        """Pickers the dashboard cycles through: the knee, the best of each objective, and the
        best of each within 1% of the best of another."""
        specs = ["knee"] + [f"best:{o}" for o in self.objectives]
        specs += [
            f"best:{a}:within={b}+1%" for a in self.objectives for b in self.objectives if a != b
        ]
        return specs

    def pick(self, spec: str, axes: Sequence[str] | None = None) -> TrialRecord:
        """The trial a picker spec names (`sqa_nas.search.pareto.pick`). The knee is taken on
        `axes` when both are objectives (the pair on screen), else on the first two objectives."""
        objectives, directions = self.objectives, self.directions
        if (
            spec == "knee"
            and axes
            and all(a in self.objectives for a in axes)
            and len(set(axes)) == 2
        ):
            # in the study's order, so that swapping the axes does not change the answer
            objectives = [o for o in self.objectives if o in axes]
            directions = [self.direction(o) for o in objectives]
        memo = (spec, tuple(objectives))
        if memo not in self._picks:
            try:
                self._picks[memo] = pick(self.records, objectives, spec, directions)
            except UserError as exc:
                self._picks[memo] = exc
        got = self._picks[memo]
        if isinstance(got, UserError):
            raise got
        return got

    # ------------------------------------------------------------------------ progress
    def progress(self, axes: tuple[str, str] | None = None) -> Progress:
        """The progress figures, the hypervolume on `axes` when both are objectives (else the
        first two objectives); memoised per view."""
        memo = tuple(axes or ())
        if memo not in self._progress:
            self._progress[memo] = self._compute_progress(axes)
        return self._progress[memo]

    def _compute_progress(self, axes: tuple[str, str] | None) -> Progress:
        counts = Counter(r.state for r in self.records)
        starts = [r.datetime_start for r in self.records if r.datetime_start]
        ends = [r.datetime_complete for r in self.records if r.datetime_complete]
        per_hour, last_hour = None, 0
        if starts and ends:
            last = max(ends)
            newest = self.now if self.now and counts["RUNNING"] else last
            hours = (newest - min(starts)).total_seconds() / 3600
            per_hour = len(ends) / hours if hours > 0 else None
            last_hour = sum(1 for e in ends if (newest - e).total_seconds() <= 3600)
        hv_axes = self._hv_axes(axes)
        return Progress(
            counts, per_hour, last_hour, self.hypervolume(hv_axes) if hv_axes else [], hv_axes
        )

    def _hv_axes(self, axes: tuple[str, str] | None) -> tuple[str, str] | None:
        if axes and len(set(axes)) == 2 and all(a in self.objectives for a in axes):
            return axes
        return (self.objectives[0], self.objectives[1]) if len(self.objectives) >= 2 else None

    def hypervolume(self, axes: tuple[str, str]) -> list[float]:
        """Hypervolume of the front of `axes` after each completed trial, as a fraction of
        the box between the best and the worst values seen (1.0 = one trial best at both)."""
        directions = [self.direction(a) for a in axes]
        history = hypervolume_history(self.records, axes, directions)
        if not history:
            return []
        spans = []
        for a in axes:  # the history holds candidates: their values are always set
            vals = [r.values[a] for r, _ in history if r.values is not None]
            spans.append(max(vals) - min(vals))
        box = spans[0] * spans[1]
        return [area / box if box > 0 else 0.0 for _, area in history]


def objective_label(name: str, direction: str) -> str:
    """An objective's column label, with its arrow: "val_loss ↓" (`printable`: the name is
    the study's)."""
    return printable(f"{name} {'↓' if direction == 'minimize' else '↑'}")


def fmt_number(v: Any) -> str:
    """Compact numbers for narrow columns: 2.2905, 0.0012, 183.2k, 1.05M, 12.0G."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a >= 1e4:
        for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if a >= scale:
                return f"{v / scale:.4g}{unit}"
    if isinstance(v, int) or float(v).is_integer():
        return str(int(v))
    return f"{v:.5g}"
