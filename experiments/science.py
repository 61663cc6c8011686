"""Shared pieces of the quality experiments (paper Table 1, light SQA, per-layer search):
the model sizes they train, a search spec for a training budget, one allocation trained
through the search's own trial code, seeds aggregated and orderings compared. Results are
written with `experiments.common.write_result`: every file carries the machine header, the
budget, the seeds, the corpus size and fingerprint, and the command that made it.
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

from sqa_nas.model import PRESETS
from sqa_nas.search.space import SearchSpec, parse_space
from sqa_nas.search.trial import TrialJob, run_trial
from sqa_nas.train import pick_device

# The paper's Table 1 (validation loss, dense ~10-12M models, English Wikipedia, one seed).
PAPER_TABLE1 = {
    "MHA": 1.1976,
    "GQA": 1.2177,
    "sSQA": 1.2201,
    "SQA": 1.2272,
    "xSQA": 1.2428,
    "MQA": 1.2497,
    "xSMQA": 1.2815,
}

# The paper's dense model (Table 1) as a search spec's `model`: the shape of the preset
# "paper" (d_model 256, 8 layers, H 16, SwiGLU 768; the vocabulary is the corpus's) at the
# paper's context of 1024.
PAPER_MODEL = {k: PRESETS["paper"][k] for k in ("d_model", "n_layers", "n_heads", "ffn_dim")} | {
    "seq_len": 1024
}
# --smoke sizes (CPU tests): H = 16 kept, so every H_q of the paper's range exists...
SMOKE_MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 16, "ffn_dim": 96, "seq_len": 64}
# ... and, for the per-layer searches, smaller still with H = 4 and two head counts a side.
SMOKE_PER_LAYER_MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 4, "ffn_dim": 64, "seq_len": 32}
SMOKE_PER_LAYER_HEADS = {"n_q_heads": ["H", "H/2"], "n_kv_heads": ["H/2", 1]}


def seed_list(text: str) -> list[int]:
    """``--seeds`` for argparse: distinct integers separated by commas ("0,1,2")."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give distinct integers separated by commas, e.g. 0,1"
        ) from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: a seed is given twice")
    return seeds


def make_spec(
    *,
    study: str,
    model: dict,
    variants: list[str],
    tokens: int,
    batch: int,
    lr: float,
    seed: int,
    site_packages: bool,
    compile: bool,
    eval_batches: int,
    tying: str = "all",
    extra: dict | None = None,
) -> SearchSpec:
    """A search spec whose per-trial budget is the experiment's training budget."""
    space = {
        "study": study,
        "model": model,
        "search": {
            "n_q_heads": ["H", "3H/4", "H/2", "H/4"],
            "n_kv_heads": ["H", "H/2", "H/4", 1],
            "tying": tying,
        },
        "objectives": ["val_loss", "throughput_tokens_per_s"],
        "seed_trials": variants,
        "sampler": {"seed": seed},
        "budget": {
            "train": {
                "tokens": tokens,
                "batch_size": batch,
                "lr": lr,
                "warmup_steps": max(1, min(100, tokens // (batch * model["seq_len"]) // 10)),
                "compile": compile,
                "eval_batches": eval_batches,
            },
            "throughput": {"batch_size": batch, "warmup": 2, "repeats": 5},
        },
        "data": {"kind": "embedded", "include_site_packages": site_packages},
        **(extra or {}),
    }
    return parse_space(space, study)


def train_allocation(
    spec: SearchSpec,
    params: dict,
    *,
    seed_index: int,
    label: str,
) -> dict[str, Any]:
    """Train and evaluate one allocation with the search's trial code (its weights and data
    order from the spec's sampler seed, the same for every allocation of that seed: common
    random numbers; its speedup paired with the MHA step); returns its row."""
    job = TrialJob(seed_index, params, spec.model_dump(mode="json"), label)
    out = run_trial(job, device=pick_device())
    m = out.attrs.get("metrics", {})
    t = out.attrs.get("timings", {})
    row = {
        "label": label,
        "seed": spec.sampler.seed,
        "state": out.state,
        "allocation": out.attrs.get("allocation"),
        "params": m.get("params"),
        "val_loss": m.get("val_loss"),
        "perplexity": m.get("perplexity"),
        "accuracy": m.get("accuracy"),
        "train_tokens": m.get("train_tokens"),
        "train_s": t.get("train_s"),
        "throughput_tokens_per_s": m.get("throughput_tokens_per_s"),
        "speedup_vs_mha": m.get("speedup_vs_mha"),
        "kv_cache_bytes": m.get("kv_cache_bytes"),
        "backends": sorted({x.get("backend") for x in out.attrs.get("layers", [])}),
        "corpus": out.attrs.get("corpus"),
        "fail_reason": out.attrs.get("fail_reason"),
    }
    if row["train_s"] and row["train_tokens"]:
        row["train_tokens_per_s"] = row["train_tokens"] / row["train_s"]
    return row


def aggregate(
    rows: list[dict],
    keys=(
        "val_loss",
        "perplexity",
        "accuracy",
        "train_s",
        "train_tokens_per_s",
        "throughput_tokens_per_s",
    ),
):
    """Mean, sample std, min and max per label over its seeds (COMPLETE runs only)."""
    out: dict[str, dict] = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        done = [r for r in rows if r["label"] == label and r["state"] == "COMPLETE"]
        stats: dict[str, Any] = {
            "runs": len(done),
            "allocation": done[0]["allocation"] if done else None,
        }
        for k in keys:
            vals = [r[k] for r in done if isinstance(r.get(k), int | float)]
            if vals:
                stats[k] = {
                    "mean": statistics.fmean(vals),
                    "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                    "min": min(vals),
                    "max": max(vals),
                }
        out[label] = stats
    return out


def ordering_report(agg: dict, reference: dict[str, float]) -> dict[str, Any]:
    """Compare the order of mean val losses with a reference order (the paper's): Kendall
    tau over the shared variants, and each adjacent pair of the paper's order, marked
    'holds', 'reversed' or 'within spread' (means closer than the larger seed std)."""
    shared = [v for v in reference if v in agg and "val_loss" in agg[v]]
    ours = sorted(shared, key=lambda v: agg[v]["val_loss"]["mean"])
    paper = sorted(shared, key=lambda v: reference[v])
    concordant = discordant = 0
    for i in range(len(shared)):
        for j in range(i + 1, len(shared)):
            a, b = shared[i], shared[j]
            s1 = math.copysign(1, reference[a] - reference[b])
            s2 = math.copysign(1, agg[a]["val_loss"]["mean"] - agg[b]["val_loss"]["mean"])
            concordant += s1 == s2
            discordant += s1 != s2
    pairs = []
    for a, b in zip(paper, paper[1:]):
        ma, mb = agg[a]["val_loss"], agg[b]["val_loss"]
        spread = max(ma["std"], mb["std"])
        verdict = (
            "within spread"
            if abs(ma["mean"] - mb["mean"]) <= spread
            else "holds"
            if ma["mean"] < mb["mean"]
            else "reversed"
        )
        pairs.append({"pair": f"{a} < {b}", "ours": [ma["mean"], mb["mean"]], "verdict": verdict})
    n = concordant + discordant
    return {
        "paper_order": paper,
        "our_order": ours,
        "kendall_tau": (concordant - discordant) / n if n else None,
        "pairs": pairs,
    }


def corpus_of(rows: list[dict]) -> dict | None:
    """The corpus record of the first run that has one."""
    return next((r["corpus"] for r in rows if r.get("corpus")), None)
