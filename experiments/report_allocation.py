"""The docs/results.md sections, and the README lines, of the allocation questions (issue
19): light SQA placed against the front with intervals (`experiments.light_sqa`), and the
per-layer question (`experiments.per_layer`): do the mixed allocations its search found beat
the uniform variants, and what the confirm says about the search that chose them.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from experiments.common import ROOT
from experiments.light_sqa import SPEED_TOLERANCE
from experiments.report_science import (
    ci_text,
    corpus_text,
    machine_text,
    png_lines,
    provenance,
    speed_text,
)
from experiments.science import losses_by_label, noise_parts
from sqa_nas.search.noise import Noise
from sqa_nas.stats import f_sf, mean_ci95, std_ci95, t_quantile_975


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
        + f". {provenance(d)}"
        + _reuse_caveat(d),
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
        f"Search: study {d['search']['study']}, {trials_text(d)}"
        + (f", scheduler {d['search']['scheduler']}" if d["search"].get("scheduler") else "")
        + f"; retrained with seeds {d['seeds']}"
        + (f", {run_tokens(d):,} tokens per run" if run_tokens(d) else "")
        + f"; {corpus_text(d)}. {provenance(d)}",
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
        f"**Answer: {d['verdict']['answer']}** ({d['verdict']['why']}). Speed ratio = "
        "uniform / mixed speedup over MHA; difference = uniform − mixed val loss; both "
        f"paired by seed, 95% CI; speeds within {d['tolerance']:.0%} count as equal.",
        "",
        "| mixed allocation | uniform | speed ratio | val loss diff | verdict |",
        "|---|---|---|---|---|",
    ]
    alloc = {m["label"]: m["allocation"] for m in d["mixed"]}
    for m, against in d["comparisons"].items():
        for u, c in against.items():
            lines.append(
                f"| {m} [{alloc.get(m, '')}] | {u} | {speed_text(c)} | {ci_text(c)} | "
                f"{c['verdict']} |"
            )
    check = search_check(d)
    still = what_keeps_it_open(d)["lines"]
    return "\n".join(lines + ["", *still, *check["lines"]])


def run_tokens(d: dict) -> int | None:
    """Training tokens per confirm run; a file from before it recorded its budget trained
    its space's (None when that counted steps)."""
    return (d.get("budget") or {}).get("tokens_per_run") or d["space"]["budget"]["train"].get(
        "tokens"
    )


def trials_text(d: dict) -> str:
    """`48 trials, 13 at the full budget`; a file from before the count of trials stopped
    at a rung counted only those at the full budget."""
    s = d["search"]
    full = s.get("full_budget")
    if full is None or full == s["trials"]:
        return f"{s['trials']} trials"
    return f"{s['trials']} trials, {full} at the full budget"


def what_keeps_it_open(d: dict) -> dict:
    """For an answer that is not resolved, what leaves its comparisons open. A verdict needs
    both axes (`per_layer.compare`): a val-loss difference beyond the noise, and a speed
    interval that shows which of the two is at least as fast -- the uniform / mixed ratio at
    or above 1 - tolerance, or at or below 1 + tolerance. Names the pairs whose loss differs
    beyond the noise, with their speed ratio and verdict, and counts the pairs whose speed
    interval shows one of the two at least as fast, with the intervals' median width.
    ``lines`` for the page and ``short`` for the README; both empty for a resolved answer or
    one without pairs."""
    if d["verdict"]["answer"] != "not resolved":
        return {"lines": [], "short": ""}
    tol, pairs, placed, widths = d["tolerance"], [], 0, []
    for m, against in d["comparisons"].items():
        for u, c in against.items():
            if c.get("ci95_low") is None:
                continue
            pairs.append((m, u, c))
            if c.get("speed_ci95"):
                low, high = c["speed_ci95"]
                widths.append(high - low)
                placed += low >= 1 - tol or high <= 1 + tol
    if not pairs:
        return {"lines": [], "short": ""}
    beyond = [(m, u, c) for m, u, c in pairs if c["ci95_low"] > 0 or c["ci95_high"] < 0]
    named = "; ".join(
        f"{u if c['ci95_high'] < 0 else m} lower than {m if c['ci95_high'] < 0 else u} by "
        f"{abs(c['diff_mean']):.4f} [{min(abs(c['ci95_low']), abs(c['ci95_high'])):.4f}, "
        f"{max(abs(c['ci95_low']), abs(c['ci95_high'])):.4f}], speed ratio {speed_text(c)}: "
        f"{c['verdict']}"
        for m, u, c in beyond
    )
    loss = f"the val loss differs beyond the noise in {len(beyond)} of {len(pairs)} pairs" + (
        f" ({named})" if beyond else ""
    )
    width = f", the intervals a median {statistics.median(widths):.2f} wide" if widths else ""
    speed = (
        f"the speed interval shows one of the two at least as fast (ratio at or above "
        f"{1 - tol:.2f}, or at or below {1 + tol:.2f}) in {placed} of {len(pairs)}{width}"
    )
    return {
        "lines": [f"What keeps it open: {loss}; {speed}.", ""],
        "short": f"{loss}; {speed}",
    }


