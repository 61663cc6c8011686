"""What a search shows while it runs (`SearchProgress`, drawn by `Driver.run`).

On a terminal, a live panel: a `rich.progress` bar of trials evaluated / ``n_trials`` (or of
the time budget, when ``budget.max_wall_seconds`` ends the run first at this run's pace),
the elapsed time and the ETA; the tokens trained and the rates (trials/h, tokens/s); the
trials by state (complete, running, failed, pruned, infeasible, repeats told, paused at a
rung); the executor and storage; the best values and the size of the Pareto front; the
noise floor and the rung ladder once there are; and one row per running trial (where,
step, loss, elapsed). Elsewhere (a pipe, a log file) the same figures as one plain line
when the evaluated count changes and at least once a minute: no control characters.

Rates are this run's: a resumed study's trials do not make it look faster (`Pace`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import optuna
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from sqa_nas.progress import Clock, Pace, clock_time, log_line, rate_text
from sqa_nas.search.executors.base import Executor
from sqa_nas.search.noise import Noise
from sqa_nas.search.pareto import pareto_front
from sqa_nas.search.records import TrialRecord, trial_records
from sqa_nas.search.space import SearchSpec

BAR_WIDTH = 30
PLAIN_EVERY_S = 60.0  # off a terminal: a line at least this often, and when a trial is told


@dataclass(frozen=True)
class Status:
    """The search at one moment: `trials` (evaluated of n_trials, this run's pace),
    `tokens` trained in the study (running trials' steps included) and this run's tokens
    per second, the seconds the time budget has left (None: no time budget), and which
    budget ends the run first at this pace (``"n_trials"`` or ``"time"``)."""

    trials: Pace
    tokens: int
    tokens_per_s: float | None
    time_left: float | None
    limit: str

    @property
    def eta(self) -> float | None:
        """Seconds until the limiting budget is reached (None: not known yet)."""
        return self.time_left if self.limit == "time" else self.trials.eta

    def eta_text(self) -> str:
        """``ETA 0:12:00 (n_trials)``, ``ETA 0:05:00 (time budget)``, ``done`` or ``ETA -``."""
        if self.limit == "n_trials" and self.trials.eta == 0:
            return "done"
        eta = self.eta
        return "ETA -" if eta is None else f"ETA {clock_time(eta)} ({self._limit_name})"

    @property
    def _limit_name(self) -> str:
        return "time budget" if self.limit == "time" else "n_trials"

    def rates(self) -> str:
        """``1,234,567 tokens trained, 4.1 trials/h, 2,345 tokens/s`` (``-`` for a rate not
        known yet)."""
        per_s = "-" if self.tokens_per_s is None else f"{self.tokens_per_s:,.0f}"
        return (
            f"{self.tokens:,} tokens trained, {rate_text(self.trials.rate, 'trials')}, "
            f"{per_s} tokens/s"
        )


class SearchProgress:
    """The search's progress on `console` while the ``with`` block runs: a transient
    `rich.live.Live` panel on a terminal, else plain lines (see the module's docstring).
    `update` is called with the study's counts (`study.trial_counts`) and the study.

    Args:
        spec: the search space (study name, objectives, directions, tokens per step).
        executor: where trials run: its `running` trials get a row each.
        url: the storage URL, shown under the bar.
        n_trials: the trial budget.
        max_wall_seconds: the time budget of this run, or None.
        console: where it is drawn.
        clock: seconds, monotonic (tests give their own).
    """

    def __init__(
        self,
        spec: SearchSpec,
        executor: Executor,
        url: str,
        n_trials: int,
        max_wall_seconds: float | None = None,
        *,
        console: Console,
        clock: Clock = time.monotonic,
    ) -> None:
        self.spec, self.executor, self.url = spec, executor, url
        self.n_trials, self.max_wall_seconds = n_trials, max_wall_seconds
        self.console, self.clock = console, clock
        self.tokens_per_step = spec.budget.train.batch_size * spec.model.seq_len
        self.started = self._last_line = clock()
        self._before: tuple[int, int] | None = None  # (evaluated, tokens) when the run began
        self._line_done = -1  # the evaluated count of the last plain line
        self._seen: dict[int, tuple[int, int]] = {}  # trial -> (last step, steps before it)
        self._finished: dict[int, TrialRecord] = {}  # finished trials' records: read once
        self._live: Live | None = None
        # A bar drawn inside the panel (never started on its own): rich's columns, our pace.
        self._bar = Progress(
            TextColumn("{task.description}", markup=False, style="bold"),
            BarColumn(bar_width=BAR_WIDTH),
            TextColumn("{task.fields[count]}", markup=False),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}", markup=False),
            console=console,
            get_time=clock,
        )
        self._task = self._bar.add_task(spec.study_name, total=n_trials, count="", eta="")

    def __enter__(self) -> SearchProgress:
        self.started = self._last_line = self.clock()
        self._bar.reset(self._task, total=self.n_trials)
        if self.console.is_terminal:
            self._live = Live(
                self.panel({}, None), console=self.console, refresh_per_second=4, transient=True
            )
            self._live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()

    def update(self, counts: Mapping[str, int], study: optuna.Study | None) -> None:
        """Redraw the panel, or print a plain line when the evaluated count changed or
        `PLAIN_EVERY_S` passed since the last one (nothing before the study is open)."""
        if self._live is not None:
            self._live.update(self.panel(counts, study))
            return
        if study is None:
            return
        now = self.clock()
        if counts.get("counted", 0) != self._line_done or now - self._last_line >= PLAIN_EVERY_S:
            self._last_line, self._line_done = now, counts.get("counted", 0)
            log_line(self.console, self.line(counts, self.records(study)))

    # ------------------------------------------------------------------------ figures
    def records(self, study: optuna.Study) -> list[TrialRecord]:
        """The study's trials as records, each refresh: a finished trial's record is read
        once and kept, so a refresh reads only the trials that are new or still running."""
        return trial_records(study, self._finished)

    def status(self, counts: Mapping[str, int], records: list[TrialRecord]) -> Status:
        """The figures of this moment (the first call, with the study open, sets the counts
        this run started from)."""
        done, tokens = counts.get("counted", 0), self.tokens_trained(records)
        if self._before is None and counts:  # counts: {} before the study is open
            self._before = (done, tokens)
        before = self._before or (done, tokens)
        elapsed = self.clock() - self.started
        trials = Pace(self.n_trials, done, elapsed, done_before=before[0])
        new_tokens = tokens - before[1]
        time_left = (
            None if self.max_wall_seconds is None else max(0.0, self.max_wall_seconds - elapsed)
        )
        by_trials = trials.eta
        limit = (
            "time"
            if time_left is not None and (by_trials is None or time_left < by_trials)
            else "n_trials"
        )
        return Status(
            trials,
            tokens,
            new_tokens / elapsed if new_tokens > 0 and elapsed > 0 else None,
            time_left,
            limit,
        )

    def tokens_trained(self, records: list[TrialRecord]) -> int:
        """Training tokens of every trial: its record's (times its seeds: a trial trained
        with several records one seed's tokens), or for a trial running here what its steps
        say when that is more. A running trial's step starts again with each seed and, once
        promoted, goes on from its checkpoint's: the steps are summed across restarts, and
        the larger of that and its record is its total."""
        running = {
            n: self._steps(n, r.progress) * self.tokens_per_step
            for n, r in self.executor.running.items()
        }
        total = 0
        for r in records:
            recorded = (r.metrics.train_tokens or 0) * max(1, len(r.typed.seeds))
            total += max(recorded, running.pop(r.number, 0))
        return total + sum(running.values())

    def _steps(self, number: int, progress: Mapping[str, Any]) -> int:
        """Steps trial `number` has trained in all, its progress's `step` summed across
        restarts (a step lower than the last one seen: the next seed began)."""
        step = int(progress.get("step", 0))
        last, before = self._seen.get(number, (0, 0))
        if step < last:
            before += last
        self._seen[number] = (step, before)
        return before + step

    def line(self, counts: Mapping[str, int], records: list[TrialRecord]) -> str:
        """The plain line: evaluated of n_trials, the trials by state, tokens and rates,
        elapsed, ETA and which budget ends the run, the front's size."""
        s = self.status(counts, records)
        front = pareto_front(records, self.spec.objectives)
        return (
            f"progress: {s.trials.done}/{self.n_trials} evaluated ({_states(counts)}) | "
            f"{s.rates()} | {clock_time(s.trials.elapsed)} elapsed, {s.eta_text()} | "
            f"Pareto front: {len(front)} trials"
        )

    # ------------------------------------------------------------------------ the panel
    def panel(self, counts: Mapping[str, int], study: optuna.Study | None) -> Group:
        """The live panel (header lines, the bar, the running trials' table)."""
        records = self.records(study) if study is not None else []
        s = self.status(counts, records)
        time_bar = s.limit == "time" and self.max_wall_seconds is not None
        self._bar.update(
            self._task,
            total=self.max_wall_seconds if time_bar else self.n_trials,
            completed=s.trials.elapsed if time_bar else min(s.trials.done, self.n_trials),
            count=(
                f"{s.trials.done} evaluated, time budget {clock_time(s.trials.elapsed)} of "
                f"{clock_time(self.max_wall_seconds or 0)}"
                if time_bar
                else f"{s.trials.done}/{self.n_trials} evaluated"
            ),
            eta=s.eta_text(),
        )
        lines: list[Text | Progress | Table] = [
            self._bar,
            Text(f"{_states(counts)} | {s.rates()}"),
            Text(f"{self.executor.describe()} | storage {self.url}", style="dim"),
        ]
        if study is not None:
            lines.append(Text(self._best(records)))
            noise = Noise.read(study.user_attrs)
            if noise.n >= 2:
                lines.append(Text(f"noise floor: {noise.describe()}", style="dim"))
            rungs = _rungs(records)
            if rungs:
                lines.append(Text(f"rungs: {rungs}", style="dim"))
        lines.append(self._running())
        return Group(*lines)

    def _best(self, records: list[TrialRecord]) -> str:
        front = pareto_front(records, self.spec.objectives)
        best = []
        for o, d in zip(self.spec.objectives, self.spec.directions):
            vals = [r.values[o] for r in records if r.values and r.feasible]
            if vals:
                best.append(f"{o} {(min if d == 'minimize' else max)(vals):.4g}")
        return f"best: {', '.join(best) or '-'} | Pareto front: {len(front)} trials"

    def _running(self) -> Table:
        running = self.executor.running
        table = Table(box=None, padding=(0, 1), show_header=bool(running))
        for col in ("trial", "where", "step", "loss", "elapsed"):
            table.add_column(col)
        for number, r in sorted(running.items()):
            p = r.progress
            of = p.get("of", -1)
            step = f"{p['step']}/{of}" if of > 0 else str(p.get("step", "-"))
            table.add_row(
                str(number),
                Text(r.where),
                step,
                f"{p['loss']:.3f}" if "loss" in p else "-",
                f"{time.monotonic() - r.started:.0f}s",
            )
        return table


def _states(counts: Mapping[str, int]) -> str:
    """``complete 2, running 1, failed 0, pruned 0, infeasible 0``, then repeats told and
    trials paused at a rung when there are some."""
    text = ", ".join(
        f"{label} {counts.get(key, 0)}"
        for key, label in (
            ("complete", "complete"),
            ("running", "running"),
            ("failed", "failed"),
            ("pruned", "pruned"),
            ("infeasible", "infeasible"),
        )
    )
    if counts.get("duplicates"):
        text += f", repeats told {counts['duplicates']}"
    if counts.get("paused"):
        text += f", paused at a rung {counts['paused']}"
    return text


def _rungs(records: list[TrialRecord]) -> str:
    """The multi-fidelity ladder in a few words: trials that reached each rung, first to
    top (``11 -> 7 -> 4 reached``); empty without rungs. Repeats of a layout are left out,
    as in the dashboard's ladder."""
    reached = Counter(
        x.rung for r in records if r.typed.duplicate_of is None for x in r.typed.rungs
    )
    if not reached:
        return ""
    return " -> ".join(str(reached[k]) for k in range(max(reached) + 1)) + " reached"
