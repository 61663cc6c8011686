"""Rich renderables shared by the interactive app and `--once`: the progress summary, the
Pareto table, the multi-fidelity rung ladder, and a trial's detail (per-layer strip,
analytics, training curve).

Text from the study (its name, objective names, allocations, device names, fail reasons,
the confirm summary, a run's host) is `printable` and goes into a `Text`, never into a
markup string: its control characters are shown, not sent, and ``[red]`` in it is shown
as written. `plain` does both."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from sqa_nas.dashboard.ladder import trial_rungs
from sqa_nas.dashboard.plots import verdict_line
from sqa_nas.dashboard.spread import noisy_note
from sqa_nas.dashboard.view import Progress, StudyView, fmt_number, objective_label
from sqa_nas.errors import UserError
from sqa_nas.printable import printable
from sqa_nas.search.figures import RunStats
from sqa_nas.search.records import LayerRecord, TrialRecord

BARS = "▁▂▃▄▅▆▇█"
STATE_STYLE = {
    "COMPLETE": "green",
    "RUNNING": "cyan",
    "FAIL": "red",
    "PRUNED": "yellow",
    "WAITING": "dim",
}
# layer strip shades, light to strong: a layer's share of the reference head count H
SHADES = ["grey23", "grey39", "dark_cyan", "cyan3", "turquoise2"]


def plain(text: object, style: str = "", **options: Any) -> Text:
    """Study text as a `Text`: control characters shown (`printable`, newlines kept), rich
    markup not parsed."""
    return Text(printable(text, newlines=True), style, **options)


def sparkline(
    values: Sequence[float], width: int = 40, lo: float | None = None, hi: float | None = None
) -> str:
    """Values as block characters, resampled to at most `width` (last value kept)."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [values[min(len(values) - 1, int((i + 1) * step) - 1)] for i in range(width)]
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    span = hi - lo
    return "".join(BARS[0 if span <= 0 else min(7, int((v - lo) / span * 7.999))] for v in values)


def summary(
    view: StudyView, progress: Progress, *, title: str, compact: bool = False, rungs: bool = False
) -> Table:
    """Counts, rate, the last run's GPU figures, front size, whether the noise resolves the
    front (`Verdict.summary`, which names the noise floor), the last `sqa-nas confirm`,
    hypervolume trend and the pickers' choices. `compact` (a short terminal, the panel
    beside the scatter) keeps the trial counts, the front, the verdict in a few words and
    the confirm result. `rungs` adds the rung ladder on one line (`ladder_line`; a
    multi-fidelity study whose ladder has no panel of its own on screen)."""
    c = progress.counts
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    if not compact:
        grid.add_row("study", plain(title))
        objectives = ", ".join(
            objective_label(o, d) for o, d in zip(view.objectives, view.directions)
        )
        grid.add_row("objectives", plain(objectives))
    states = Text()
    for state in ("COMPLETE", "RUNNING", "FAIL", "PRUNED", "WAITING"):
        if c[state] or state in ("COMPLETE", "RUNNING", "FAIL"):
            label = {"COMPLETE": "done", "FAIL": "failed"}.get(state, state.lower())
            states.append(f"{c[state]} {label}", STATE_STYLE[state]).append("  ")
    states.append(f"of {sum(c.values())}")
    if view.gpu_type:
        states.append(printable(f"  (GPU {view.gpu_type} only)"), "italic")
    grid.add_row("trials", states)
    if not compact:
        rate = "-" if progress.per_hour is None else f"{progress.per_hour:.1f}/h overall"
        grid.add_row("rate", f"{rate}, {progress.last_hour} in the last hour")
        grid.add_row("GPU", run_figures(view.run))
    done = sum(1 for r in view.records if r.state == "COMPLETE")
    grid.add_row(
        "front", f"{len(view.front)} {'of' if compact else 'Pareto-optimal of'} {done} done"
    )
    # compact: the verdict in a few words (`verdict_line`), the rungs and the confirm on one
    # line each, cut with an ellipsis
    cut: dict[str, Any] = dict(no_wrap=True, overflow="ellipsis") if compact else {}
    if rungs and view.ladder:
        grid.add_row("rungs", ladder_line(view, no_wrap=True, overflow="ellipsis"))
    verdict = view.verdict
    sentence = verdict_line(view, short=True) if compact else verdict.summary()
    grid.add_row("noise", plain(sentence, "green" if verdict.resolved else "yellow"))
    if view.confirmation is not None:
        grid.add_row("confirm", confirm_line(view, **cut))
    if compact:
        return grid
    if progress.hv_axes:
        hv = progress.hypervolume
        line = Text(sparkline(hv, 40, 0.0, 1.0), "green")
        line.append(f"  {hv[-1]:.3f}" if hv else "  -")
        line.append(printable(f"  ({progress.hv_axes[0]} x {progress.hv_axes[1]})"), "dim")
        grid.add_row("hypervolume", line)
    if view.front:
        picks = []
        for spec in view.picker_specs()[: 1 + len(view.objectives)]:
            try:
                picks.append(f"{spec} #{view.pick(spec).number}")
            except UserError:  # an objective's name no spec can hold (a crafted study)
                continue
        grid.add_row("picks", plain(" · ".join(picks)))
    return grid


