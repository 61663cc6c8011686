"""Write docs/results.md from the committed result files of the quality experiments
(paper_table1_*.json, light_sqa_*.json, per_layer_*.json; smoke runs are skipped).

    python -m experiments.results_report
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from experiments.common import DOCS, RESULTS


def _machine(d: dict) -> str:
    m = d["machine"]
    parts = [m["device"], f"torch {m['torch']}"] + ([f"CUDA {m['cuda']}"] if m.get("cuda") else [])
    return ", ".join(parts)


def _corpus(d: dict) -> str:
    c = d.get("corpus") or {}
    tokens = (c.get("tokens") or {}).get("train")
    size = f"{tokens / 1e6:.1f}M training tokens" if tokens else "size not recorded"
    return f"{c.get('kind', '?')} corpus, {size}, fingerprint {str(c.get('fingerprint'))[:16]}"


def table1(d: dict) -> str:
    b = d["budget"]
    lines = [
        f"### Paper Table 1 at our budget ({_machine(d)})",
        "",
        f"Model d_model {d['model']['d_model']}, {d['model']['n_layers']} layers, "
        f"H {d['model']['n_heads']}, context {b['seq_len']}; {b['tokens_per_run']:,} "
        f"training tokens per run (batch {b['batch_size']}, lr {b['lr']}), seeds "
        f"{d['seeds']}; {_corpus(d)}. Command: `{d['command']}`"
        + "".join(f"; joined from `{m['command']}`" for m in d.get("merged_from", []))
        + ".",
        "",
    ]
    if d.get("partial"):
        lines += [
            f"**Partial: the run stopped after {len(d['runs'])} of "
            f"{len(d['seeds']) * len(d['variants'])} runs.**",
            "",
        ]
    lines += [
        "| variant | H_q/H_kv | val loss (mean ± std) | perplexity | accuracy | train s | "
        "paper val loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in sorted(
        d["summary"].items(), key=lambda kv: kv[1].get("val_loss", {}).get("mean", 1e9)
    ):
        if "val_loss" not in s:
            lines.append(f"| {name} | | failed | | | | |")
            continue
        v = s["val_loss"]
        paper = d["paper"].get(name)
        lines.append(
            f"| {name} | {s['allocation'].split(' x')[0]} | {v['mean']:.4f} ± "
            f"{v['std']:.4f} | {s['perplexity']['mean']:.3f} | "
            f"{s['accuracy']['mean']:.4f} | {s['train_s']['mean']:.1f} | "
            f"{paper if paper is not None else '-'} |"
        )
    o = d["ordering"]
    lines += [
        "",
        f"Our order: {' < '.join(o['our_order'])}. The paper's: "
        f"{' < '.join(o['paper_order'])}. Kendall tau {o['kendall_tau']:.2f}.",
        "",
    ]
    for p in o["pairs"]:
        lines.append(f"- {p['pair']}: {p['verdict']} ({p['ours'][0]:.4f} vs {p['ours'][1]:.4f})")
    return "\n".join(lines)


def light(d: dict, png: Path | None) -> str:
    space = d["space"]
    lines = [
        f"### Light SQA (open question 3) ({_machine(d)})",
        "",
        f"One allocation for all layers, {len(d['trials'])} trials, "
        f"{space['budget']['train'].get('tokens') or space['budget']['train'].get('steps')}"
        f" training tokens/steps each, one training run (seed) per allocation, so "
        f"differences smaller than the seed spread of Table 1 are noise; {_corpus(d)}. "
        f"Command: `{d['command']}`.",
        "",
        f"**lSQA ({d['light']}) on the Pareto front: {d['lsqa_on_front']}.**",
        "",
        "| H_q/H_kv | baseline | val loss | tokens/s | speedup vs MHA | on front |",
        "|---|---|---|---|---|---|",
    ]
    for t in sorted(d["trials"], key=lambda t: t["val_loss"]):
        sp = t.get("speedup_vs_mha")
        lines.append(
            f"| {t['allocation'].split(' x')[0]} | {t.get('seed_variant') or ''} | "
            f"{t['val_loss']:.4f} | {t['throughput_tokens_per_s']:.4g} | "
            f"{f'{sp:.2f}x' if sp else '-'} | {'yes' if t['on_front'] else ''} |"
        )
    if png:
        lines += ["", f"![light SQA Pareto front](../experiments/results/{png.name})"]
    return "\n".join(lines)


def per_layer(d: dict) -> str:
    lines = [
        f"### Per-layer allocation vs uniform variants ({_machine(d)})",
        "",
        f"Search: study {d['search']['study']}, {d['search']['trials']} trials; best mixed "
        f"allocation [{d['mixed']['allocation']}] retrained with seeds {d['seeds']}; "
        f"{_corpus(d)}. Command: `{d['command']}`.",
        "",
    ]
    if d.get("partial"):
        lines += [
            f"**Stopped after {len(d['runs'])} retraining runs; no verdict.**",
            "",
            "| allocation | seed | val loss | tokens/s |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['label']} [{r['allocation']}] | {r['seed']} | {r['val_loss']:.4f} | "
            f"{r['throughput_tokens_per_s']:.4g} |"
            for r in d["runs"]
            if r.get("val_loss") is not None
        ]
        return "\n".join(lines)
    lines += [
        "| allocation | val loss (mean ± std) | tokens/s | verdict at equal throughput |",
        "|---|---|---|---|",
    ]
    for name, s in d["summary"].items():
        v = d["verdicts"].get(name, {})
        verdict = (
            "-"
            if name == "mixed"
            else (
                v.get("verdict", "")
                if v.get("comparable")
                else "faster than mixed: not comparable"
            )
        )
        lines.append(
            f"| {name} [{s['allocation']}] | {s['val_loss']['mean']:.4f} ± "
            f"{s['val_loss']['std']:.4f} | "
            f"{s['throughput_tokens_per_s']['mean']:.4g} | {verdict} |"
        )
    lines += [
        "",
        f"**Mixed beats every comparable uniform variant: {d['mixed_beats_all_comparable']}.**",
    ]
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
    for path in sorted(results.glob("*.json")):
        if "smoke" in path.name:
            continue
        data = json.loads(path.read_text())
        kind = data.get("experiment")
        if kind == "paper_table1":
            parts.append(table1(data))
        elif kind == "light_sqa":
            png = path.with_suffix(".png")
            parts.append(light(data, png if png.exists() else None))
        elif kind == "per_layer":
            parts.append(per_layer(data))
        else:
            continue
        parts.append("")
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
