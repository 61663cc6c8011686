"""Write docs/results.md from the committed result files of the quality experiments
(paper_table1_*.json, scaling_*.json, light_sqa_*.json, per_layer_*.json; their sections are
in `report_science`) and of the objectives' noise
(noise_*.json, paired_timing_*.json); smoke runs are skipped.

    python -m experiments.results_report
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from experiments.common import DOCS, RESULTS
from experiments.report_science import (
    light,
    machine_text,
    per_layer,
    scaling,
    table1,
    table1_budgets,
)


def noise(d: dict) -> str:
    """The noise floor of a search and the confirm of its front (`noise_floor`)."""
    n, v, c = d["noise"], d["verdict"], d.get("confirm") or {}
    by_number = {t["number"]: t for t in d["trials"]}
    lines = [
        f"### The noise floor of a search, and its front confirmed ({machine_text(d)}, "
        f"{(c.get('ended') or '?')[:16].replace('T', ' ')})",
        "",
        f"`paper_dense.yaml` at {d['tokens_per_trial']:,} training tokens per trial, "
        f"{d['n_trials']} trials (objectives {', '.join(d['objectives'])}), then `sqa-nas "
        f"confirm` of its front with {len(c.get('seeds', []))} fresh seeds. Command: "
        f"`{d['command']}` ({d['search_s']:.0f} s search, {d['confirm_s']:.0f} s confirm)."
        + (f" Conditions: {d['conditions']}" if d.get("conditions") else ""),
        "",
        f"Noise, from the MHA baseline trained with {n['n']} seeds: val_loss sigma "
        f"{n['val_loss_std']:.4f}; throughput {n['throughput_rel_std']:.2%} and speedup "
        f"{n['speedup_rel_std']:.2%} (relative std of {n['n']} paired timings).",
        "",
        f"Verdict: {v['summary']}",
        "",
        "| trial | baseline | per-layer H_q/H_kv | val_loss (search) | speedup vs MHA "
        "| confirmed val_loss (mean ± std) | on the front |",
        "|---|---|---|---|---|---|---|",
    ]
    confirmed = c.get("trials", {})
    for number in v["front"] + v["indistinguishable"]:
        t = by_number[number]
        row = confirmed.get(str(number))
        mean = f"{row['val_loss_mean']:.4f} ± {row['val_loss_std']:.4f}" if row else ""
        where = "yes" if number in v["front"] else "within 2 sigma"
        if row:
            where += ", confirmed" if row["on_front"] else ", drops off when confirmed"
        lines.append(
            f"| {number} | {t['seed_variant'] or ''} | {t['allocation']} | "
            f"{t['values']['val_loss']:.4f} | {t['metrics'].get('speedup_vs_mha', 0):.3f} | "
            f"{mean} | {where} |"
        )
    if c:
        lines += ["", f"Confirm: {c['summary']}."]
    # What it means, from the figures above.
    seeds = [t["values"]["val_loss"] for t in d["trials"] if t["seed_variant"] and t["values"]]
    speeds = [t["metrics"]["speedup_vs_mha"] for t in d["trials"] if t["values"]]
    sigma = n["val_loss_std"]
    lines += [
        "",
        f"What it means: the timing noise ({n['speedup_rel_std']:.2%} of a speedup) is "
        f"{(max(speeds) - min(speeds)) / max(n['speedup_rel_std'] * max(speeds), 1e-9):.0f} "
        "times smaller "
        f"than the spread of the trials' speedups ({min(speeds):.2f}-{max(speeds):.2f}x), so "
        "on this GPU the speed axis is resolved; the quality axis is not: one seed's "
        f"val_loss sigma ({sigma:.3f}) is {sigma / (max(seeds) - min(seeds)):.0%} of the "
        f"whole spread of the baselines ({min(seeds):.3f}-{max(seeds):.3f}).",
    ]
    for number, row in confirmed.items():
        t = by_number[int(number)]
        shift = (row["val_loss_mean"] - t["values"]["val_loss"]) / sigma
        lines.append(
            f"Trial {number}'s search val_loss {t['values']['val_loss']:.4f} sits "
            f"{abs(shift):.1f} sigma {'below' if shift > 0 else 'above'} its confirmed mean "
            f"{row['val_loss_mean']:.4f}."
        )
    return "\n".join(lines)


def paired(d: dict) -> str:
    """Paired timing alone and under a competing load (`paired_timing`)."""
    lines = [
        f"### The speedup objective under a competing load ({machine_text(d)})",
        "",
        f"The quickstart's MHA and xSQA seed trials timed by the search's trial code, "
        f"{d['runs']} times each, alone and with {d['competing_processes']} CPU-bound "
        f"processes competing for the cores. Command: `{d['command']}`. "
        '"Unpaired" is what a trial would have reported before paired timing: its '
        "tokens/s over an MHA reference measured once, alone.",
        "",
        "| condition | variant | paired speedup (range over runs) | unpaired speedup | "
        "median timing s | flagged noisy |",
        "|---|---|---|---|---|---|",
    ]
    for key, s in d["summary"].items():
        condition, variant = key.split("/")
        rows = [r for r in d["timings"] if r["condition"] == condition and r["variant"] == variant]
        noisy = sum(bool(r["noisy_throughput"]) for r in rows)
        lo, hi = s["speedup_vs_mha"]
        ulo, uhi = s["unpaired_speedup"]
        lines.append(
            f"| {condition} | {variant} | {lo:.3f}-{hi:.3f} | {ulo:.3f}-{uhi:.3f} | "
            f"{s['median_throughput_s']:.1f} | {noisy} of {len(rows)} |"
        )
    alone, loaded = d["summary"]["alone/MHA"], d["summary"]["competing/MHA"]
    lines += [
        "",
        f"What it means: under the load the MHA trial's paired speedup over its own MHA "
        f"reference stays {loaded['speedup_vs_mha'][0]:.2f}-{loaded['speedup_vs_mha'][1]:.2f} "
        f"(alone {alone['speedup_vs_mha'][0]:.2f}-{alone['speedup_vs_mha'][1]:.2f}), where "
        f"the unpaired ratio falls to {loaded['unpaired_speedup'][0]:.2f}-"
        f"{loaded['unpaired_speedup'][1]:.2f}. Pairing does not make a loaded machine exact: "
        "the other rows show how far a layout's paired speedup moved under the load, and "
        "a timing whose interval stayed wider than the target is flagged noisy.",
    ]
    return "\n".join(lines)


def multi_fidelity(d: dict, png: Path | None) -> str:
    """MO-ASHA against full-budget NSGA-II under the same GPU time (`mo_asha`)."""
    st, sm = d["settings"], d["summary"]
    lines = [
        f"### Multi-fidelity search: MO-ASHA against NSGA-II ({machine_text(d)})",
        "",
        f"`paper_dense.yaml` (objectives val_loss, speedup_vs_mha), full budget "
        f"{st['tokens']:,} tokens per trial, {st['gpu_seconds_per_run']:g} GPU-seconds per run "
        f"(one GPU each), MO-ASHA rungs from {st['min_tokens']:,} tokens with eta {st['eta']} "
        f"and random sampling, NSGA-II with full budgets; MHA as the only baseline, no noise "
        f"trial, eager training in both arms. Hypervolume of the full-budget front against the "
        f"fixed reference {d['reference']}.",
        "",
        "| sampler seed | NSGA-II final hypervolume | its GPU-seconds | MO-ASHA final "
        "hypervolume | MO-ASHA reached NSGA-II's final at | share of NSGA-II's time |",
        "|---|---|---|---|---|---|",
    ]
    for p in sm["pairs"]:
        reached = p["mo_asha_gpu_s_to_reach"]
        share = p["share_of_nsga2_gpu_time"]
        lines.append(
            f"| {p['seed']} | {p['nsga2_final_hv']:.4f} | {p['nsga2_gpu_s']:.0f} | "
            f"{p['mo_asha_final_hv']:.4f} | {'never' if reached is None else f'{reached:.0f} s'}"
            f" | {'-' if share is None else f'{share:.0%}'} |"
        )
    lines += ["", f"Verdict: {sm['verdict']}.", ""]
    runs = {(r["arm"], r["seed"]): r for r in d["runs"]}
    for r in d["runs"]:
        if r["arm"] != "mo_asha":
            continue
        full = runs.get(("nsga2", r["seed"]))
        ladder = "; ".join(
            f"rung {g['rung']} ({g['tokens'] / 1e6:.1f}M): {g['reached']} reached"
            for g in r["rungs"]
        )
        taus = ", ".join(
            f"rung {c['rung']}: {c['kendall_tau']:.2f} (n={c['n']})"
            for c in r["rank_correlation"]
            if c["kendall_tau"] is not None
        )
        lines.append(
            f"- Seed {r['seed']}: {ladder}; full-budget trials {r['trials']['complete']}"
            + (f" (NSGA-II's: {full['trials']['complete']})" if full else "")
            + f". Kendall tau of val_loss against the full budget: {taus or 'n/a'}."
        )
        if full and full["history"] and len(r["history"]) > 1:
            final = full["final_hypervolume"]
            t99 = next(t for t, hv in full["history"] if hv >= 0.99 * final)
            lines.append(
                f"  NSGA-II had 99% of its final hypervolume after {t99:.0f} GPU-seconds; "
                f"MO-ASHA's first sampled trial reached the full budget at "
                f"{r['history'][1][0]:.0f} s (the baseline, trained straight through, at "
                f"{r['history'][0][0]:.0f} s)."
            )
    if png is not None:
        lines += ["", f"![hypervolume against GPU-seconds](../experiments/results/{png.name})"]
    return "\n".join(lines)


def render(results: Path) -> str:
    parts = [
        "# Results",
        "",
        "Generated by `python -m experiments.results_report` from the JSON files in "
        "`experiments/results/`; every figure below comes from those files, which "
        "record the machine, budget, seeds and the command that made them.",
        "",
    ]
    tables: list[dict] = []  # the Table 1 results, also shown side by side
    first_table = None
    for path in sorted(results.glob("*.json")):
        if "smoke" in path.name:
            continue
        data = json.loads(path.read_text())
        # Files written before they named their experiment: by their name.
        kind = data.get("experiment") or {"noise": "noise_floor"}.get(path.stem.split("_")[0])
        kind = "mo_asha" if path.stem.startswith("mo_asha_") else kind
        if kind == "noise_floor":
            parts.append(noise(data))
        elif kind == "paired_timing":
            parts.append(paired(data))
        elif kind == "paper_table1":
            first_table = len(parts) if first_table is None else first_table
            tables.append(data)
            png = path.with_suffix(".png")
            parts.append(table1(data, png if png.exists() else None))
        elif kind == "scaling":
            png = path.with_suffix(".png")
            parts.append(scaling(data, png if png.exists() else None))
        elif kind == "light_sqa":
            png = path.with_suffix(".png")
            parts.append(light(data, png if png.exists() else None))
        elif kind == "per_layer":
            parts.append(per_layer(data))
        elif kind == "mo_asha":
            png = path.with_suffix(".png")
            parts.append(multi_fidelity(data, png if png.exists() else None))
        else:
            continue
        parts.append("")
    if len(tables) > 1 and first_table is not None:
        parts[first_table:first_table] = [table1_budgets(tables), ""]
    if len(parts) == 4:
        parts.append("No result files yet.")
    return "\n".join(parts) + "\n"


def main() -> int:
    DOCS.mkdir(exist_ok=True)
    (DOCS / "results.md").write_text(render(RESULTS))
    print(f"wrote {DOCS / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
