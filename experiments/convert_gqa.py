"""The paper's first open question: can a pretrained GQA model become SQA with a short
fine-tune, instead of training SQA from scratch?

Per seed: pretrain the paper's GQA model (Table 1: d_model 256, 8 layers, H 16, H_kv 4,
SwiGLU 768, context 1024; vocabulary the corpus's) on the embedded corpus (site-packages
included) for --tokens; convert it to SQA, sSQA and xSQA with each method (select, mean,
fit: `sqa_nas.convert`, calibration on 8 x 8 x 1024 training tokens); fine-tune each
conversion for 5% and 10% of the pretraining tokens (separate runs, each with its own
warm-up and cosine); and compare, on the same validation batches, with the GQA parent
(also continued for 5% / 10%: the extra tokens alone) and with each variant trained from
scratch for the same total tokens (105% / 110%: one run of 110% read at 105% on its way,
its LR there 0.105 x peak against 0.1 x at the end; `lr_at`).

GPU plan (one H200). The Table 1 model with compiled blocks trains GQA at ~2.5M tokens/s,
SQA and sSQA at ~3.3M and xSQA at ~4M (experiments/results/step_throughput_h200.json, batch
128; paper_table1_h200.json measured 1.5-2.1M eager at batch 64). Per seed at the default
200M tokens: pretraining GQA 200M (~1.5 min), fine-tunes 9 x 30M = 270M (~1.5 min), GQA
continued 30M (~15 s), scratch 3 x 220M = 660M (~3.5 min), block compiles (4 shapes) and
36 evaluations of 2M tokens (~1 min): about 8 minutes, plus the corpus's first build with
site-packages (a minute or two, cached after). One seed per run, joined with --merge:

    python -m experiments.convert_gqa --seeds 0 --out experiments/results/convert_h200_s0.json
    python -m experiments.convert_gqa --seeds 1 --out experiments/results/convert_h200_s1.json
    python -m experiments.convert_gqa --merge experiments/results/convert_h200_s0.json \
        experiments/results/convert_h200_s1.json --out experiments/results/convert_h200.json
    python -m experiments.convert_gqa --smoke          # CPU, tiny model, seconds

Finished runs survive a stop in `<result>.partial.json` (rewritten after every run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from experiments.common import write_partial, write_result
from experiments.science import PAPER_MODEL, SMOKE_MODEL, claim_verdict, seed_list
from sqa_nas.cli import guarded
from sqa_nas.convert import (
    Calibration,
    FinetuneSettings,
    calibration_batches,
    convert_model,
    finetune,
    target_config,
)
from sqa_nas.data import load_dataset
from sqa_nas.errors import UserError
from sqa_nas.model import ModelConfig, SQATransformer, build_model
from sqa_nas.stats import mean_ci95
from sqa_nas.train import TrainConfig, TrainStep, evaluate, lr_at, pick_device, train

EXPERIMENT = "convert_gqa"
STEM = "convert"  # results/convert_<gpu>.json
VARIANTS = ["SQA", "sSQA", "xSQA"]
METHODS = ["select", "mean", "fit"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=200_000_000, help="pretraining tokens")
    p.add_argument("--fractions", default="0.05,0.1", help="fine-tune tokens / pretraining")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", type=seed_list, default="0")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="pretraining and scratch peak LR")
    p.add_argument("--ft-lr", type=float, default=1e-3, help="fine-tuning peak LR")
    p.add_argument("--eval-batches", type=int, default=32)
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch runs")
    p.add_argument("--no-compile", action="store_true", help="train eagerly on the GPU")
    p.add_argument("--smoke", action="store_true", help="tiny model and budget (CPU test)")
    p.add_argument("--out", type=Path, help="result file (default experiments/results/...)")
    p.add_argument("--merge", nargs="+", type=Path, metavar="RESULT", help="join seed files")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    fractions = [float(f) for f in args.fractions.split(",")]
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise UserError(f"--fractions {args.fractions!r}: give numbers in (0, 1]")
    model = dict(PAPER_MODEL)
    tokens, batch, evals, cal = args.tokens, args.batch, args.eval_batches, Calibration(8, 8, 1024)
    if args.smoke:
        model, tokens, batch, evals = dict(SMOKE_MODEL), 20 * 4 * 64, 4, 2
        cal = Calibration(2, 2, 64)
    device = pick_device()
    budget = {
        "pretrain_tokens": tokens,
        "fractions": sorted(fractions),
        "batch_size": batch,
        "seq_len": model["seq_len"],
        "lr": args.lr,
        "ft_lr": args.ft_lr,
        "eval_batches": evals,
        "calibration": cal.record(),
        "compile": device.type == "cuda" and not args.no_compile,
        "scratch": not args.no_scratch,
    }
    setup = {
        "variants": args.variants.split(","),
        "methods": args.methods.split(","),
        "model": model,
        "budget": budget,
    }
    name = STEM + ("_smoke" if args.smoke else "")
    data = load_dataset({"kind": "embedded", "include_site_packages": not args.smoke})
    rows: list[dict] = []
    start = time.perf_counter()
    partial = None
    for seed in args.seeds:
        for row in run_seed(seed, data, setup, device):
            rows.append(row)
            print(_line(row), flush=True)
            payload = _payload(rows, setup, args.seeds, data.meta, time.perf_counter() - start)
            partial = write_partial(name, payload, out=args.out)
    payload = _payload(rows, setup, args.seeds, data.meta, time.perf_counter() - start)
    for line in payload["answer"]:
        print(line)
    path = write_result(name, payload, out=args.out)
    if partial is not None:
        partial.unlink(missing_ok=True)
    plot(payload, path.with_suffix(".png"))


def _train_config(setup: dict, tokens: int, lr: float) -> TrainConfig:
    b = setup["budget"]
    steps = -(-tokens // (b["batch_size"] * b["seq_len"]))
    return TrainConfig(
        seq_len=b["seq_len"],
        batch_size=b["batch_size"],
        tokens=tokens,
        lr=lr,
        warmup_steps=max(1, min(100, steps // 10)),
        eval_batches=b["eval_batches"],
    )


def _fresh(config: ModelConfig, seed: int, device: torch.device) -> SQATransformer:
    return build_model(config, seed=seed).to(device)


def _copy(model: SQATransformer) -> SQATransformer:
    """A new model with `model`'s config and weights (no compiled or backend state shared)."""
    twin = build_model(model.config).to(model.embed.weight.device)
    twin.load_state_dict(model.state_dict())
    return twin


