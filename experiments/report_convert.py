"""The docs/results.md section of issue 20's experiment (`experiments.convert_gqa`): a
pretrained GQA model converted to SQA layouts by each method, before and after a short
fine-tune, against the same variants trained from scratch for the same total tokens and the
GQA parent; and the answer to the paper's question, with the numbers: from two seeds on,
differences paired by seed with their intervals; with one seed, judged against the
seed-to-seed spread of Table 1 at the same budget and corpus (`spread`).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from experiments.convert_gqa import gaps
from experiments.report_science import machine_text

SPREAD_FACTOR = 2  # a gap is beyond the spread when larger than 2 sigma


def comparable(d: dict, t: dict) -> bool:
    """Whether Table 1 result `t` ran at this experiment's pretraining tokens per run on
    the same corpus (its fingerprint), so that its runs compare with this file's."""
    same = t["budget"]["tokens_per_run"] == d["budget"]["pretrain_tokens"]
    return same and t["corpus"].get("fingerprint") == d["corpus"].get("fingerprint")


def spread(d: dict, tables: list[dict]) -> dict | None:
    """The seed-to-seed std of val loss at this experiment's budget: the largest over the
    Table 1 variants with two or more seeds at the same tokens per run and corpus, and over
    this file's own cells with two or more seeds; None when neither has one."""
    found: list[tuple[float, str, int]] = []
    for t in tables:
        if not comparable(d, t):
            continue
        for name, s in t["summary"].items():
            v = s.get("val_loss", {})
            if v.get("n", 0) >= 2:
                found.append((v["std"], f"{name} in {t.get('_file', 'Table 1')}", v["n"]))
    for key, s in d["summary"].items():
        if s["runs"] >= 2:
            found.append((s["std"], f"{key} here", s["runs"]))
    if not found:
        return None
    sigma, where, n = max(found)
    return {"sigma": sigma, "where": where, "n": n, "all": found}


def _cell(s: dict | None) -> str:
    if not s:
        return ""
    return (
        f"{s['mean']:.4f}" if s["runs"] < 2 else f"{s['mean']:.4f} ± {s['std']:.4f} ({s['runs']})"
    )


def _check_cells(d: dict) -> None:
    """A finished result has every variant's every method at every fine-tune fraction: a
    missing one raises KeyError naming it (the report refuses the file) rather than the
    best conversion being picked among the others."""
    for v in d["variants"]:
        for f in d["budget"]["fractions"]:
            for m in d["methods"]:
                d["summary"][f"{v}/{m}/{f}"]


def _judged(gap: dict | None, sigma: float | None) -> str:
    """A paired difference: with its interval from two seeds on, else judged by the spread."""
    if not gap:
        return "-"
    if gap["ci95"] is not None:
        low, high = gap["ci95"]
        return f"{gap['mean']:+.4f} [{low:+.4f}, {high:+.4f}]"
    if sigma is None:
        return f"{gap['mean']:+.4f}"
    beyond = abs(gap["mean"]) > SPREAD_FACTOR * sigma
    return f"{gap['mean']:+.4f} ({'beyond' if beyond else 'within'})"


def answer(d: dict, found: dict | None) -> tuple[str, str]:
    """(yes | no | not resolved, why): does a converted GQA model, fine-tuned, reach the
    same variant trained from scratch for the same total tokens? With two seeds or more each
    best conversion is judged by its interval paired by seed; with one, by the spread."""
    rows = [g for g in gaps(d) if g["vs_scratch"]]
    if not rows:
        return "not resolved", "no from-scratch runs to compare with"
    fractions = " or ".join(f"{f:.0%}" for f in d["budget"]["fractions"])
    means = sorted(g["vs_scratch"]["mean"] for g in rows)
    span = f"{means[0]:+.4f} to {means[-1]:+.4f}"
    if all(g["vs_scratch"]["ci95"] is not None for g in rows):
        n = min(g["vs_scratch"]["n"] for g in rows)
        by = {
            v: [g for g in rows if g["vs_scratch"]["verdict"] == v]
            for v in ("contradicts", "supports", "cannot tell")
        }
        if len(by["contradicts"]) == len(rows):
            return "no", (
                f"every best conversion, fine-tuned for {fractions} of the pretraining tokens, "
                f"ends above the same variant trained from scratch for the same total tokens, "
                f"by {span} in val loss, each 95% interval paired by seed (n={n}) above 0"
            )
        if len(by["supports"]) == len(rows):
            return "yes", f"every best conversion ends below scratch, by {span}, n={n}"
        named = "; ".join(
            f"{g['variant']} +{g['fraction']:.0%} {_judged(g['vs_scratch'], None)}"
            for g in by["cannot tell"]
        )
        return "not resolved", (
            f"of {len(rows)} best conversions (n={n} seeds), {len(by['contradicts'])} end above "
            f"scratch and {len(by['supports'])} below beyond their 95% intervals paired by "
            f"seed; the interval spans 0 for {named}"
        )
    if found is None:
        return "not resolved", "no seed-to-seed spread at this budget to judge the gaps by"
    limit = SPREAD_FACTOR * found["sigma"]
    if means[0] > limit:
        return "no", (
            f"every conversion, fine-tuned for {fractions} of the pretraining tokens, ends "
            f"above the same variant trained from scratch for the same total tokens, by "
            f"{span} in val loss, each more than {SPREAD_FACTOR} sigma ({limit:.4f})"
        )
    if means[-1] < -limit:
        return "yes", f"every conversion ends below scratch, by {span}, beyond {limit:.4f}"
    return "not resolved", f"conversion − scratch spans {span}, some within {limit:.4f}"


