"""Time and speedup against sequence length, one panel row per cell setting: the PNG of a
benchmark result (matplotlib, an optional dependency, is imported only when drawing)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqa_nas.bench.row import BenchRow, as_rows

# One panel row per value of these (when they vary); inside a panel, colour = variant and
# line style = backend.
_PANEL_KEYS = ("model", "scope", "mode", "dtype", "head_dim", "batch", "causal", "mask")
_STYLES = ("-", "--", ":", "-.")


def plot_rows(
    rows: Sequence[BenchRow | Mapping[str, Any]],
    path: str | Path,
    title: str = "",
    baseline: str = "MHA",
    panel_keys: Sequence[str] = _PANEL_KEYS,
) -> Path:
    """PNG with time (left, log-log) and speedup over `baseline` (right) against sequence
    length: one panel row per value of the `panel_keys` (row JSON keys) that vary, a colour
    per variant, a line style per backend. Rows may be `BenchRow`s or their JSON dicts;
    untimed rows are left out. Returns `path`. Raises ImportError without matplotlib."""
    # matplotlib is optional (the GPU machine may lack it): imported only to draw
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    timed = [r for r in as_rows(rows) if r.timed]
    varying = [k for k in panel_keys if len({json.dumps(r.value(k)) for r in timed}) > 1]
    panels: dict[str, list[BenchRow]] = {}
    for r in timed:
        panels.setdefault(", ".join(f"{k}={r.value(k)}" for k in varying), []).append(r)
    variants = list(dict.fromkeys(r.variant for r in timed))
    backends = list(dict.fromkeys(_requested(r) for r in timed))
    colors = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    styles = {b: _STYLES[i % len(_STYLES)] for i, b in enumerate(backends)}
    fig = Figure(figsize=(13, 0.6 + 3.6 * max(1, len(panels))))
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(panels)), 2, squeeze=False)
    tokens = FuncFormatter(lambda x, _: f"{x / 1024:g}k" if x >= 1024 else f"{x:g}")
    for (ax_t, ax_s), (panel, pts_all) in zip(axes, panels.items()):
        lines: dict[tuple, list[BenchRow]] = {}
        for r in pts_all:
            lines.setdefault((r.variant, _requested(r)), []).append(r)
        for (variant, backend), pts in lines.items():
            pts = sorted(pts, key=lambda r: r.seq_len)
            label = variant + (f" ({backend})" if len(backends) > 1 else "")
            style = dict(
                color=colors[variant],
                linestyle=styles[backend],
                marker="o",
                markersize=3,
                label=label,
            )
            ax_t.plot([r.seq_len for r in pts], [r.ms for r in pts], **style)
            speed = [
                (r.seq_len, r.speedup(baseline)) for r in pts if r.speedup(baseline) is not None
            ]
            if speed:
                ax_s.plot(*zip(*speed), **style)
        ax_t.set(xscale="log", yscale="log", ylabel="ms per call", title=f"time  {panel}")
        ax_t.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax_t.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax_t.yaxis.set_minor_formatter(NullFormatter())
        ax_s.set(
            xscale="log",
            ylabel=f"speedup vs {baseline} (x)",
            title=f"speedup vs {baseline}  {panel}",
        )
        lengths = sorted({r.seq_len for r in pts_all})
        for ax in (ax_t, ax_s):
            ax.set_xlabel("sequence length (tokens)")
            ax.set_xticks(lengths)
            ax.xaxis.set_major_formatter(tokens)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
            ax.title.set_fontsize(9)
        ax_s.legend(
            *ax_t.get_legend_handles_labels(),
            fontsize=7,
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
        )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _requested(r: BenchRow) -> str:
    """The backend the row asked for (older rows without the key: auto)."""
    return r.backend_requested if r.backend_requested is not None else "auto"
