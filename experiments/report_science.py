"""The docs/results.md sections of the quality experiments (issue 19): Table 1 with its
paired intervals and the paper's claims, Table 1 at every budget side by side, the scaling of
the gaps with the budget. Each function turns one result file (as the script wrote it) into
Markdown; `results_report` puts them on the page.
"""

from __future__ import annotations

import math
from pathlib import Path

from experiments.science import (
    INTERVAL,
    PAPER_TABLE1,
    claim_verdict,
    losses_by_label,
    noise_parts,
    paired,
    pairwise,
)


def machine_text(d: dict) -> str:
    """The machine a result ran on, in words."""
    m = d["machine"]
    parts = [m["device"], f"torch {m['torch']}"] + ([f"CUDA {m['cuda']}"] if m.get("cuda") else [])
    return ", ".join(parts)


def corpus_text(d: dict) -> str:
    """The corpus a result trained on: name, size and fingerprint."""
    c = d.get("corpus") or {}
    tokens = (c.get("tokens") or {}).get("train")
    size = f"{tokens / 1e6:.1f}M training tokens" if tokens else "size not recorded"
    name = d.get("corpus_name") or c.get("kind", "?")
    per_run = (d.get("budget") or {}).get("tokens_per_run")
    if tokens and per_run and per_run > tokens:  # a run sees its text more than once
        size += f" (a run reads them {per_run / tokens:.1f} times)"
    return f"{name} corpus, {size}, fingerprint {str(c.get('fingerprint'))[:16]}"


def provenance(d: dict) -> str:
    """The command (and the ones merged), and the git revision of the code that ran them
    (each one's, when the merged files ran at different revisions), as a sentence."""
    parts = d.get("merged_from", [])
    merged = "".join(f"; joined from `{m['command']}`" for m in parts)
    revisions: dict[str, list[str]] = {}
    for m in parts:
        revisions.setdefault(m.get("git_revision") or "not recorded", []).append(
            Path(m["file"]).name
        )
    if len(revisions) > 1:
        revision = " Git revisions: " + "; ".join(
            f"{r} ({', '.join(files)})" for r, files in revisions.items()
        )
        revision += "."
    else:
        revision = f" Git revision {d['git_revision']}." if d.get("git_revision") else ""
    return f"Command: `{d['command']}`{merged}.{revision}"


def ci_text(p: dict | None) -> str:
    """A paired difference as `+0.0123 [+0.0050, +0.0196]`, or what is missing."""
    if not p or p.get("diff_mean") is None:
        return "-"
    if p.get("ci95_low") is None:
        return f"{p['diff_mean']:+.4f} (n={p['n']})"
    return f"{p['diff_mean']:+.4f} [{p['ci95_low']:+.4f}, {p['ci95_high']:+.4f}]"


def speed_text(c: dict) -> str:
    """A paired speed ratio as `1.034 [0.981, 1.090]`; a file from before it was paired
    holds the ratio of mean throughputs, shown as such."""
    if c.get("speed_ratio") is None:
        ratio = c.get("throughput_ratio")
        return "-" if ratio is None else f"{ratio:.3f} (mean throughputs)"
    if not c.get("speed_ci95"):
        return f"{c['speed_ratio']:.3f} (n={c.get('speed_n', c.get('n'))})"
    low, high = c["speed_ci95"]
    return f"{c['speed_ratio']:.3f} [{low:.3f}, {high:.3f}]"


def _flip(p: dict | None) -> dict | None:
    """b - a from a paired a - b."""
    if p is None or p.get("diff_mean") is None:
        return p
    low, high = p.get("ci95_low"), p.get("ci95_high")
    return {
        **p,
        "diff_mean": -p["diff_mean"],
        "ci95_low": high and -high,
        "ci95_high": low and -low,
    }