def run_seed(seed: int, data, setup: dict, device: torch.device):
    """Yield the rows of one seed: parent, conversions (before and after fine-tuning),
    parent continued, scratch."""
    b, m = setup["budget"], setup["model"]
    compiled = b["compile"]
    config = ModelConfig(
        vocab_size=data.vocab_size,
        **{k: m[k] for k in ("d_model", "n_layers", "n_heads", "ffn_dim")},
        attention={"variant": "GQA"},
    )
    cfg = _train_config(setup, b["pretrain_tokens"], b["lr"])
    parent = _fresh(config, seed, device)
    step = TrainStep(parent, device, cfg.seq_len, compiled=compiled)
    result = train(parent, data, cfg, device, seed, step=step)
    yield _row(seed, "GQA", "parent", 0.0, evaluate(parent, data, cfg, device), result)
    settings = {
        f: FinetuneSettings(
            tokens=int(f * b["pretrain_tokens"]),
            lr=b["ft_lr"],
            batch_size=b["batch_size"],
            seq_len=b["seq_len"],
            seed=seed + 1000,  # not the pretraining batches again
            eval_batches=b["eval_batches"],
            compile=compiled,
        )
        for f in b["fractions"]
    }
    cal = Calibration(**{**b["calibration"], "seed": 10_000 + seed})
    batches = calibration_batches(data, cal, device)
    for variant in setup["variants"]:
        target = target_config(config, variant)
        for method in setup["methods"]:
            done = convert_model(parent, target, method, batches)
            before = evaluate(done.model, data, cfg, device)
            error = statistics.fmean(done.errors or [0.0])
            yield _row(seed, variant, method, 0.0, before, None, output_error=error)
            for f, s in settings.items():
                model = _copy(done.model)
                record = finetune(model, data, s, device, evaluate_before=False)
                row = _row(seed, variant, method, f, record["val_after"], None)
                row.update(train_s=record["seconds"], tokens_per_s=record["tokens_per_s"])
                row.update(val_loss_before=before["val_loss"], output_error=error)
                yield row
    for f, s in settings.items():
        record = finetune(_copy(parent), data, s, device, evaluate_before=False)
        yield _row(seed, "GQA", "continued", f, record["val_after"], None)
    if b["scratch"]:
        yield from _scratch(seed, data, setup, config, device)


