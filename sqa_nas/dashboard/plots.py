"""The Pareto scatter, twice: as terminal text (braille dots, no extra dependency) for the
app, and as a matplotlib PNG for `--png`. Both plot completed, feasible trials on two
metrics, draw the front in colour, dim dominated trials and label the seed baselines
(MHA, GQA, SQA, sSQA, xSQA).

"On the front" means non-dominated over all the study's objectives; when the two axes are
exactly those objectives the front's staircase is drawn as well. Trials the study's noise
cannot tell apart from the front (`Verdict.indistinguishable`) are drawn apart from the
dominated ones, and every point gets a +-2 sigma error bar per axis where its spread is
known (`spread.error_bar`): light '─' / '│' behind the dots in the terminal, matplotlib
error bars in the PNG. A repeat of another trial's layout is not a point of its own.

Names from the study (objectives, baselines' variants) are `printable` in both; in the PNG
a ``$`` is escaped too, since matplotlib would read the text between two as math (and a
malformed formula fails the whole figure).
"""

from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from sqa_nas.dashboard.view import StudyView, fmt_number
from sqa_nas.printable import printable
from sqa_nas.search.noise import K_SIGMA

if TYPE_CHECKING:  # matplotlib is optional: imported where a figure is made
    from matplotlib.figure import Figure

# Braille cell: 2 x 4 dots; bit of the dot at (column, row) (Unicode's dot numbering).
_DOT = {
    (0, 0): 0x01,
    (0, 1): 0x02,
    (0, 2): 0x04,
    (1, 0): 0x08,
    (1, 1): 0x10,
    (1, 2): 0x20,
    (0, 3): 0x40,
    (1, 3): 0x80,
}
_Y_LABEL = 9  # width of the y tick labels
_MARKS = "●◆◉○"
_BAR = {"h": "─", "v": "│", "hv": "┼"}  # error bars: horizontal, vertical, crossing


def axis_label(view: StudyView, metric: str) -> str:
    """The metric's name with which way is better, for an axis title (`printable`)."""
    better = "lower" if view.direction(metric) == "minimize" else "higher"
    return printable(f"{metric} ({better} is better)")


def figure_text(text: object) -> str:
    """Study text for a matplotlib figure: `printable`, and ``$`` shown as itself, not as
    the start of a formula."""
    return printable(text).replace("$", r"\$")


