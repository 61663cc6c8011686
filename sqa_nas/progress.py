"""Progress of long work, read the same way on a terminal and in a log.

`Pace` turns counts and a clock into a rate and the time left (the rate of this run only:
work done before it started, a resumed study's trials, does not make it look faster).
`Bar` shows `total` units of work (benchmark rows, experiment runs) as they are done: a
`rich.progress` bar (done / total, rate, elapsed, ETA) when its console is a terminal, and
otherwise a plain line now and then (``rows 3/12 (25%), 0:00:41 elapsed, 4.4 rows/min, ETA
0:02:03``), so a log holds no control characters. The search draws its own panel
(`sqa_nas.search.progress`) with the same `Pace` and the same words, and logs its lines
through `log_line`: `Console.log` on a terminal, unpadded stamped lines elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column

Clock = Callable[[], float]
PLAIN_GAP_S = 10.0  # plain lines: one when a unit is done, unless one was this recent


def clock_time(seconds: float) -> str:
    """Seconds as ``H:MM:SS`` (``2d 3:04:05`` past a day), as rich's progress columns show
    them."""
    s = max(0, round(seconds))
    days, s = divmod(s, 86400)
    text = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}d {text}" if days else text


def rate_text(per_second: float | None, unit: str) -> str:
    """A rate in the unit of time that keeps it readable: ``2.5 rows/s``, ``4.4 rows/min``,
    ``3.1 trials/h``; ``- UNIT/h`` when unknown."""
    if per_second is None:
        return f"- {unit}/h"
    for scale, per in ((1.0, "s"), (60.0, "min"), (3600.0, "h")):
        value = per_second * scale
        if value >= 1 or per == "h":
            return f"{value:,.0f} {unit}/{per}" if value >= 100 else f"{value:.3g} {unit}/{per}"
    raise AssertionError("unreachable: the last scale always returns")


def log_line(console: Console, text: str) -> None:
    """`text` (plain: never markup or emoji codes) as a time-stamped line: `Console.log` on
    a terminal (above a live display), else ``[12:34:56] text`` on one line however long,
    with no trailing spaces (`Console.log` pads its lines to the console's width: a log file
    fills with blanks)."""
    if console.is_terminal:
        console.log(text, markup=False, emoji=False, highlight=False)
    else:
        line = f"{time.strftime('[%X]')} {text}"
        console.print(line, markup=False, emoji=False, highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class Pace:
    """`done` of `total` units after `elapsed` seconds of this run, `done_before` of them
    done before it started (a resumed search's trials)."""

    total: int
    done: int
    elapsed: float
    done_before: int = 0

    @property
    def rate(self) -> float | None:
        """Units per second in this run; None until one is done (or no time has passed)."""
        new = self.done - self.done_before
        return new / self.elapsed if new > 0 and self.elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at this run's rate (0 when all is done; None while it is unknown)."""
        if self.done >= self.total:
            return 0.0
        rate = self.rate
        return None if rate is None else (self.total - self.done) / rate

    def eta_text(self) -> str:
        """``ETA 0:02:03``, ``done``, or ``ETA -`` while the rate is unknown."""
        eta = self.eta
        return "done" if eta == 0 else "ETA -" if eta is None else f"ETA {clock_time(eta)}"


class Bar:
    """`total` units of `unit` (a plural noun: "rows") done one after another, shown on
    `console` while the ``with`` block runs: a transient `rich.progress` bar on a terminal,
    else a plain line when the first unit starts, when a unit is done (at most one every
    `PLAIN_GAP_S` seconds) and when the last one is.

    `begin(label)` says what starts (the unit before it is done): the form of a callback
    called before each row, as `bench.run_grid`'s ``progress``; `advance()` counts a unit
    done, `update(done)` sets the count. `log(text)` prints a line above the bar (or in the
    log)."""

    def __init__(
        self,
        total: int,
        unit: str = "rows",
        *,
        console: Console | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.total, self.unit = total, unit
        self.console = console or Console(stderr=True)
        self.clock = clock
        self.done, self.label, self.started = 0, "", 0
        self._start = self._last_line = clock()
        self._lines = 0  # plain lines printed
        self._shown_done = -1  # `done` when the last plain line was printed
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> Bar:
        self._start = self._last_line = self.clock()
        if self.console.is_terminal:
            self._progress = Progress(  # what runs last, in the width the figures leave
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True)),
                console=self.console,
                expand=True,
                transient=True,
                get_time=self.clock,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=self.total, rate="", eta="")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
        elif kind is None and self._shown_done != self.done:
            self._plain()  # where it ended

    @property
    def pace(self) -> Pace:
        """The pace so far."""
        return Pace(self.total, self.done, self.clock() - self._start)

    def begin(self, label: str = "") -> None:
        """Unit `label` starts; the one started before it, if any, is done."""
        if self.started:
            self.done = min(self.total, self.done + 1)
        self.started += 1
        self.label = label
        self._show(changed=self.started > 1)

    def advance(self, label: str | None = None) -> None:
        """One unit is done (`label`: what shows next to the bar now)."""
        self.update(self.done + 1, label)

    def update(self, done: int, label: str | None = None) -> None:
        """`done` units are done, a count that may jump (a training loop reports every few
        steps); `label`: what shows next to the bar now. ``update(0)`` shows the bar before
        the first unit is done (off a terminal: the first line)."""
        self.done = max(0, min(self.total, done))
        if label is not None:
            self.label = label
        self._show(changed=True)

    def finish(self) -> None:
        """Every unit is done (the last `begin`'s too)."""
        self.done, self.label = self.total, ""
        self._show(changed=True)

    def log(self, text: str) -> None:
        """A line above the bar on a terminal, else one in the log (plain text, no markup)."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def line(self) -> str:
        """The plain line: ``rows 3/12 (25%), 0:00:41 elapsed, 4.4 rows/min, ETA 0:02:03``
        and what runs now."""
        pace = self.pace
        share = f" ({pace.done / self.total:.0%})" if self.total else ""
        text = (
            f"{self.unit} {pace.done}/{self.total}{share}, {clock_time(pace.elapsed)} elapsed, "
            f"{rate_text(pace.rate, self.unit)}, {pace.eta_text()}"
        )
        return f"{text}: {self.label}" if self.label and pace.done < self.total else text

    def _show(self, changed: bool) -> None:
        if self._progress is not None and self._task is not None:
            pace = self.pace
            self._progress.update(
                self._task,
                completed=pace.done,
                description=self.label,
                rate=rate_text(pace.rate, self.unit),
                eta=pace.eta_text(),
            )
            return
        first = not self._lines
        last = self.done >= self.total and self._shown_done != self.done
        if first or last or (changed and self.clock() - self._last_line >= PLAIN_GAP_S):
            self._plain()

    def _plain(self) -> None:
        self._last_line, self._shown_done = self.clock(), self.done
        self._lines += 1
        self.log(self.line())