def ladder_text(view: StudyView, **text: Any) -> Text:
    """The rung ladder, one line per rung, the first rung first: its tokens, how many trials
    reached it, went on to the next rung (``on``: promoted, or a baseline training through),
    were stopped there and wait there (paused); the top rung (the full budget) names its
    trials. `text`: each line's `Text` options (e.g. no_wrap)."""
    cells = []
    for x in view.ladder:
        line = [f"rung {x.rung}", f"{fmt_number(x.tokens)} tok", f"{x.reached} reached"]
        if not x.top:
            line += [f"{x.promoted} on", f"{x.stopped} stopped", f"{x.paused} paused"]
        cells.append(line)
    widths = [max(len(c[i]) for c in cells if i < len(c)) for i in range(max(map(len, cells)))]
    styles = ["bold", "", "", STATE_STYLE["COMPLETE"], STATE_STYLE["PRUNED"], "cyan"]
    out = Text(**text)
    for i, (x, line) in enumerate(zip(view.ladder, cells)):
        out.append("\n" if i else "")
        for j, cell in enumerate(line):
            out.append("  " if j else "")
            out.append(cell.ljust(widths[j]) if j == 0 else cell.rjust(widths[j]), styles[j])
        if x.top:
            done = " ".join(f"#{n}" for n in x.trials) or "none yet"
            out.append("  full budget: ", "bold").append(done, STATE_STYLE["COMPLETE"])
    return out


def ladder_title(view: StudyView) -> str:
    """The ladder's title: with the study's planned scheduler, its eta (who goes on)."""
    if view.schedule is None:
        return "rung ladder"
    eta = view.schedule[0].eta
    return printable(f"rung ladder · eta {eta}: the top 1/{eta} of a rung go on")


def ladder_line(view: StudyView, **text: Any) -> Text:
    """The rung ladder on one line (a short screen's search panel): the trials that reached
    each rung, first to top, and how many the scheduler stopped or paused in all."""
    rows = view.ladder
    line = Text(" → ".join(str(x.reached) for x in rows) + " reached", **text)
    line.append(f" ({fmt_number(rows[0].tokens)} → {fmt_number(rows[-1].tokens)} tok)", "dim")
    line.append(f", {sum(x.stopped for x in rows)} stopped", STATE_STYLE["PRUNED"])
    line.append(f", {sum(x.paused for x in rows)} paused", "cyan")
    return line


def confirm_line(view: StudyView, **text: Any) -> Text:
    """The last `sqa-nas confirm`: its summary, seeds and end time (`text`: `Text`'s
    options, e.g. no_wrap)."""
    confirmed = view.confirmation
    assert confirmed is not None
    line = plain(confirmed.summary or f"trials {confirmed.survivors} survive on the front", **text)
    k = len(confirmed.seeds)
    ended = (confirmed.ended or "")[:16].replace("T", " ")
    when = ", ".join(x for x in (f"{k} seed{'' if k == 1 else 's'}" if k else "", ended) if x)
    if when:
        line.append(printable(f"  ({when})"), "dim")
    return line