def p_text(p: float) -> str:
    """A p-value as `p = 0.012`, or `p < 0.001`."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def sigma_ci(sigma: float, df: int) -> str:
    """A standard deviation's 95% interval (`std_ci95`) from its degrees of freedom."""
    low, high = std_ci95(sigma, df + 1) or (math.nan, math.nan)
    return f"[{low:.4f}, {high:.4f}]"


def search_check(d: dict) -> dict:
    """What the confirm says about the search that chose its mixed allocations.

    - Noise: the search judged its front with its noise floor, one layout's spread over a
      few seeds. Its trials share their seeds, so what their comparisons face is the
      allocation x seed part of the noise (`noise_parts`), which the confirm measures over
      every allocation it retrains. The floor holds that part and the seeds' shared one,
      so a part beyond the floor (one-sided F test, p < 0.05) says the floor is too small.
    - Selection: a mixed allocation's search value is one run. A fresh seed lands within
      the 95% prediction interval of the confirm's runs, mean +- t(n-1) * s * sqrt(1 +
      1/n); a search value below it is what choosing on a lucky run gives (the winner's
      curse), though each such check alone also errs low 2.5% of the time.

    Returns ``lines`` for the page and ``short`` for the README."""
    losses = losses_by_label(d["runs"])
    parts = noise_parts(losses, d["seeds"])
    noise = Noise.read({"noise": d["search"].get("noise")})
    speed = speed_check(d["runs"], noise)
    if parts is None:
        return {
            "lines": [
                "Fewer than two allocations have every seed: no val_loss noise figure.",
                *speed["lines"],
            ],
            "short": "; ".join(speed["short"]),
        }
    each = ", ".join(
        f"{k} {statistics.stdev(v.values()):.4f}" for k, v in losses.items() if len(v) > 1
    )
    measured = (
        f"the allocation x seed part of the noise, what two allocations trained with one "
        f"seed differ by, has sigma {parts['pair']:.4f} {sigma_ci(parts['pair'], parts['df'])} "
        f"({parts['allocations']} allocations "
        f"x {len(d['seeds'])} seeds, {parts['df']} degrees of freedom); the seeds' shared "
        f"part, which cancels there, sigma {parts['shared']:.4f}"
    )
    lines, short = [], []
    if noise.n >= 2 and noise.val_loss_std:
        ratio = parts["pair"] / noise.val_loss_std
        p = f_sf(ratio**2, parts["df"], noise.n - 1)
        verdict = (
            "the floor is smaller than the noise the search's comparisons face, beyond chance"
            if p < 0.05
            else "the floor cannot be told from it"
        )
        lines.append(
            f"Noise: the search judged its front with val_loss sigma {noise.val_loss_std:.4f} "
            f"{sigma_ci(noise.val_loss_std, noise.n - 1)} ({noise.n} seeds of trial "
            f"{noise.trial}, one layout, {noise.n - 1} degrees of freedom). In the confirm, "
            f"{measured}. That part is {ratio:.1f} times the "
            f"floor (one-sided F test, {p_text(p)}): {verdict}. Std over seeds per "
            f"allocation: {each}."
        )
        short.append(
            f"allocation x seed noise sigma {parts['pair']:.4f}, {ratio:.1f} times the "
            f"search's noise floor ({p_text(p)})"
        )
    else:
        why = noise.reason or (
            "its noise trial measured no val_loss spread" if noise.n >= 2 else "no noise trial"
        )
        lines.append(
            f"Noise: the search measured no noise floor ({why}). In the confirm, {measured}. "
            f"Std over seeds per allocation: {each}."
        )
    lines += speed["lines"]
    short += speed["short"]
    searched = d["space"]["budget"]["train"].get("tokens") if d.get("space") else None
    if searched != d["budget"]["tokens_per_run"]:
        lines.append(
            f"The search trained {searched} tokens per trial, the confirm "
            f"{d['budget']['tokens_per_run']}: their val losses do not compare."
        )
        return {"lines": lines, "short": "; ".join(short)}
    below, judged = [], 0
    for m in d["mixed"]:
        xs = list(losses.get(m["label"], {}).values())
        found = (m.get("search_values") or {}).get("val_loss")
        if len(xs) < 2 or found is None:
            continue
        judged += 1
        mean, n = statistics.fmean(xs), len(xs)
        half = t_quantile_975(n - 1) * statistics.stdev(xs) * math.sqrt(1 + 1 / n)
        if found < mean - half:
            below.append(m["label"])
            where = "below it, as choosing on a lucky run gives (the winner's curse)"
        else:
            where = "above it" if found > mean + half else "within it"
        lines.append(
            f"- {m['label']} (trial {m['trial']}): search val_loss {found:.4f}; a fresh seed "
            f"lands in {mean - half:.4f}-{mean + half:.4f} (the confirm's {n} runs, 95% "
            f"prediction interval): {where}."
        )
    if judged:
        short.append(
            f"{len(below)} of {judged} mixed allocations' search values below where a fresh "
            "seed lands"
        )
    return {"lines": lines, "short": "; ".join(short)}


