"""The Pareto scatter, twice: as terminal text (braille dots, no extra dependency) for the
app, and as a matplotlib PNG for `--png`. Both plot completed, feasible trials on two
metrics, draw the front in colour, dim dominated trials and label the seed baselines
(MHA, GQA, SQA, sSQA, xSQA).

"On the front" means non-dominated over all the study's objectives; when the two axes are
exactly those objectives the front's staircase is drawn as well.
"""

from __future__ import annotations

from itertools import groupby
from pathlib import Path

from rich.text import Text

from sqa_nas.dashboard.view import StudyView, fmt_number

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
_MARKS = "●◆◉"


def axis_label(view: StudyView, metric: str) -> str:
    """The metric's name with which way is better, for an axis title."""
    return f"{metric} ({'lower' if view.direction(metric) == 'minimize' else 'higher'} is better)"


def _limits(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.04 or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad


def text_scatter(
    view: StudyView, x: str, y: str, width: int, height: int, *, selected: int | None = None
) -> Text:
    """A `width` x `height` character plot: dim braille dots for dominated trials, green ●
    for the front (and its staircase), magenta ◆ plus a name for baselines, a yellow ◉ for
    the selected trial."""
    width, height = max(width, _Y_LABEL + 12), max(height, 6)
    pts = view.points(x, y)
    title = Text(f"{axis_label(view, y)}  vs  {axis_label(view, x)}", "bold")
    legend = Text.assemble(
        ("● Pareto", "bold green"),
        ("  ⠂ dominated", "grey50"),
        ("  ◆ baseline", "magenta"),
        ("  ◉ selected", "bold yellow"),
        (f"  GPU {view.gpu_type}" if view.gpu_type else "", "italic"),
    )
    out = Text(no_wrap=True, overflow="crop")
    for line in (title, legend):
        line.truncate(width)
        out.append_text(line)
        out.append("\n")
    cols, rows = width - _Y_LABEL - 1, height - 4  # plot area in characters
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
    labels: list[tuple[tuple[int, int], str]] = []
    front, sel = [], None
    for r, vx, vy in pts:
        dx, dy = dot(vx, vy)
        if view.on_front(r):
            front.append((dx, dy))
            marks[(dx // 2, dy // 4)] = ("●", "bold green")
        else:
            plot(dx, dy, 0)
        if r.seed_variant:
            marks[(dx // 2, dy // 4)] = ("◆", "bold magenta")
            labels.append(((dx // 2, dy // 4), r.seed_variant))
        if r.number == selected:
            sel = (dx // 2, dy // 4)
    if sel is not None:
        marks[sel] = ("◉", "bold yellow")
    if set(view.objectives) == {x, y} and len(front) > 1:
        _staircase(sorted(front), plot, view, x, y)

    grid: list[list[tuple[str, str]]] = [[(" ", "")] * cols for _ in range(rows)]
    for (cx, cy), (bits_dim, bits_front) in dots.items():
        if 0 <= cx < cols and 0 <= cy < rows:
            grid[cy][cx] = (
                chr(0x2800 | bits_dim | bits_front),
                "green" if bits_front else "grey50",
            )
    for (cx, cy), mark in marks.items():
        if 0 <= cx < cols and 0 <= cy < rows:
            grid[cy][cx] = mark

    def free(start: int, length: int) -> bool:
        return (
            0 <= start
            and start + length <= cols
            and not any(grid[cy][i][0] in _MARKS for i in range(start, start + length))
        )

    for (cx, cy), name in labels:  # right of the mark, else left of it; marks stay visible
        start = (
            cx + 1
            if free(cx + 1, len(name)) or not free(cx - len(name), len(name))
            else cx - len(name)
        )
        for i, ch in enumerate(name):
            if 0 <= start + i < cols and grid[cy][start + i][0] not in _MARKS:
                grid[cy][start + i] = (ch, "magenta")

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
    """The same scatter as a PNG (matplotlib, Agg): dominated trials grey, the front in
    colour with its staircase, baselines labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path = path if path.suffix else path.with_suffix(".png")  # what matplotlib would write
    path.parent.mkdir(parents=True, exist_ok=True)
    pts = view.points(x, y)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    try:
        dominated = [(vx, vy) for r, vx, vy in pts if not view.on_front(r)]
        front = sorted((vx, vy) for r, vx, vy in pts if view.on_front(r))
        if dominated:
            dx, dy = zip(*dominated)
            ax.scatter(dx, dy, s=14, color="0.7", label="dominated", zorder=2)
        if front:
            fx, fy = zip(*front)
            ax.scatter(fx, fy, s=36, color="tab:green", label="Pareto front", zorder=3)
            if set(view.objectives) == {x, y} and len(front) > 1:
                x_min = view.direction(x) == "minimize"  # see _staircase
                ax.step(
                    *zip(*front),
                    where="post" if x_min else "pre",
                    color="tab:green",
                    alpha=0.5,
                    zorder=2,
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
                    r.seed_variant,
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
                    label=f"trial #{r.number}",
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
        ax.set_xlabel(axis_label(view, x))
        ax.set_ylabel(axis_label(view, y))
        ax.set_title(title or "Pareto front")
        ax.grid(True, alpha=0.3)
        if pts:
            ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