def run_figures(run: RunStats | None) -> Text:
    """A search run's figures on one line: NVML utilisation, training-step share and the
    in-trial fraction, "n/a" for those it did not record (a CPU search, an older run)."""
    if run is None:
        return Text("n/a (no search run has recorded its figures yet)", "dim")
    # One line whatever the width: the panel's height is fixed, the note is cut first.
    line = Text(no_wrap=True, overflow="ellipsis")
    for label, value in (
        ("NVML utilisation", run.nvml_util_mean),
        ("training steps", run.train_step_share),
        ("in trials", run.in_trial_fraction),
    ):
        line.append(f"{label} ")
        line.append("n/a" if value is None else f"{value:.1%}", "dim" if value is None else "bold")
        line.append("  ")
    ended = (run.ended or "")[:16].replace("T", " ")  # ISO 8601 UTC, to the minute
    where = ", ".join(x for x in (run.host, ended and f"{ended} UTC") if x)
    notes = [f"last run: {where}"] if where else []
    if run.nvml_note:
        notes.append(run.nvml_note)
    line.append(printable(" · ".join(notes)), "dim")
    return line


def pareto_table(
    view: StudyView,
    records: Sequence[TrialRecord] | None = None,
    *,
    title: str = "Pareto front",
    highlight: int | None = None,
) -> Table:
    """The trials (the front by default) with every column of the dashboard's table."""
    rows = view.front if records is None else records
    table = Table(title=plain(title), title_justify="left", header_style="bold")
    cols = [c for c in view.columns if c.key not in ("state", "front")]
    for col in cols:
        table.add_column(
            plain(col.label),
            justify="left" if col.key in ("allocation", "gpu", "seed") else "right",
            overflow="fold",
        )
    shown = [i for i, c in enumerate(view.columns) if c.key not in ("state", "front")]
    for r in rows:
        style = "bold yellow" if r.number == highlight else None
        texts = view.cells(r)[1]  # with the noisy-timing notes
        table.add_row(*(Text(texts[i]) for i in shown), style=style)  # texts: printable
    if not rows:
        table.add_row(*(["-"] + [""] * (len(cols) - 1)))
    if any(noisy_note(r, c.key) for r in rows for c in cols):
        table.caption = "±N%: noisy throughput, its 95% interval stayed wider than the target"
        table.caption_justify = "left"
    return table


def layer_strip(r: TrialRecord) -> Table | Text:
    """One column per layer: H_q and H_kv shaded by their share of H (darker = sparser),
    the mask pattern, the window and the backend."""
    layers = r.layers
    if not layers:
        return Text("no per-layer allocation recorded", "dim")
    n_heads = (r.model or {}).get("n_heads") or max(x.n_q_heads for x in layers)
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1), pad_edge=False)
    table.add_column("layer", style="bold")
    for i in range(len(layers)):
        table.add_column(str(i), justify="center", min_width=5)

    def shade(n: int) -> str:
        share = min(1.0, n / n_heads)
        return f"bold white on {SHADES[min(len(SHADES) - 1, int(share * len(SHADES)))]}"

    table.add_row("H_q", *(Text(f"{x.n_q_heads:^5}", shade(x.n_q_heads)) for x in layers))
    table.add_row("H_kv", *(Text(f"{x.n_kv_heads:^5}", shade(x.n_kv_heads)) for x in layers))
    table.add_row("mask", *(plain(_pattern(x)) for x in layers))
    table.add_row(
        "window",
        *(
            ""
            if x.window is None
            else f"{x.window}" + (f"+{x.global_tokens}g" if x.global_tokens else "")
            for x in layers
        ),
    )
    table.add_row("backend", *(plain(x.backend or "-") for x in layers))
    return table


def _pattern(layer: LayerRecord) -> str:
    """The layer's mask family, 'block' for short: as recorded, else from its sizes."""
    pattern = layer.pattern or layer.mask.pattern
    return "block" if pattern == "block_sparse" else pattern