def _mean_std(s: dict) -> str:
    """A val-loss summary as `0.6145 ± 0.0024 (2)`, or `0.6301 (1)` for one run (no std)."""
    n = s.get("n", "?")
    if isinstance(n, int) and n < 2:
        return f"{s['mean']:.4f} ({n})"
    return f"{s['mean']:.4f} ± {s['std']:.4f} ({n})"


def _speed_range(s: dict | None) -> str:
    """Training tokens/s over a variant's runs as `3.52M (2.96-4.71M)`: the spread a speed
    comparison between runs has to clear (one run: its figure alone)."""
    if not s:
        return "-"
    if s.get("n", 1) < 2:
        return f"{s['mean'] / 1e6:.2f}M"
    return f"{s['mean'] / 1e6:.2f}M ({s['min'] / 1e6:.2f}-{s['max'] / 1e6:.2f}M)"


def _noise_text(d: dict) -> str:
    """The val-loss noise of a Table 1 under common random numbers (`noise_parts`), as a
    paragraph: what the seeds share, and what a paired difference faces (empty when fewer
    than two variants have every seed)."""
    parts = noise_parts(losses_by_label(d["runs"]), d["seeds"])
    if parts is None:
        return ""
    n = len(d["seeds"])
    return (
        f"Noise: a seed fixes the data order, initialisation and validation batches of every "
        f"variant, so its runs share part of their noise, sigma {parts['shared']:.4f} here; "
        f"the rest, the variant x seed part pooled over the variants, has sigma "
        f"{parts['pair']:.4f} "
        f"({parts['allocations']} variants x {n} seeds, {parts['df']} degrees of freedom). "
        f"Only that part reaches a paired difference: sigma {parts['pair'] * math.sqrt(2):.4f} "
        f"at one seed, {parts['pair'] * math.sqrt(2 / n):.4f} for the mean over {n}."
    )


def _speed_spread(d: dict) -> str:
    """How far apart the training speeds of one variant's runs lie, at most, as a sentence
    (empty below two runs a variant)."""
    spreads = {
        v: (t["max"] - t["min"]) / t["mean"]
        for v, s in d["summary"].items()
        if (t := s.get("train_tokens_per_s")) and t.get("n", 0) > 1
    }
    if not spreads:
        return ""
    worst = max(spreads, key=spreads.__getitem__)
    runs = sorted(
        (
            r
            for r in d["runs"]
            if r["label"] == worst and r["state"] == "COMPLETE" and r.get("train_tokens_per_s")
        ),
        key=lambda r: r["train_tokens_per_s"],
    )
    busy = [r.get("gpu_busy_training") for r in (runs[0], runs[-1])] if runs else []
    why = (
        f" NVML (the whole GPU: another job on it would count too): its slowest run kept "
        f"the GPU busy {busy[0]:.0%} of its training steps' time, its fastest {busy[1]:.0%}."
        if busy and None not in busy
        else ""
    )
    return (
        f"Train tokens/s times each run's whole training loop, once: the runs of one variant "
        f"lie up to {spreads[worst]:.0%} of its mean apart ({worst}), so this column ranks "
        "two variants only where their ranges do not overlap." + why + " The search's speed "
        "objective is a paired timing instead (a trial's step against MHA's, interleaved)."
    )


def _unequal_seeds(d: dict) -> str | None:
    """Which variants have fewer runs than the file's seeds, as a sentence; None when every
    variant that ran has one run per seed."""
    counts = {
        v: s["val_loss"].get("n", s.get("runs"))
        for v, s in d["summary"].items()
        if "val_loss" in s
    }
    if all(n == len(d["seeds"]) for n in counts.values()):
        return None
    groups: dict[int, list[str]] = {}
    for v, n in counts.items():
        groups.setdefault(n, []).append(v)
    return "; ".join(
        f"n = {n} for {', '.join(vs)}" for n, vs in sorted(groups.items(), reverse=True)
    )


def png_lines(path: Path | None, what: str) -> list[str]:
    return ["", f"![{what}](../experiments/results/{path.name})"] if path else []