def _limits(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.04 or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad


def legend(view: StudyView, x: str, y: str) -> Text:
    """What the scatter's marks mean (the error bars' and the noise mark's only when
    drawn, the GPU filter when one is set)."""
    bars = any(
        view.error_bar(r, x, vx) or view.error_bar(r, y, vy) for r, vx, vy in view.points(x, y)
    )
    return Text.assemble(
        ("● Pareto", "bold green"),
        ("  ⠂ dominated", "grey50"),
        ("  ◆ baseline", "magenta"),
        ("  ◉ selected", "bold yellow"),
        ("  ○ within noise" if view.close_numbers else "", "bold cyan"),
        ("  ─│ ±2σ" if bars else "", "grey50"),
        (printable(f"  GPU {view.gpu_type}") if view.gpu_type else "", "italic"),
    )


def text_scatter(
    view: StudyView,
    x: str,
    y: str,
    width: int,
    height: int,
    *,
    selected: int | None = None,
    header: bool = True,
) -> Text:
    """A `width` x `height` character plot: dim braille dots for dominated trials, a cyan ○
    for those within noise of the front, green ● for the front (and its staircase),
    magenta ◆ plus a name for baselines, a yellow ◉ for the selected trial; grey ─ and │
    error bars (+-2 sigma) behind them; the y axis with three ticks on the left, the x axis
    with three under it. `header`: a title line (the axes, which way is better) and the
    `legend` above the plot; without it (a short screen) every row but the x axis's two
    is plot, and the caller shows them elsewhere (the app: in the panel's border).

    A baseline's name goes right of its mark, else left of it; a name that would cover a
    mark or come within a cell of another name is left out (the table names every trial)."""
    width, height = max(width, _Y_LABEL + 12), max(height, 6 if header else 4)
    pts = view.points(x, y)
    bars = {r.number: (view.error_bar(r, x, vx), view.error_bar(r, y, vy)) for r, vx, vy in pts}
    out = Text(no_wrap=True, overflow="crop")
    if header:
        title = Text(f"{axis_label(view, y)}  vs  {axis_label(view, x)}", "bold")
        for line in (title, legend(view, x, y)):
            line.truncate(width)
            out.append_text(line)
            out.append("\n")
    cols, rows = width - _Y_LABEL - 1, height - (4 if header else 2)  # plot area, characters
    if not pts:
        out.append("\n" + "no completed trial yet".center(width), "dim")
        return out
    x0, x1 = _limits([p[1] for p in pts])
    y0, y1 = _limits([p[2] for p in pts])

    def dot(vx: float, vy: float) -> tuple[int, int]:  # dot coordinates, y downwards
        return (
            round((vx - x0) / (x1 - x0) * (2 * cols - 1)),
            round((y1 - vy) / (y1 - y0) * (4 * rows - 1)),
        )

    dots: dict[tuple[int, int], list[int]] = {}  # cell -> [dominated bits, front bits]

    def plot(dx: int, dy: int, layer: int) -> None:
        cell = dots.setdefault((dx // 2, dy // 4), [0, 0])
        cell[layer] |= _DOT[(dx % 2, dy % 4)]

    marks: dict[tuple[int, int], tuple[str, str]] = {}  # cell -> (glyph, style)
    lines: dict[tuple[int, int], set[str]] = {}  # cell -> error bar directions, "h", "v"
    labels: list[tuple[tuple[int, int], str]] = []
    front, sel = [], None
    for r, vx, vy in pts:
        dx, dy = dot(vx, vy)
        bar_x, bar_y = bars[r.number]
        if bar_x:  # along the point's row, from the left end's cell to the right end's
            start, end = dot(vx - bar_x[0], vy)[0] // 2, dot(vx + bar_x[1], vy)[0] // 2
            for cx in range(max(0, start), min(cols - 1, end) + 1):
                lines.setdefault((cx, dy // 4), set()).add("h")
        if bar_y:  # along its column, from the top end's cell (y grows upwards) down
            top, bottom = dot(vx, vy + bar_y[1])[1] // 4, dot(vx, vy - bar_y[0])[1] // 4
            for cy in range(max(0, top), min(rows - 1, bottom) + 1):
                lines.setdefault((dx // 2, cy), set()).add("v")
        cell = (dx // 2, dy // 4)
        baseline_there = marks.get(cell, ("",))[0] == "◆"  # its name stays next to its mark
        if view.on_front(r):
            front.append((dx, dy))
            if not baseline_there:
                marks[cell] = ("●", "bold green")
        elif view.within_noise(r):
            if not baseline_there:
                marks[cell] = ("○", "bold cyan")
        else:
            plot(dx, dy, 0)
        if r.seed_variant:
            marks[(dx // 2, dy // 4)] = ("◆", "bold magenta")
            labels.append(((dx // 2, dy // 4), printable(r.seed_variant)))
        if r.number == selected:
            sel = (dx // 2, dy // 4)
    if sel is not None:
        marks[sel] = ("◉", "bold yellow")
    if set(view.objectives) == {x, y} and len(front) > 1:
        _staircase(sorted(front), plot, view, x, y)

    grid: list[list[tuple[str, str]]] = [[(" ", "")] * cols for _ in range(rows)]
    for (cx, cy), directions in lines.items():  # behind the dots and the marks
        if 0 <= cx < cols and 0 <= cy < rows:
            grid[cy][cx] = (_BAR["".join(sorted(directions))], "grey39")
    for (cx, cy), (bits_dim, bits_front) in dots.items():
        if 0 <= cx < cols and 0 <= cy < rows:
            grid[cy][cx] = (
                chr(0x2800 | bits_dim | bits_front),
                "green" if bits_front else "grey50",
            )
    for (cx, cy), mark in marks.items():
        if 0 <= cx < cols and 0 <= cy < rows:
            grid[cy][cx] = mark

    named: set[tuple[int, int]] = set()  # cells of the names placed, a cell around each

    def free(row: int, start: int, length: int) -> bool:
        cells = range(start, start + length)
        return (
            0 <= start
            and start + length <= cols
            and not any(grid[row][i][0] in _MARKS or (i, row) in named for i in cells)
        )

    for (cx, cy), name in labels:  # right of the mark, else left of it, else left out
        at = next((s for s in (cx + 1, cx - len(name)) if free(cy, s, len(name))), None)
        if at is None:
            continue
        for i, ch in enumerate(name):
            grid[cy][at + i] = (ch, "magenta")
        named.update((i, cy) for i in range(at - 1, at + len(name) + 1))

    ticks = {0: fmt_number(y1), rows // 2: fmt_number((y0 + y1) / 2), rows - 1: fmt_number(y0)}
    for row in range(rows):
        out.append(f"{ticks.get(row, ''):>{_Y_LABEL}}", "dim").append(
            "┤" if row in ticks else "│", "dim"
        )
        for style, run in groupby(grid[row], key=lambda cell: cell[1]):
            out.append("".join(ch for ch, _ in run), style)  # one span per style run
        out.append("\n")
    out.append(" " * _Y_LABEL + "└" + "─" * cols + "\n", "dim")
    left, mid, right = fmt_number(x0), fmt_number((x0 + x1) / 2), fmt_number(x1)
    axis = [" "] * cols
    for pos, label in ((0, left), (cols // 2 - len(mid) // 2, mid), (cols - len(right), right)):
        axis[max(0, pos) : max(0, pos) + len(label)] = label
    out.append(" " * (_Y_LABEL + 1) + "".join(axis)[:cols], "dim")
    return out


def _staircase(front: list[tuple[int, int]], plot, view: StudyView, x: str, y: str) -> None:
    """The front's attainment line between consecutive front points (sorted by x): the
    boundary of the region they dominate. A trial dominates towards larger x when x is
    minimised, so the step keeps the left point's y up to the right point's x; when x is
    maximised it keeps the right point's y back to the left point's x."""
    x_min = view.direction(x) == "minimize"
    for (ax, ay), (bx, by) in zip(front, front[1:]):
        corner = (bx, ay) if x_min else (ax, by)
        for (sx, sy), (ex, ey) in (((ax, ay), corner), (corner, (bx, by))):
            for t in range(max(abs(ex - sx), abs(ey - sy)) + 1):
                n = max(abs(ex - sx), abs(ey - sy)) or 1
                plot(round(sx + (ex - sx) * t / n), round(sy + (ey - sy) * t / n), 1)


def write_png(
    view: StudyView,
    x: str,
    y: str,
    path: str | Path,
    *,
    title: str = "",
    selected: int | None = None,
) -> Path:
    """`pareto_figure` saved as a PNG at `path` (".png" added when it has no suffix);
    returns the path written."""
    path = Path(path)
    path = path if path.suffix else path.with_suffix(".png")  # what matplotlib would write
    path.parent.mkdir(parents=True, exist_ok=True)
    pareto_figure(view, x, y, title=title, selected=selected).savefig(path)
    return path


def pareto_figure(
    view: StudyView, x: str, y: str, *, title: str = "", selected: int | None = None
) -> Figure:
    """The same scatter as a matplotlib figure (no pyplot: nothing global to close):
    dominated trials grey, those within noise of the front hollow cyan, the front in
    colour with its staircase, baselines labelled, trial `selected` circled; +-2 sigma
    error bars on both axes where known."""
    from matplotlib.figure import Figure  # optional: only --png needs matplotlib

    pts = view.points(x, y)
    fig = Figure(figsize=(8, 5.5), dpi=120)
    ax = fig.add_subplot()
    dominated = [p for p in pts if not view.on_front(p[0]) and not view.within_noise(p[0])]
    close = [p for p in pts if view.within_noise(p[0])]
    front_pts = sorted((p for p in pts if view.on_front(p[0])), key=lambda p: (p[1], p[2]))
    close_style: dict[str, Any] = dict(facecolors="none", edgecolors="tab:cyan", linewidths=1.5)
    styles: tuple[tuple[list, str, dict[str, Any]], ...] = (
        (dominated, "0.8", dict(s=14, color="0.7", label="dominated", zorder=2)),
        (
            close,
            "tab:cyan",
            close_style | dict(s=30, label=f"within {K_SIGMA:g}σ of the front", zorder=3),
        ),
        (front_pts, "tab:green", dict(s=36, color="tab:green", label="Pareto front", zorder=3)),
    )
    bars_label: str | None = f"±{K_SIGMA:g}σ where known"  # one legend entry for the bars
    for group, colour, style in styles:  # the points, their error bars' colour, their style
        if group:
            if _error_bars(ax, view, group, x, y, colour, bars_label):
                bars_label = None
            ax.scatter([p[1] for p in group], [p[2] for p in group], **style)
    front = [(vx, vy) for _, vx, vy in front_pts]
    if set(view.objectives) == {x, y} and len(front) > 1:
        x_min = view.direction(x) == "minimize"  # see _staircase
        ax.step(
            *zip(*front), where="post" if x_min else "pre", color="tab:green", alpha=0.5, zorder=2
        )
    for r, vx, vy in pts:
        if r.seed_variant:  # a green rim when the baseline is on the front
            ax.scatter(
                [vx],
                [vy],
                s=60,
                marker="D",
                color="tab:purple",
                zorder=4,
                edgecolors="tab:green" if view.on_front(r) else "none",
                linewidths=2,
            )
            ax.annotate(
                figure_text(r.seed_variant),
                (vx, vy),
                xytext=(6, 4),
                textcoords="offset points",
                color="tab:purple",
                fontsize=9,
            )
        if r.number == selected:
            ax.scatter(
                [vx],
                [vy],
                s=160,
                facecolors="none",
                edgecolors="tab:orange",
                linewidths=2,
                zorder=5,
                label=figure_text(f"trial #{r.number}"),
            )
    if not pts:
        ax.text(
            0.5,
            0.5,
            "no completed trial yet",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    ax.set_xlabel(figure_text(axis_label(view, x)))
    ax.set_ylabel(figure_text(axis_label(view, y)))
    ax.set_title(f"{figure_text(title or 'Pareto front')}\n{verdict_line(view)}", fontsize=11)
    ax.grid(True, alpha=0.3)
    if pts:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def _error_bars(
    ax, view: StudyView, group, x: str, y: str, colour: str, label: str | None
) -> bool:
    """One `errorbar` call (an ErrorbarContainer, `label` in the legend) for the points of
    `group` that have a bar on either axis, a missing one drawn as zero; False when none
    has a bar."""
    rows = []
    for r, vx, vy in group:
        bx, by = view.error_bar(r, x, vx), view.error_bar(r, y, vy)
        if bx or by:
            rows.append((vx, vy, bx or (0.0, 0.0), by or (0.0, 0.0)))
    if not rows:
        return False
    xs, ys, bxs, bys = zip(*rows)
    ax.errorbar(
        xs,
        ys,
        xerr=[[b[0] for b in bxs], [b[1] for b in bxs]] if any(map(any, bxs)) else None,
        yerr=[[b[0] for b in bys], [b[1] for b in bys]] if any(map(any, bys)) else None,
        fmt="none",
        ecolor=colour,
        elinewidth=0.8,
        alpha=0.7,
        zorder=1,
        label=label,
    )
    return True


def verdict_line(view: StudyView, short: bool = False) -> str:
    """The front's verdict in a few words, for a figure's title (`Verdict.summary` is the
    sentence); `short`: fewer still, for a narrow panel (``NOT resolved: 2 within 2σ``)."""
    verdict = view.verdict
    if not verdict.measured:
        return (
            "not measured"
            if short
            else ("noise not measured: not known whether the front is resolved")
        )
    if verdict.indistinguishable:
        n = len(verdict.indistinguishable)
        if short:
            return f"NOT resolved: {n} within {K_SIGMA:g}σ"
        return f"front NOT resolved: {n} trial{'' if n == 1 else 's'} within {K_SIGMA:g}σ of it"
    if short:
        return "resolved"
    return f"front resolved: every other trial more than {K_SIGMA:g}σ behind it"