def detail(view: StudyView, r: TrialRecord | None) -> RenderableType:
    """Everything about one trial that fits a side pane."""
    if r is None:
        return Text("no trial selected", "dim")
    head = Text()
    head.append(printable(f"trial #{r.number} "), "bold")
    head.append(r.state, STATE_STYLE.get(r.state, ""))
    if view.on_front(r):
        head.append("  ★ Pareto", "bold green")
    elif view.within_noise(r):
        head.append("  ≈ within noise of the front", "bold cyan")
    if r.seed_variant:
        head.append(printable(f"  baseline {r.seed_variant}"), "magenta")
    if r.gpu_type:
        head.append(printable(f"  {r.gpu_type}"), "dim")
    parts: list[RenderableType] = [head, plain(r.allocation or "", "italic")]
    if r.fail_reason:
        pruned = r.state == "PRUNED"  # stopped by the multi-fidelity scheduler
        parts.append(
            plain(
                f"{'pruned' if pruned else 'failed'}: {r.fail_reason}",
                "yellow" if pruned else "red",
            )
        )
    rungs = trial_rungs(r)
    if rungs:
        line = Text("rungs ", "bold")
        line.append(
            " → ".join(f"{x.rung}: {fmt_number(x.tokens)} tok {x.decision}" for x in rungs), "dim"
        )
        parts.append(line)
    if r.infeasible:
        parts.append(plain("infeasible: " + "; ".join(r.infeasible), "red"))
    if r.typed.duplicate_of is not None:
        parts.append(
            Text(
                f"= trial {r.typed.duplicate_of}: the same layout, told its values "
                "(not trained again, not a point of its own)",
                "cyan",
            )
        )
    parts += [Text(""), layer_strip(r), Text("")]

    numbers = Table.grid(padding=(0, 2))
    numbers.add_column(style="bold")
    numbers.add_column(justify="right")
    numbers.add_column(style="bold")
    numbers.add_column(justify="right")
    cells = [(o, view.value(r, o)) for o in view.objectives]
    m, a = r.metrics, r.analytics
    cells += [
        (k, v)
        for k, v in (
            ("perplexity", m.perplexity),
            ("accuracy", m.accuracy),
            ("speedup_vs_mha", m.speedup_vs_mha),
        )
        if k not in view.objectives
    ]
    cells += [
        ("params", a.params),
        ("FLOPs/token", a.flops_per_token),
        ("attn FLOPs/token", a.attention_flops_per_token),
        ("KV bytes/token", a.kv_cache_bytes_per_token),
        ("analytic × MHA", a.analytic_speedup_vs_mha),
    ]
    shown = [(k, fmt_number(v)) for k, v in cells if v is not None]
    for i in range(0, len(shown), 2):
        pair = shown[i : i + 2] + [("", "")] * (2 - len(shown[i : i + 2]))
        numbers.add_row(*(plain(x) for x in (*pair[0], *pair[1])))  # the names: objectives
    parts.append(numbers)
    parts += certainty(view, r)

    curve = r.curve
    losses = [loss for _, _, loss in curve]
    if losses:
        line = Text("train loss ", "bold")
        line.append(
            f"{fmt_number(losses[0])} → {fmt_number(losses[-1])} "
            f"over {fmt_number(curve[-1][0])} steps",
            "dim",
        )
        parts += [Text(""), line, Text(sparkline(losses, 48), "cyan")]
    if r.timings.total_s is not None:
        parts.append(Text(f"took {r.timings.total_s:.1f} s", "dim"))
    return Group(*parts)


def certainty(view: StudyView, r: TrialRecord) -> list[Text]:
    """How sure the trial's figures are: its seeds' spread, its timing's 95% intervals
    (a noisy one flagged), and what `sqa-nas confirm` found for it."""
    m, lines = r.metrics, []
    seeds = m.val_loss_seeds or []
    if len(seeds) >= 2 and m.val_loss is not None and m.val_loss_std is not None:
        line = f"val_loss {m.val_loss:.4g} ± {m.val_loss_std:.3g} over {len(seeds)} seeds"
        lines.append(Text(line + ("  (the study's noise trial)" if r.typed.noise_trial else "")))
    timing = []
    if m.noisy_throughput:
        half = m.throughput_rel_ci95
        noisy = "noisy throughput" + ("" if half is None else f": 95% CI ±{half:.0%}")
        lines.append(Text(noisy, "bold yellow"))
    elif m.throughput_rel_ci95 is not None:
        timing.append(f"throughput 95% CI ±{m.throughput_rel_ci95:.1%}")
    if m.speedup_ci95 is not None:
        timing.append(f"speedup 95% CI {m.speedup_ci95[0]:.3g}-{m.speedup_ci95[1]:.3g}x")
    if m.throughput_rounds:
        timing.append(f"{m.throughput_rounds} paired rounds")
    if timing:
        lines.append(Text(", ".join(timing), "dim"))
    confirmed = view.confirmation.of(r.number) if view.confirmation else None
    if confirmed is not None:
        style = "green" if confirmed.on_front else "yellow"
        lines.append(plain(f"confirmed: {confirmed.describe()}", style))
    return lines
