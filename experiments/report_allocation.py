"""The docs/results.md sections, and the README lines, of the allocation questions (issue
19): light SQA placed against the front with intervals (`experiments.light_sqa`), and the
per-layer question (`experiments.per_layer`): do the mixed allocations its search found beat
the uniform variants, and what the confirm says about the search that chose them.
"""

from __future__ import annotations

from pathlib import Path

from experiments.report_science import ci_text, corpus_text, machine_text, png_lines, provenance
from sqa_nas.stats import mean_ci95


def light(d: dict, png: Path | None) -> str:
    """Light SQA: each allocation with intervals over seeds and its place on the front."""
    if "front" not in d:  # a file from before issue 19: one run per allocation
        lines = [
            f"### Light SQA, one run per allocation ({machine_text(d)})",
            "",
            f"{len(d['trials'])} allocations, one seed each, "
            f"{d['space']['budget']['train'].get('tokens')} tokens; {corpus_text(d)}. "
            f"Command: `{d['command']}`. lSQA ({d['light']}) on the front: "
            f"{d['lsqa_on_front']}; one seed cannot tell a gap from the seed spread.",
            "",
            "| H_q/H_kv | val loss | speedup vs MHA | on front |",
            "|---|---|---|---|",
        ]
        for t in sorted(d["trials"], key=lambda t: t["val_loss"]):
            sp = t.get("speedup_vs_mha")
            lines.append(
                f"| {t['allocation'].split(' x')[0]} {t.get('seed_variant') or ''} | "
                f"{t['val_loss']:.4f} | {f'{sp:.2f}x' if sp else '-'} | "
                f"{'yes' if t['on_front'] else ''} |"
            )
        return "\n".join(lines + png_lines(png, "light SQA front"))
    b = d["budget"]
    lines = [
        f"### Light SQA (H_q = 3H/4) with intervals ({machine_text(d)})",
        "",
        f"One H_q/H_kv for all layers, {len(d['allocations'])} allocations x seeds "
        f"{d['seeds']}, {b['tokens_per_run']:,} tokens per run; {corpus_text(d)}"
        + (f"; Table 1 runs reused from {d['reused_from']}" if d.get("reused_from") else "")
        + f". {provenance(d)}",
        "",
        f"**lSQA ({d['light']}): {d['lsqa']['verdict']}**"
        + (
            f" (beaten by {', '.join(d['lsqa']['beaten_by'])})"
            if d["lsqa"].get("beaten_by")
            else ""
        )
        + ".",
        "",
        "| allocation | val loss (mean ± std, n) | train tokens/s (mean ± std) | front | "
        "beaten beyond noise by | could be beaten by |",
        "|---|---|---|---|---|---|",
    ]
    for label, s in sorted(d["summary"].items(), key=lambda kv: kv[1].get("mean", 1e9)):
        if "val_loss" not in s or "train_tokens_per_s" not in s:
            continue
        f, v, t = d["front"].get(label, {}), s["val_loss"], s["train_tokens_per_s"]
        lines.append(
            f"| {label} ({s['allocation'].split(' x')[0]}) | {v['mean']:.4f} ± {v['std']:.4f} "
            f"({v['n']}) | {t['mean']:,.0f} ± {t['std']:,.0f} | {f.get('verdict', '')} | "
            f"{', '.join(f.get('beaten_by', []))} | {', '.join(f.get('could_be_beaten_by', []))} |"
        )
    return "\n".join(lines + png_lines(png, "light SQA front with intervals"))


def per_layer(d: dict) -> str:
    """The per-layer question: the confirmed mixed allocations against uniform variants."""
    lines = [
        f"### Per-layer allocation vs uniform variants ({machine_text(d)})",
        "",
        f"Search: study {d['search']['study']}, {d['search']['trials']} trials"
        + (f", scheduler {d['search']['scheduler']}" if d["search"].get("scheduler") else "")
        + f"; retrained with seeds {d['seeds']}; {corpus_text(d)}. {provenance(d)}",
        "",
    ]
    if d.get("partial"):
        lines += [f"**Stopped after {len(d['runs'])} retraining runs; no verdict.**", ""]
        return "\n".join(lines)
    if "comparisons" not in d:  # a file from before issue 19: seed spreads, no intervals
        v = d["verdicts"]
        return "\n".join(
            lines
            + [
                f"Mixed [{d['mixed']['allocation']}]: "
                + "; ".join(f"{u}: {x['verdict']}" for u, x in v.items())
                + f". Mixed beats every comparable uniform variant: "
                f"{d['mixed_beats_all_comparable']}."
            ]
        )
    lines += [
        f"**Answer: {d['verdict']['answer']}** ({d['verdict']['why']}). Comparable: the "
        f"uniform variant is at most {d['tolerance']:.0%} faster; difference = uniform − "
        "mixed val loss, paired by seed, 95% CI.",
        "",
        "| mixed allocation | uniform | throughput ratio | comparable | val loss diff | verdict |",
        "|---|---|---|---|---|---|",
    ]
    alloc = {m["label"]: m["allocation"] for m in d["mixed"]}
    for m, against in d["comparisons"].items():
        for u, c in against.items():
            lines.append(
                f"| {m} [{alloc.get(m, '')}] | {u} | {c['throughput_ratio']:.3f} | "
                f"{'yes' if c['comparable'] else 'no'} | {ci_text(c)} | {c['verdict']} |"
            )
    return "\n".join(lines)


