"""The trials table: a virtual, line-by-line table (Textual's line API) that draws only the
rows on screen.

Why not `textual.widgets.DataTable`: it measures every cell of every row with rich when rows
are added, which takes several seconds for 5,000 trials on a 2-core machine, and the dashboard
rebuilds its rows whenever a trial finishes. Here the rows are plain strings prepared once per
rebuild (O(rows x columns)) and each screen line is cut from them on demand.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from sqa_nas.dashboard.render import STATE_STYLE
from sqa_nas.dashboard.view import Column, StudyView
from sqa_nas.search.records import TrialRecord

_STATE = {state: Style.parse(style) for state, style in STATE_STYLE.items()}


class TrialTable(ScrollView, can_focus=True):
    """One row per trial, a header line that stays put, a row cursor. Posts `Highlighted`
    when the cursor moves and `HeaderSelected` when a column header is clicked."""

    DEFAULT_CSS = "TrialTable { height: 1fr; }"
    BINDINGS = [
        Binding("up", "move(-1)", "up", show=False),
        Binding("down", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "move(-1000000000)", "first", show=False),
        Binding("end", "move(1000000000)", "last", show=False),
    ]
    cursor = reactive(0)

    class Highlighted(Message):
        def __init__(self, number: int) -> None:
            super().__init__()
            self.number = number

    class HeaderSelected(Message):
        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.records: list[TrialRecord] = []
        self.cells: list[list[str]] = []
        self.columns: list[Column] = []
        self.widths: list[int] = []
        self.labels: list[str] = []
        self.front: set[int] = set()

    # ------------------------------------------------------------------------------ data
    def set_rows(
        self,
        view: StudyView,
        records: Sequence[TrialRecord],
        *,
        labels: Sequence[str] | None = None,
        select: int | None = None,
    ) -> None:
        """Replace the rows; keep the cursor on trial `select` when it is among them."""
        self.columns = list(view.columns)
        self.labels = list(labels or [c.label for c in self.columns])
        self.records = list(records)
        self.front = view.front_numbers
        self.cells = [view.cells(r)[1] for r in self.records]
        self.widths = [
            max([_width(label)] + [_width(row[i]) for row in self.cells])
            for i, label in enumerate(self.labels)
        ]
        self.virtual_size = Size(sum(self.widths) + 2 * len(self.widths), len(self.cells) + 1)
        index = self.index_of(select) if select is not None else None
        self.set_reactive(TrialTable.cursor, 0 if index is None else index)
        self._show_cursor()
        self.refresh()

    def index_of(self, number: int) -> int | None:
        """The row index of trial `number`, None when it is not shown."""
        for i, r in enumerate(self.records):
            if r.number == number:
                return i
        return None

    @property
    def selected(self) -> TrialRecord | None:
        """The trial under the cursor, None for an empty table."""
        return self.records[self.cursor] if self.records else None

    def row_text(self, index: int) -> str:
        """A row as shown, columns separated by two spaces (tests read it)."""
        return "  ".join(self._pad(i, cell) for i, cell in enumerate(self.cells[index]))

    # ---------------------------------------------------------------------------- cursor
    def move_to(self, number: int) -> bool:
        """Put the cursor on trial `number`; False when it is not shown."""
        index = self.index_of(number)
        if index is not None:
            self.cursor = index
        return index is not None

    def validate_cursor(self, value: int) -> int:
        """Textual's validator: the cursor stays on a row."""
        return max(0, min(value, len(self.records) - 1))

    def watch_cursor(self, old: int, new: int) -> None:
        """Keep the cursor row in view and tell the app which trial it is on."""
        self._show_cursor()
        self.refresh()
        if self.records:
            self.post_message(self.Highlighted(self.records[new].number))

    def action_move(self, step: int) -> None:
        self.cursor += step

    def action_page(self, direction: int) -> None:
        """Move the cursor by a screenful of rows, up (-1) or down (+1)."""
        self.cursor += direction * max(1, self.scrollable_content_region.height - 2)

    def _show_cursor(self) -> None:
        rows = max(1, self.scrollable_content_region.height - 1)  # minus the header
        if self.cursor < self.scroll_y:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= self.scroll_y + rows:
            self.scroll_to(y=self.cursor - rows + 1, animate=False, immediate=True)

    def on_click(self, event: events.Click) -> None:
        """A click on the header selects that column (`HeaderSelected`); on a row, moves there."""
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            x = offset.x + int(self.scroll_x)
            for column, width in zip(self.columns, self.widths):
                if x < width + 2:
                    self.post_message(self.HeaderSelected(column.key))
                    return
                x -= width + 2
        else:
            self.cursor = int(self.scroll_y) + offset.y - 1

    # ---------------------------------------------------------------------------- render
    def _pad(self, i: int, text: str) -> str:
        column = self.columns[i]
        gap = " " * (self.widths[i] - _width(text))
        numeric = column.key == "number" or column.text is not str
        return gap + text if numeric else text + gap

    def render_line(self, y: int) -> Strip:
        """Line `y` of the visible table: the header at 0, else a row (Pareto rows bold, rows
        neither COMPLETE nor RUNNING dim, the cursor row reversed)."""
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        base = self.rich_style
        if y == 0:
            segments = [
                Segment(self._pad(i, label) + "  ", base + Style(bold=True, underline=True))
                for i, label in enumerate(self.labels)
            ]
        else:
            index = scroll_y + y - 1
            if index >= len(self.cells):
                return Strip.blank(width, base)
            r = self.records[index]
            style = base + Style(
                bold=r.number in self.front, dim=r.state not in ("COMPLETE", "RUNNING")
            )
            if index == self.cursor:
                style += Style(reverse=True)
            segments = []
            for i, cell in enumerate(self.cells[index]):
                cell_style = style
                if self.columns[i].key == "state" and r.state in _STATE:
                    cell_style = style + _STATE[r.state]
                segments.append(Segment(self._pad(i, cell) + "  ", cell_style))
        return Strip(segments).crop_extend(scroll_x, scroll_x + width, base)


def _width(text: str) -> int:
    return len(text) if text.isascii() else cell_len(text)
