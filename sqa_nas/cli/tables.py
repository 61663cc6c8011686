"""How commands print their result tables (`sqa-nas bench`, `sqa-nas search`'s front):
``--format table|plain|csv|json``.

- ``table`` (the default on a terminal): rich, fitted to the terminal's width. A value is
  never cut: columns are dropped, least needed first, with a note naming them, and only when
  the kept ones still do not fit do values wrap onto a second line.
- ``plain`` (the default when stdout is not a terminal: a pipe, a file, a log): every column,
  full values, aligned with spaces, no colour or other control sequence, lines as long as
  they need.
- ``csv`` / ``json``: the rows' data at full precision, and nothing else on stdout (what the
  command says besides goes to stderr: `chatter`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from sqa_nas.cli import console

FORMATS = ("table", "plain", "csv", "json")
FORMAT_HELP = (
    "table: fitted to the terminal (the default on one); plain: every column and full "
    "values, no colour (the default when stdout is not a terminal); csv, json: the data at "
    "full precision, and only it, on stdout"
)


def add_format_argument(p: argparse.ArgumentParser, what: str) -> None:
    """``--format`` for a command whose result is `what` (e.g. "the tables")."""
    p.add_argument("--format", choices=FORMATS, help=f"how {what} print. {FORMAT_HELP}")


def chosen_format(args: argparse.Namespace) -> str:
    """``--format``, else ``table`` on a terminal and ``plain`` elsewhere."""
    return getattr(args, "format", None) or ("table" if console.is_terminal else "plain")


def chatter(fmt: str) -> Console:
    """Where a command's other lines (headers, notes, "wrote FILE", progress) go: stdout
    with a table, stderr when stdout holds csv or json."""
    if fmt in ("csv", "json"):
        return Console(stderr=True, highlight=False, log_path=False, emoji=False)
    return console


@dataclass(frozen=True)
class Column:
    """A column: its header, whether its values align right (numbers), `drop`: the order in
    which a narrow terminal gives it up (1 first; 0 never), and `wrap`: text whose values
    may take several lines, broken between words (an allocation), before any is dropped."""

    name: str
    right: bool = True
    drop: int = 0
    wrap: bool = False


@dataclass
class Sheet:
    """One table as shown: title, columns, each row's cells (strings, as printed), a rich
    style per row (None for none), and notes printed under it."""

    title: str
    columns: list[Column]
    rows: list[list[str]] = field(default_factory=list)
    styles: list[str | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, cells: Sequence[str], style: str | None = None) -> None:
        """Append a row (one cell per column)."""
        assert len(cells) == len(self.columns), (cells, self.columns)
        self.rows.append(list(cells))
        self.styles.append(style)


def print_sheet(sheet: Sheet, fmt: str, out: Console = console) -> None:
    """Print `sheet` as ``table`` (fitted) or ``plain`` on `out`, its notes under it."""
    if fmt == "plain":
        for line in plain_lines(sheet):
            out.print(line, markup=False, highlight=False, soft_wrap=True)
        for note in sheet.notes:
            out.print(f"  {note}", markup=False, highlight=False, soft_wrap=True)
        return
    table, dropped = fitted(sheet, out.width, out)
    out.print(table)
    if dropped:
        out.print(
            Text(
                f"  not shown at {out.width} columns: {', '.join(dropped)} "
                "(--format plain shows every column)",
                style="dim",
            )
        )
    for note in sheet.notes:
        out.print(Text(f"  {note}", style="dim"))


def plain_lines(sheet: Sheet) -> list[str]:
    """The title, the header, a rule and the rows, columns two spaces apart, numbers right
    aligned; trailing spaces stripped."""
    cells = [[c.name for c in sheet.columns], *sheet.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(sheet.columns))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if col.right else cell.ljust(w)
            for cell, w, col in zip(row, widths, sheet.columns)
        ).rstrip()

    return [
        sheet.title,
        line(cells[0]),
        "  ".join("-" * w for w in widths),
        *(line(row) for row in sheet.rows),
        "",
    ]


def fitted(sheet: Sheet, width: int, out: Console) -> tuple[Table, list[str]]:
    """The rich table of `sheet` within `width` columns, and the names of the columns it
    leaves out: whole values on one line each while the droppable columns can make room
    (least needed first), else every kept column folds its values (never an ellipsis)."""
    keep = list(range(len(sheet.columns)))
    # A column with one value in every row goes first: a note says the value.
    same = {i: sheet.rows[0][i] for i in keep if sheet.rows and len(_values(sheet, i)) == 1}
    order = sorted((i not in same, c.drop, -i, i) for i, c in enumerate(sheet.columns) if c.drop)
    while order and _least_width(sheet, keep, out) > width:
        keep.remove(order.pop(0)[-1])
    table = _table(sheet, keep, wrap=_least_width(sheet, keep, out) > width)
    dropped = [
        f"{c.name} ({same[i]} in every row)" if i in same else c.name
        for i, c in enumerate(sheet.columns)
        if i not in keep
    ]
    return table, dropped


def _values(sheet: Sheet, i: int) -> set[str]:
    return {row[i] for row in sheet.rows}


def _least_width(sheet: Sheet, keep: list[int], out: Console) -> int:
    """The least width the table of `keep` takes without folding a value: its columns whole,
    but for the wrapping ones, as wide as their longest word. (Rich's own measure of a
    table ignores `no_wrap`, and clamps to the width it is given.)"""

    def longest_word(text: str) -> str:
        return max(text.split(), key=len, default="")

    probe = Sheet(sheet.title, [replace(sheet.columns[i], wrap=False) for i in keep])
    for row in [[c.name for c in sheet.columns], *sheet.rows]:
        probe.add([longest_word(row[i]) if sheet.columns[i].wrap else row[i] for i in keep])
    table = _table(probe, list(range(len(keep))), wrap=False)
    return Measurement.get(out, out.options.update(width=1 << 20), table).maximum


def _table(sheet: Sheet, keep: list[int], wrap: bool) -> Table:
    title = Text(sheet.title, style="italic")
    table = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold")
    for i in keep:
        c = sheet.columns[i]
        table.add_column(
            c.name,
            justify="right" if c.right else "left",
            no_wrap=not (wrap or c.wrap),
            overflow="fold",
        )
    for row, style in zip(sheet.rows, sheet.styles):
        table.add_row(*(Text(row[i]) for i in keep), style=style)
    return table


def csv_text(records: Sequence[Mapping[str, Any]]) -> str:
    """`records` as CSV: a header of every key (in the order first seen), one line per
    record; a missing key is an empty cell, a list or mapping its JSON, floats in full
    (``repr``)."""
    keys = list(dict.fromkeys(k for r in records for k in r))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(keys)
    for r in records:
        writer.writerow([_csv_cell(r.get(k)) for k in keys])
    return buffer.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return repr(value) if isinstance(value, float) else str(value)


def json_text(data: Any) -> str:
    """`data` as indented JSON (what ``--format json`` prints)."""
    return json.dumps(data, indent=2, default=str) + "\n"


def write_data(text: str) -> None:
    """csv or json text on stdout, as it is (no wrapping, no markup)."""
    console.file.write(text)
    console.file.flush()