def convert(d: dict, png: Path | None = None, tables: list[dict] | None = None) -> str:
    """A convert_gqa result: the runs' table, the gaps judged against the seed spread and
    the answer to the paper's question."""
    b, m, seeds, summary = d["budget"], d["model"], d["seeds"], d["summary"]
    fractions = b["fractions"]
    cal = b["calibration"]
    merged = "".join(f"; joined from `{x['command']}`" for x in d.get("merged_from", []))
    lines = [
        f"### Converting the trained GQA model to SQA layouts ({machine_text(d)})",
        "",
        "The paper's first open question: can a pretrained GQA model become SQA with a short "
        f"fine-tune, instead of training SQA from scratch? Its GQA model (d_model {m['d_model']}, "
        f"{m['n_layers']} layers, H {m['n_heads']}, FFN "
        f"{m['ffn_dim']}, context {m['seq_len']}) pretrained for {b['pretrain_tokens']:,} "
        f"tokens (batch {b['batch_size']}, lr {b['lr']}"
        f"{', compiled' if b.get('compile') else ''}) on the {d['corpus']['kind']} corpus "
        f"(fingerprint {str(d['corpus'].get('fingerprint'))[:16]}); converted to "
        f"{', '.join(d['variants'])} by {', '.join(d['methods'])} (`sqa_nas.convert`, "
        f"calibration {cal['batches']} x {cal['batch_size']} x {cal['seq_len']} tokens); each "
        f"conversion fine-tuned for "
        + " and ".join(f"{f:.0%}" for f in fractions)
        + f" of the pretraining tokens (lr {b['ft_lr']}, each its own run); compared with "
        "the same variants trained from scratch for the same total tokens and with the "
        f"parent continued for the same extra tokens. Seeds {seeds}. Command: "
        f"`{d['command']}`{merged}.",
        "",
    ]
    _check_cells(d)
    found = spread(d, tables or [])
    sigma = found["sigma"] if found else None
    if len(seeds) == 1:
        lines += [f"**One seed ({seeds[0]}): every value below is a single run.**", ""]
    if len(seeds) >= 2:
        lines.append(
            "Each difference below is the best conversion's val loss minus the other's, "
            f"paired by seed, with its 95% t-interval over {len(seeds)} seeds; a difference "
            "whose interval spans 0 is not resolved. The best method is picked by the same "
            "means, so its interval is slightly optimistic."
        )
    elif found:
        lines.append(
            f"The seed-to-seed spread at this budget is taken from {found['where']}: val loss "
            f"std {found['sigma']:.4f} over {found['n']} seeds, the largest of "
            f"{len(found['all'])} such stds (the others "
            f"{', '.join(f'{s:.4f}' for s, w, _ in sorted(found['all'])[:-1]) or 'none'}). "
            f"A gap counts as beyond the spread when larger than {SPREAD_FACTOR} sigma = "
            f"{SPREAD_FACTOR * found['sigma']:.4f}: a rough yardstick from "
            f"{found['n']} seeds, not an interval."
        )
    else:
        lines.append("No seed-to-seed spread at this budget: the gaps below are not judged.")
    kind, why = answer(d, found)
    count = "one seed" if len(seeds) == 1 else f"{len(seeds)} seeds"
    lines += ["", f"**Answer ({count}): {kind}** ({why}).", ""]
    lines += [
        "| variant | method | output error on calibration (mean of layers) | "
        "val loss, converted | " + " | ".join(f"after +{f:.0%}" for f in fractions) + " |",
        "|---|---|---|---|" + "---|" * len(fractions),
        f"| GQA | parent ({b['pretrain_tokens'] / 1e6:g}M tokens) | | "
        f"{_cell(summary.get('GQA/parent/0.0'))} |" + " |" * len(fractions),
        "| GQA | parent continued | | | "
        + " | ".join(_cell(summary.get(f"GQA/continued/{f}")) for f in fractions)
        + " |",
    ]
    for v in d["variants"]:
        for method in d["methods"]:
            errors = [
                r["output_error"]
                for r in d["runs"]
                if r["variant"] == v and r["method"] == method and r["fraction"] == 0.0
                if r.get("output_error") is not None
            ]
            error = f"{statistics.fmean(errors):.3f}" if errors else ""
            lines.append(
                f"| {v} | {method} | {error} | {_cell(summary.get(f'{v}/{method}/0.0'))} | "
                + " | ".join(_cell(summary.get(f"{v}/{method}/{f}")) for f in fractions)
                + " |"
            )
        lines.append(
            f"| {v} | scratch (same total tokens) | | | "
            + " | ".join(_cell(summary.get(f"{v}/scratch/{f}")) for f in fractions)
            + " |"
        )
    lines += [
        "",
        "| variant | fine-tune | best conversion | scratch | conversion − scratch | "
        "conversion − GQA parent |",
        "|---|---|---|---|---|---|",
    ]
    for g in gaps(d):
        lines.append(
            f"| {g['variant']} | +{g['fraction']:.0%} | {g['method']} {g['best']:.4f} | "
            f"{'-' if g['scratch'] is None else format(g['scratch'], '.4f')} | "
            f"{_judged(g['vs_scratch'], sigma)} | {_judged(g['vs_parent'], sigma)} |"
        )
    lines += ["", *notes(d, tables or [])]
    if png is not None:
        lines += [
            "",
            f"![conversion before and after fine-tuning](../experiments/results/{png.name})",
        ]
    return "\n".join(lines)