def speed_check(runs: list[dict], noise: Noise) -> dict:
    """The speed axis against the search's floor: how much one allocation's speedup over
    MHA differs between its confirm runs (the std of its logarithm, a relative std, pooled
    over the allocations run with two seeds or more), beside the relative sigma the search
    took from its noise trial (timed once per seed in one process), with a one-sided F
    test. ``lines`` and ``short`` as `search_check`'s; none without two runs of a layout."""
    logs: dict[str, list[float]] = {}
    for r in runs:
        if r["state"] == "COMPLETE" and r.get("speedup_vs_mha"):
            logs.setdefault(r["label"], []).append(math.log(r["speedup_vs_mha"]))
    groups = [xs for xs in logs.values() if len(xs) > 1]
    df = sum(len(xs) - 1 for xs in groups)
    if not df:
        return {"lines": [], "short": []}
    spread = math.sqrt(sum((x - statistics.fmean(xs)) ** 2 for xs in groups for x in xs) / df)
    low, high = std_ci95(spread, df + 1) or (math.nan, math.nan)
    text = (
        f"Speed: one allocation's speedup over MHA differs between its confirm runs by "
        f"{spread:.2%} [{low:.2%}, {high:.2%}] (relative std pooled over {len(groups)} "
        f"allocations, {df} degrees of freedom)"
    )
    floor = noise.speedup_rel_std
    if noise.n < 2 or not floor:
        return {"lines": [text + "; the search measured no speed floor."], "short": []}
    ratio = spread / floor
    p = f_sf(ratio**2, df, noise.n - 1)
    verdict = (
        "between runs the speed axis is noisier than the search's floor, beyond chance"
        if p < 0.05
        else "the floor cannot be told from it"
    )
    return {
        "lines": [
            f"{text}; the search took {floor:.2%} ({noise.n} timings of its noise trial in "
            f"one process): {ratio:.1f} times that (one-sided F test, {p_text(p)}), {verdict}."
        ],
        "short": [
            f"speedup spread between runs {spread:.2%}, {ratio:.1f} times the search's "
            f"speed floor ({p_text(p)})"
        ],
    }