def _scratch(seed: int, data, setup: dict, parent: ModelConfig, device: torch.device):
    """Each variant from scratch for pretrain x (1 + max fraction) tokens, evaluated on its
    way at pretrain x (1 + f) for the smaller fractions (`train(stop_step=...)`)."""
    b = setup["budget"]
    fractions = b["fractions"]
    per_step = b["batch_size"] * b["seq_len"]
    cfg = _train_config(setup, int(b["pretrain_tokens"] * (1 + fractions[-1])), b["lr"])
    for variant in setup["variants"]:
        model = _fresh(target_config(parent, variant), seed, device)
        step = TrainStep(model, device, cfg.seq_len, compiled=b["compile"])
        state = None
        for f in fractions:
            stop = -(-int(b["pretrain_tokens"] * (1 + f)) // per_step)
            result = train(model, data, cfg, device, seed, step=step, stop_step=stop, resume=state)
            state = result.state
            row = _row(seed, variant, "scratch", f, evaluate(model, data, cfg, device), result)
            row["lr_at_eval"] = lr_at(result.steps - 1, cfg.planned_steps, cfg) / cfg.lr
            yield row


def _row(seed, variant, method, fraction, metrics, result, **extra) -> dict[str, Any]:
    row = {
        "seed": seed,
        "variant": variant,
        "method": method,
        "fraction": fraction,
        "val_loss": metrics["val_loss"],
        "accuracy": metrics["accuracy"],
        **extra,
    }
    if result is not None:
        row.update(train_tokens=result.tokens, train_s=round(result.seconds, 2))
        row["tokens_per_s"] = round(result.tokens_per_s, 1)
    return row


def _line(row: dict) -> str:
    extra = f" (before {row['val_loss_before']:.4f})" if "val_loss_before" in row else ""
    return (
        f"seed {row['seed']} {row['variant']:5s} {row['method']:9s} "
        f"+{row['fraction']:.0%} val_loss {row['val_loss']:.4f}{extra}"
    )


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Mean, std, min, max of val_loss over seeds per 'variant/method/fraction'."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(f"{r['variant']}/{r['method']}/{r['fraction']}", []).append(
            r["val_loss"]
        )
    return {
        key: {
            "runs": len(v),
            "mean": statistics.fmean(v),
            "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "min": min(v),
            "max": max(v),
        }
        for key, v in groups.items()
    }


def _paired(rows: list[dict], a: tuple, b: tuple) -> dict[str, Any]:
    """Cell a - cell b in val loss, paired by seed (a cell: variant, method, fraction; the
    GQA parent's fraction is 0.0 at every seed): n, the differences, their mean and 95%
    t-interval (None below two seeds) and the verdict for "a is lower"."""
    by = {(r["variant"], r["method"], r["fraction"], r["seed"]): r["val_loss"] for r in rows}
    seeds = sorted({r["seed"] for r in rows if (*a, r["seed"]) in by and (*b, r["seed"]) in by})
    diffs = [by[(*a, s)] - by[(*b, s)] for s in seeds]
    ci = mean_ci95(diffs)
    return {
        "n": len(diffs),
        "diffs": diffs,
        "mean": statistics.fmean(diffs) if diffs else None,
        "ci95": None if ci is None else [ci[1], ci[2]],
        "verdict": claim_verdict(*(ci[1:] if ci else (None, None))),
    }


def gaps(d: dict) -> list[dict]:
    """Per variant and fine-tune fraction: the best conversion (lowest mean val loss over the
    methods), the same variant from scratch for the same total tokens and the GQA parent,
    with the best conversion's differences from both paired by seed (`_paired`)."""
    summary = d["summary"]
    parent = summary.get("GQA/parent/0.0")
    out = []
    for variant in d["variants"]:
        for f in d["budget"]["fractions"]:
            done = {m: summary.get(f"{variant}/{m}/{f}") for m in d["methods"]}
            done = {m: s for m, s in done.items() if s}
            if not done:
                continue
            method, best = min(done.items(), key=lambda kv: kv[1]["mean"])
            scratch = summary.get(f"{variant}/scratch/{f}")
            cell = (variant, method, f)
            out.append(
                {
                    "variant": variant,
                    "fraction": f,
                    "method": method,
                    "best": best["mean"],
                    "scratch": scratch and scratch["mean"],
                    "vs_scratch": scratch and _paired(d["runs"], cell, (variant, "scratch", f)),
                    "parent": parent and parent["mean"],
                    "vs_parent": parent and _paired(d["runs"], cell, ("GQA", "parent", 0.0)),
                }
            )
    return out