def notes(d: dict, tables: list[dict]) -> list[str]:
    """What else the numbers show: the best method before fine-tuning, the scratch runs'
    learning rate where they are read, the parent continued, the parent against Table 1
    (of the same budget and corpus)."""
    summary, out = d["summary"], []
    for v in d["variants"]:
        before = {m: summary[f"{v}/{m}/0.0"]["mean"] for m in d["methods"]}
        order = sorted(before, key=lambda m: before[m])
        out.append(
            f"- {v} before fine-tuning: "
            + ", ".join(f"{m} {before[m]:.4f}" for m in order)
            + "; after the longest fine-tune the order is "
            + ", ".join(
                sorted(
                    d["methods"],
                    key=lambda m: summary[f"{v}/{m}/{d['budget']['fractions'][-1]}"]["mean"],
                )
            )
            + "."
        )
    lrs = sorted({r["fraction"]: r["lr_at_eval"] for r in d["runs"] if "lr_at_eval" in r}.items())
    if lrs:
        out.append(
            "- The from-scratch runs are one run per variant, planned for the longest budget "
            "and read on the way: their learning rate at each reading is "
            + ", ".join(f"{lr:.3f} x peak at +{f:.0%}" for f, lr in lrs)
            + "."
        )
    parent = summary.get("GQA/parent/0.0")
    continued = [(f, summary.get(f"GQA/continued/{f}")) for f in d["budget"]["fractions"]]
    if parent and all(c for _, c in continued):
        out.append(
            f"- The parent ({parent['mean']:.4f}) continued: "
            + ", ".join(f"+{f:.0%} {c['mean']:.4f}" for f, c in continued if c)
            + "."
        )
    first = d["budget"]["fractions"][0]
    for t in tables:
        if not comparable(d, t):
            continue
        theirs = {(r["label"], r["seed"]): r.get("val_loss") for r in t["runs"]}
        for seed in d["seeds"]:
            pairs = [("GQA", "parent", 0.0), *((v, "scratch", first) for v in d["variants"])]
            mine = {
                (r["variant"], r["method"], r["fraction"]): r["val_loss"]
                for r in d["runs"]
                if r["seed"] == seed
            }
            cells = [
                f"{v} {theirs[v, seed]:.4f} (here, {method}"
                + (f" at +{f:.0%}" if f else "")
                + f": {mine[v, method, f]:.4f}, {mine[v, method, f] - theirs[v, seed]:+.4f})"
                for v, method, f in pairs
                if theirs.get((v, seed)) is not None and (v, method, f) in mine
            ]
            if cells:
                out.append(
                    f"- Table 1 at the same tokens per run ({t.get('_file', 'Table 1')}), "
                    f"seed {seed}: " + "; ".join(cells) + "."
                )
    return out


def digest(d: dict, tables: list[dict]) -> str:
    """The README's line on the conversion experiment: the answer and its numbers."""
    _check_cells(d)
    kind, why = answer(d, spread(d, tables))
    seeds = d["seeds"]
    count = "one seed" if len(seeds) == 1 else f"{len(seeds)} seeds"
    after = [g for g in gaps(d) if g["fraction"] == d["budget"]["fractions"][-1]]
    sigma = (spread(d, tables) or {}).get("sigma")
    parent = ", ".join(
        f"{g['variant']} {_judged(g['vs_parent'], sigma)}" for g in after if g["vs_parent"]
    )
    return (
        f"**Converting a trained GQA model to SQA layouts** ({count}, "
        f"{d['budget']['pretrain_tokens'] / 1e6:g}M-token parent, {d['machine']['device']}): "
        f"does a short fine-tune reach training from scratch? **{kind}**: {why}. After "
        f"+{d['budget']['fractions'][-1]:.0%}, best conversion − GQA parent: {parent}."
    )