def table1(d: dict, png: Path | None = None) -> str:
    """A Table 1 result: mean +- std per variant, the paired differences from MHA and GQA
    with their 95% intervals, the paper's claims with verdicts, the learning curves."""
    b, m = d["budget"], d["model"]
    pairs = d.get("pairwise") or pairwise(d["runs"], d["variants"])
    lines = [
        f"### Paper Table 1 at {b['tokens_per_run'] / 1e6:g}M tokens per run, "
        f"{d.get('corpus_name', 'embedded')} corpus ({machine_text(d)})",
        "",
        f"Model d_model {m['d_model']}, {m['n_layers']} layers, H {m['n_heads']}, context "
        f"{b['seq_len']}; {b['tokens_per_run']:,} training tokens per run (batch "
        f"{b['batch_size']}, lr {b['lr']}{', compiled' if b.get('compile') else ''}), seeds "
        f"{d['seeds']}; {corpus_text(d)}. {provenance(d)}",
        "",
    ]
    if d.get("partial"):
        lines += [
            f"**Partial: the run stopped after {len(d['runs'])} of "
            f"{len(d['seeds']) * len(d['variants'])} runs.**",
            "",
        ]
    elif unequal := _unequal_seeds(d):
        lines += [
            f"**Partial: not every variant has every seed of {d['seeds']} ({unequal}).** A "
            "difference with n = 1 has no interval (shown with its n) and its verdict is "
            "cannot tell; the order below compares means over unequal numbers of runs.",
            "",
        ]
    by = {(p["a"], p["b"]): p for p in pairs if p.get("kind", "").startswith("vs")}
    lines += [
        "| variant | H_q/H_kv | val loss (mean ± std, n) | − MHA [95% CI] | − GQA [95% CI] | "
        "accuracy | train tokens/s, mean (min-max) | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in sorted(
        d["summary"].items(), key=lambda kv: kv[1].get("val_loss", {}).get("mean", 1e9)
    ):
        if "val_loss" not in s:
            lines.append(f"| {name} | | failed | | | | | |")
            continue
        v, speed = s["val_loss"], s.get("train_tokens_per_s")
        gqa = by.get((name, "GQA")) or _flip(by.get(("GQA", name)))
        lines.append(
            f"| {name} | {s['allocation'].split(' x')[0]} | "
            f"{_mean_std({'n': s['runs'], **v})} | {ci_text(by.get((name, 'MHA')))} | "
            f"{ci_text(gqa)} | "
            f"{s['accuracy']['mean']:.4f} | {_speed_range(speed)} | "
            f"{d['paper'].get(name, '-')} |"
        )
    o = d["ordering"]
    tau = "-" if o["kendall_tau"] is None else f"{o['kendall_tau']:.2f}"
    lines += ["", text] if (text := _speed_spread(d)) else []
    lines += ["", text] if (text := _noise_text(d)) else []
    lines += [
        "",
        f"Our order (means): {' < '.join(o['our_order'])}; the paper's: "
        f"{' < '.join(o['paper_order'])}; Kendall tau {tau}. Intervals: "
        f"{d.get('interval') or INTERVAL}.",
        "",
    ]
    for p in pairs:
        if p.get("kind") == "paper claim":
            lines.append(f"- paper claim {p['claim']}: **{p['verdict']}** ({ci_text(p)})")
    return "\n".join(lines + png_lines(png, "learning curves"))


def _columns(tables: list[dict]) -> tuple[list[str], list[dict]]:
    """Table 1 results in column order (by corpus, then budget), and their headings."""
    cols = sorted(
        tables, key=lambda t: (t.get("corpus_name", "embedded"), t["budget"]["tokens_per_run"])
    )
    name = "{} {:g}M"
    return [
        name.format(t.get("corpus_name", "embedded"), t["budget"]["tokens_per_run"] / 1e6)
        for t in cols
    ], cols