def _said(p: dict) -> str:
    """A paired difference in words: `+0.0432 [+0.0375, +0.0489] n=2, scratch lower`."""
    if p["ci95"] is None:
        return f"{p['mean']:+.4f}, n={p['n']}, cannot tell"
    word = {"supports": "conversion lower", "contradicts": "conversion higher"}
    return (
        f"{p['mean']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] n={p['n']}, "
        f"{word.get(p['verdict'], p['verdict'])}"
    )


def answer(d: dict) -> list[str]:
    """One line per variant and fraction: the best conversion against scratch and against the
    GQA parent, each paired by seed with its interval."""
    lines = []
    for g in gaps(d):
        text = (
            f"{g['variant']} +{g['fraction']:.0%}: best conversion {g['method']} {g['best']:.4f}"
        )
        if g["vs_scratch"]:
            text += f"; vs scratch {g['scratch']:.4f}: {_said(g['vs_scratch'])}"
        if g["vs_parent"]:
            text += f"; vs GQA parent {g['parent']:.4f}: {_said(g['vs_parent'])}"
        lines.append(text)
    return lines


def _payload(rows, setup, seeds, corpus_meta, wall_s) -> dict:
    summary = summarize(rows)
    corpus = {k: corpus_meta.get(k) for k in ("kind", "fingerprint", "tokens")}
    return {
        "experiment": EXPERIMENT,
        **setup,
        "seeds": seeds,
        "corpus": corpus,
        "wall_s": round(wall_s, 1),
        "runs": rows,
        "summary": summary,
        "answer": answer({**setup, "summary": summary, "runs": rows}),
    }


def merge(paths: list[Path], out: Path | None) -> None:
    """One result from runs of this script that differ only in their seeds."""
    parts = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"--merge: cannot read {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("experiment") != EXPERIMENT:
            raise UserError(f"--merge: {path} is not a {EXPERIMENT} result")
        parts.append((path, data))
    first_path, first = parts[0]
    for path, data in parts[1:]:
        for key in ("model", "budget", "variants", "methods", "corpus"):
            if data.get(key) != first.get(key):
                raise UserError(f"--merge: {path} has another {key} than {first_path}")
    seen: set[int] = set()
    for path, data in parts:
        if seen & set(data["seeds"]):
            raise UserError(f"--merge: a seed of {path} is in an earlier file too")
        seen |= set(data["seeds"])
    rows = [r for _, d in parts for r in d["runs"]]
    setup = {k: first[k] for k in ("variants", "methods", "model", "budget")}
    wall = sum(d["wall_s"] for _, d in parts)
    payload = _payload(rows, setup, sorted(seen), first["corpus"], wall)
    payload["merged_from"] = [{"file": p.name, "command": d["command"]} for p, d in parts]
    smoke = "_smoke" if first["model"] == SMOKE_MODEL else ""
    path = write_result(STEM + smoke, payload, out=out, machine=first["machine"])
    plot(payload, path.with_suffix(".png"))


def plot(payload: dict, path: Path) -> None:
    """Validation loss against fine-tune tokens, one panel per variant: each method's
    conversion (0 = before fine-tuning), scratch, the GQA parent and the parent continued."""
    # matplotlib is optional (only the plot needs it): imported when drawing
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, variants = payload["summary"], payload["variants"]
    fractions = [0.0, *payload["budget"]["fractions"]]
    fig, axes = plt.subplots(1, len(variants), figsize=(4.5 * len(variants), 4), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        lines = [(m, variant, m) for m in payload["methods"]]
        lines += [("scratch", variant, "scratch"), ("GQA continued", "GQA", "continued")]
        for label, v, method in lines:
            keys = [(f, f"{v}/{method}/{f}") for f in fractions]
            xs = [100 * f for f, k in keys if k in summary]
            ys = [summary[k]["mean"] for f, k in keys if k in summary]
            errs = [summary[k]["std"] for f, k in keys if k in summary]
            if xs:
                ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
        if "GQA/parent/0.0" in summary:
            ax.axhline(summary["GQA/parent/0.0"]["mean"], color="k", ls="--", label="GQA parent")
        ax.set_title(variant)
        ax.set_xlabel("fine-tune tokens (% of pretraining)")
        ax.set_ylabel("validation loss")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"GQA -> SQA conversion, seeds {payload['seeds']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(guarded(main))
