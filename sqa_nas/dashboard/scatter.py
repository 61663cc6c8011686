"""The Pareto scatter as a Textual widget (`plots.text_scatter` drawn at the size the layout
gives it), its axes and legend in its border when the screen is short."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.widget import Widget

from sqa_nas.dashboard.plots import legend, text_scatter
from sqa_nas.dashboard.render import plain
from sqa_nas.dashboard.view import StudyView

PLOT_ROWS = 10  # the scatter's title and legend move to its border to keep this many


class Scatter(Widget):
    """The braille Pareto scatter; re-rendered at whatever size the layout gives it. When
    the title and legend would leave fewer than `PLOT_ROWS` plot rows they go to the
    border: the axes and which way is better in its title, the legend under it."""

    DEFAULT_CSS = "Scatter { height: 1fr; min-height: 6; }"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.view: StudyView | None = None
        self.axes: tuple[str, str] = ("", "")
        self.selected: int | None = None

    def show(self, view: StudyView, axes: tuple[str, str], selected: int | None) -> None:
        """Draw `view` on `axes` (x, y), marking trial `selected`."""
        self.view, self.axes, self.selected = view, axes, selected
        self.frame()
        self.refresh()

    @property
    def header(self) -> bool:
        """Whether the title and legend fit above `PLOT_ROWS` plot rows."""
        return self.size.height - 4 >= PLOT_ROWS

    def frame(self) -> None:
        """The border's title (the axes, ↓ / ↑: lower / higher is better) and, when the
        legend is not inside, the legend under the plot."""
        if self.view is None:
            return
        x, y = self.axes
        arrows = {"minimize": "↓", "maximize": "↑"}
        self.border_title = plain(
            f"Pareto front · {y} {arrows[self.view.direction(y)]} "
            f"vs {x} {arrows[self.view.direction(x)]}"
        )
        self.border_subtitle = None if self.header else legend(self.view, x, y)

    def on_resize(self, event: events.Resize) -> None:
        self.frame()

    def render(self) -> Text:
        """The scatter at the widget's current size ("loading…" before the first `show`)."""
        if self.view is None:
            return Text("loading…", "dim")
        return text_scatter(
            self.view,
            *self.axes,
            self.size.width,
            self.size.height,
            selected=self.selected,
            header=self.header,
        )