def light_digest(d: dict) -> str:
    """One line on a light-SQA result: is lSQA on the front."""
    if "front" not in d:  # a file from before issue 19: one run per allocation
        tokens = d["space"]["budget"]["train"].get("tokens")
        return (
            f"**Light SQA** ({len(d['trials'])} allocations, one seed each, {tokens:,} tokens, "
            f"{d['machine']['device']}): lSQA ({d['light']}) "
            f"{'on' if d['lsqa_on_front'] else 'not on'} the front; one seed cannot tell a "
            "gap from the seed spread."
        )
    head = (
        f"**Light SQA** ({len(d['allocations'])} allocations x seeds {d['seeds']}, "
        f"{d['budget']['tokens_per_run']:,} tokens, {d['machine']['device']}): lSQA "
        f"({d['light']}) {d['lsqa']['verdict']}"
    )
    deciders = d["lsqa"]["beaten_by"] or d["lsqa"]["could_be_beaten_by"]
    if not deciders:
        return head + "."
    verb = "beaten beyond the noise by" if d["lsqa"]["beaten_by"] else "could be beaten by"
    return (
        f"{head}, {verb} "
        + "; ".join(_light_pair(d, b) for b in deciders)
        + f". lSQA was compared with each of the other {len(d['summary']) - 1} allocations; "
        "the intervals are not adjusted for that many comparisons."
    )


def _light_pair(d: dict, b: str) -> str:
    """`b` against lSQA, paired by seed: the val-loss difference and the speed ratio."""
    runs = [r for r in d["runs"] if r["state"] == "COMPLETE"]

    def per_seed(label: str, key: str) -> dict:
        return {r["seed"]: r[key] for r in runs if r["label"] == label}

    loss_b, loss_l = per_seed(b, "val_loss"), per_seed("lSQA", "val_loss")
    speed_b, speed_l = per_seed(b, "train_tokens_per_s"), per_seed("lSQA", "train_tokens_per_s")
    seeds = sorted(set(loss_b) & set(loss_l))
    loss = mean_ci95([loss_b[s] - loss_l[s] for s in seeds])
    speed = mean_ci95([speed_b[s] / speed_l[s] - 1 for s in seeds])
    if loss is None or speed is None:
        return f"{b} (n={len(seeds)}, no interval)"
    return (
        f"{b} ({d['summary'][b]['allocation'].split()[0]}): val loss {loss[0]:+.4f} "
        f"[{loss[1]:+.4f}, {loss[2]:+.4f}], tokens/s {speed[0]:+.1%} "
        f"[{speed[1]:+.1%}, {speed[2]:+.1%}] (n={len(seeds)}, paired by seed)"
    )


def per_layer_digest(d: dict) -> str:
    """One line on a per-layer result: does a mixed allocation beat the uniform ones."""
    head = (
        f"**Per-layer allocation** (a search of {d['search']['trials']} trials, its mixed "
        f"allocations retrained with seeds {d['seeds']}, {d['machine']['device']}): "
    )
    if d.get("partial"):
        return head + "stopped before its last run; no verdict."
    if "comparisons" not in d:  # a file from before issue 19: seed spreads, no intervals
        beats = "beats" if d["mixed_beats_all_comparable"] else "does not beat"
        verdicts: dict[str, list[str]] = {}
        for uniform, v in d["verdicts"].items():
            verdicts.setdefault(v["verdict"], []).append(uniform)
        return head + (
            f"the mixed allocation [{d['mixed']['allocation']}] {beats} every comparable "
            "uniform variant ("
            + "; ".join(f"{k}: {', '.join(us)}" for k, us in verdicts.items())
            + "; seed spreads, no intervals)."
        )
    return head + f"{d['verdict']['answer']} ({d['verdict']['why']})."