def table1_budgets(tables: list[dict], standalone: bool = True) -> str:
    """Every Table 1 result side by side, by corpus and budget: the low-budget rows kept;
    standalone, with a heading and a note naming each partial column (a column whose
    variants have unequal numbers of seeds); else the table alone."""
    head, cols = _columns(tables)
    variants = list(dict.fromkeys(v for t in cols for v in t["summary"]))
    lines = (
        ["### Paper Table 1 at every budget run (val loss, mean ± std over seeds, n)", ""]
        if standalone
        else []
    )
    lines += [
        "| variant | " + " | ".join(head) + " | paper (1.5B) |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    for v in variants:
        cells = []
        for t in cols:
            s = t["summary"].get(v, {}).get("val_loss")
            cells.append(_mean_std(s) if s else "")
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {PAPER_TABLE1.get(v, '-')} |")
    notes = [
        f"- {name}: partial, {_unequal_seeds(t) or 'stopped before its last run'} "
        f"(seeds {t['seeds']})."
        for name, t in zip(head, cols, strict=True)
        if t.get("partial") or _unequal_seeds(t)
    ]
    return "\n".join(lines + ([""] + notes if notes and standalone else []))


def claims_by_budget(tables: list[dict]) -> str:
    """The paper's pairwise claims (rows: every adjacent pair of its order that some Table 1
    result judged) in every Table 1 result (columns, as in `table1_budgets`) where both
    variants ran: the verdict, the paired a - b with its 95% interval, and n."""
    head, cols = _columns(tables)
    claims = dict.fromkeys(
        p["claim"]
        for t in sorted(cols, key=lambda t: -len(t["summary"]))
        for p in t.get("pairwise") or []
        if p.get("kind") == "paper claim"
    )
    lines = ["| paper's claim | " + " | ".join(head) + " |", "|---|" + "---|" * len(cols)]
    for claim in claims:
        a, b = claim.split(" < ")
        cells = []
        for t in cols:
            p = paired(t["runs"], a, b)
            verdict = claim_verdict(p["ci95_low"], p["ci95_high"])
            n = f" (n={p['n']})" if p["ci95_low"] is not None else ""
            cells.append(f"**{verdict}** {ci_text(p)}{n}" if p["n"] else "")
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scaling(d: dict, png: Path | None = None) -> str:
    """The gaps between variants at each budget, and whether they grow."""
    budgets = [f"{t / 1e6:g}M" for t in d["budgets"]]
    lines = [
        f"### Does the gap between variants grow with the budget? ({d.get('corpus_name')} "
        f"corpus, {machine_text(d)})",
        "",
        f"Table 1 runs at {', '.join(budgets)} tokens per run, seeds "
        + ", ".join(
            f"{b} {sorted({s for g in pt['gaps'] for s in g['seeds']})}"
            for b, pt in zip(budgets, d["points"], strict=True)
        )
        + "; the change from the smallest budget to the largest pairs the seeds both have; each "
        "budget is its own run with its own learning-rate schedule (a 200M run's curve at 50M "
        "is not the 50M budget, so curves are not used). Gap = a − b in val loss, paired by "
        f"seed, 95% CI; a change within ±{d['margin']} counts as staying. " + provenance(d),
        "",
        "| gap | " + " | ".join(budgets) + " | change (largest − smallest) | verdict |",
        "|---|" + "---|" * (len(budgets) + 2),
    ]
    for i, t in enumerate(d["trends"]):
        cells = [ci_text(pt["gaps"][i]) for pt in d["points"]]
        change = ci_text(
            {"diff_mean": t["change_mean"], "n": len(t["seeds"])} | t
            if t["change_mean"] is not None
            else None
        )
        lines.append(
            f"| {t['a']} − {t['b']} | " + " | ".join(cells) + f" | {change} | **{t['verdict']}** |"
        )
    return "\n".join(lines + png_lines(png, "gaps against the budget"))


def table1_digest(d: dict) -> str:
    """One line on a Table 1 result: budget, seeds (partial or not), the paper's claims by
    verdict, Kendall tau, and the differences whose 95% interval excludes 0."""
    pairs = d.get("pairwise") or pairwise(d["runs"], d["variants"])
    claims = [p["verdict"] for p in pairs if p.get("kind") == "paper claim"]
    counts = ", ".join(f"{claims.count(v)} {v}" for v in dict.fromkeys(claims))
    resolved = [
        f"{p['a']} − {p['b']} {ci_text(p)}"
        for p in pairs
        if p.get("kind", "").startswith("vs") and p.get("ci95_low") is not None
        if p["ci95_low"] > 0 or p["ci95_high"] < 0
    ]
    unequal = _unequal_seeds(d)
    tau = d["ordering"]["kendall_tau"]
    return (
        f"{d.get('corpus_name', 'embedded')} {d['budget']['tokens_per_run'] / 1e6:g}M "
        f"({d['machine']['device']}; "
        + (f"partial: {unequal}" if unequal else f"{len(d['seeds'])} seeds per variant")
        + f"): the paper's {len(claims)} pairwise claims: {counts or 'none'}; Kendall tau with "
        f"its order {'-' if tau is None else f'{tau:.2f}'}; differences from MHA or GQA whose "
        f"95% interval excludes 0: {'; '.join(resolved) or 'none'}."
    )


def _pyplot():
    # matplotlib is optional (only the plots need it): imported when drawing
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(payload: dict, path: Path) -> None:
    """Validation loss against training tokens per variant: the mean over seeds with a
    band of +-1 std; the right panel zooms on the second half."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, c in payload["curves"].items():
        tokens, mean, std = c["tokens"], c["mean"], c["std"]  # the last point: the end
        for ax in axes:
            (line,) = ax.plot(tokens, mean, label=f"{label} (n={c['n'][-1]})")
            low = [m - s for m, s in zip(mean, std)]
            high = [m + s for m, s in zip(mean, std)]
            ax.fill_between(tokens, low, high, color=line.get_color(), alpha=0.2)
    half = payload["budget"]["tokens_per_run"] / 2
    late = [
        m for c in payload["curves"].values() for t, m in zip(c["tokens"], c["mean"]) if t >= half
    ]
    axes[1].set_xlim(half, payload["budget"]["tokens_per_run"] * 1.01)
    if late:
        axes[1].set_ylim(min(late) - 0.02, max(late) + 0.02)
    for ax in axes:
        ax.set_xlabel("training tokens")
        ax.set_ylabel("validation loss (nats/byte)")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Learning curves, {payload['corpus_name']} corpus, "
        f"{payload['budget']['tokens_per_run']:,} tokens, seeds {payload['seeds']} "
        "(mean +- 1 std)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def plot_scaling(payload: dict, path: Path) -> None:
    """Each gap a - b against the budget (log scale), with its 95% interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = payload["budgets"]
    for i, trend in enumerate(payload["trends"]):
        gaps = [pt["gaps"][i] for pt in payload["points"]]
        xs = [b * (1 + 0.03 * (i - 2)) for b in budgets]  # side by side, not on top
        ys = [g["diff_mean"] if g["diff_mean"] is not None else float("nan") for g in gaps]
        err = [
            [y - (g["ci95_low"] if g["ci95_low"] is not None else y) for y, g in zip(ys, gaps)],
            [(g["ci95_high"] if g["ci95_high"] is not None else y) - y for y, g in zip(ys, gaps)],
        ]
        label = f"{trend['a']} - {trend['b']}: {trend['verdict']}"
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens per run")
    ax.set_ylabel("val loss gap (nats/byte), 95% CI")
    ax.set_title(f"Gaps between variants vs budget ({payload['corpus_name']} corpus)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