def _reuse_caveat(d: dict) -> str:
    """When Table 1's runs were reused: which allocations this command trained, and what
    comparing speeds across the two groups includes."""
    if not d.get("reused_from"):
        return ""
    reused = {(r["label"], r["seed"]) for r in d["runs"] if r.get("reused")}
    table = ROOT / d["reused_from"]
    table = json.loads(table.read_text()) if table.is_file() else None
    if not reused:  # a file from before runs were marked: matched against the table
        if table is None:
            return " Which runs were reused is not recorded, and the table is not here."
        reused = {(r["label"], r["seed"]) for r in table["runs"]} & {
            (r["label"], r["seed"]) for r in d["runs"]
        }
    trained = list(
        dict.fromkeys(r["label"] for r in d["runs"] if (r["label"], r["seed"]) not in reused)
    )
    revisions = ""
    if table is not None:
        parts = table.get("merged_from") or [table]
        seen = dict.fromkeys(str(m.get("git_revision"))[:7] for m in parts)
        word = "revisions" if len(seen) > 1 else "revision"
        revisions = f" (reused runs: git {word} {', '.join(seen)})"
    if not trained:
        return f" Every run was reused{revisions}."
    return (
        f" {', '.join(trained)} were trained by this command, the others reused{revisions}, "
        "in other processes (and on another machine of the same kind when run in another "
        "session): a speed difference between the two groups also holds their machines' "
        "difference, which pairing by seed does not remove."
    )


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
    beaten = d["lsqa"].get("beaten_by", [])
    deciders = beaten or d["lsqa"].get("could_be_beaten_by", [])
    if not deciders:
        return head + "."
    verb = "beaten beyond the noise by" if beaten else "could be beaten by"
    return (
        f"{head}, {verb} "
        + "; ".join(_light_pair(d, b) for b in deciders)
        + f". lSQA was compared with each of the other {len(d['front']) - 1} allocations; "
        "the intervals are not adjusted for that many comparisons."
    )


def _light_pair(d: dict, b: str) -> str:
    """`b` against lSQA as `light_sqa.front_verdicts` judged it, over the same runs: the
    val-loss and speed differences b - lSQA paired by seed, the speed's as a share of
    lSQA's mean speed (within `SPEED_TOLERANCE` below it counts as as fast)."""
    runs = [r for r in d["runs"] if r["state"] == "COMPLETE" and r.get("train_tokens_per_s")]

    def per_seed(label: str, key: str) -> dict:
        return {r["seed"]: r[key] for r in runs if r["label"] == label}

    loss_b, loss_l = per_seed(b, "val_loss"), per_seed("lSQA", "val_loss")
    speed_b, speed_l = per_seed(b, "train_tokens_per_s"), per_seed("lSQA", "train_tokens_per_s")
    seeds = sorted(set(loss_b) & set(loss_l))
    loss = mean_ci95([loss_b[s] - loss_l[s] for s in seeds])
    speed = mean_ci95([speed_b[s] - speed_l[s] for s in seeds])
    if loss is None or speed is None:
        return f"{b} (n={len(seeds)}, no interval)"
    base = statistics.fmean(speed_l.values())
    return (
        f"{b} ({d['summary'][b]['allocation'].split()[0]}): val loss {b} − lSQA "
        f"{loss[0]:+.4f} [{loss[1]:+.4f}, {loss[2]:+.4f}], tokens/s {speed[0] / base:+.1%} "
        f"[{speed[1] / base:+.1%}, {speed[2] / base:+.1%}] of lSQA's (n={len(seeds)}, paired "
        f"by seed; down to -{SPEED_TOLERANCE:.0%} counts as as fast)"
    )


def per_layer_digest(d: dict) -> str:
    """One line on a per-layer result: does a mixed allocation beat the uniform ones."""
    head = (
        f"**Per-layer allocation** (a search of {trials_text(d)}, its mixed "
        f"allocations retrained with seeds {d['seeds']}"
        + (f" at {run_tokens(d):,} tokens" if run_tokens(d) else "")
        + f", {d['machine']['device']}): "
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
    short = search_check(d)["short"]
    still = what_keeps_it_open(d)["short"]
    return (
        head
        + f"{d['verdict']['answer']} ({d['verdict']['why']})"
        + (f". What keeps it open: {still}" if still else "")
        + (f". The search against its confirm: {short}." if short else ".")
    )
