"""Shared pieces of the quality experiments (paper Table 1, light SQA, per-layer search):
the model sizes they train, a search spec for a training budget, one allocation trained
through the search's own trial code, seeds aggregated and orderings compared. Results are
written with `experiments.common.write_result`: every file carries the machine header, the
budget, the seeds, the corpus size and fingerprint, and the command that made it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from sqa_nas.errors import UserError
from sqa_nas.model import PRESETS
from sqa_nas.search.scheduler import Segment
from sqa_nas.search.space import SearchSpec, parse_space
from sqa_nas.search.trial import TrialJob, run_trial
from sqa_nas.search.utilisation import GpuSampler, Utilisation
from sqa_nas.stats import mean_ci95
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

# The paper's Table 1 order (MHA < GQA < sSQA < SQA < xSQA < MQA < xSMQA): its pairwise
# claims are the adjacent pairs "a < b" (a's validation loss lower), e.g. GQA < sSQA.
_PAPER_ORDER = sorted(PAPER_TABLE1, key=PAPER_TABLE1.__getitem__)
INTERVAL = (
    "paired by seed: the 95% t-interval (n - 1 degrees of freedom) of the per-seed "
    "differences a - b of validation loss, over the seeds where both completed; not "
    "adjusted for the number of pairs"
)


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
    data: dict | None = None,
    objectives: tuple[str, ...] = ("val_loss", "throughput_tokens_per_s"),
) -> SearchSpec:
    """A search spec whose per-trial budget is the experiment's training budget, on `data`
    (a ``data:`` spec; default the embedded corpus)."""
    space = {
        "study": study,
        "model": model,
        "search": {
            "n_q_heads": ["H", "3H/4", "H/2", "H/4"],
            "n_kv_heads": ["H", "H/2", "H/4", 1],
            "tying": tying,
        },
        "objectives": list(objectives),
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
        "data": data or {"kind": "embedded", "include_site_packages": site_packages},
        **(extra or {}),
    }
    return parse_space(space, study)


def train_allocation(
    spec: SearchSpec,
    params: dict,
    *,
    seed_index: int,
    label: str,
    curve_points: int = 0,
) -> dict[str, Any]:
    """Train and evaluate one allocation with the search's trial code (its weights and data
    order from the spec's sampler seed, the same for every allocation of that seed: common
    random numbers; its speedup paired with the MHA step); returns its row. With
    `curve_points`, the model is also evaluated at that many evenly spaced token counts
    before the end (the same run, stopped and resumed exactly: `Segment.eval_at`): the
    row's ``curve`` of [tokens, val_loss], its last point the end of the run."""
    job = TrialJob(seed_index, params, spec.model_dump(mode="json"), label)
    tokens = spec.budget.train.tokens
    if curve_points and tokens:
        at = [tokens * k // (curve_points + 1) for k in range(1, curve_points + 1)]
        job.segment = Segment(rung=len(at), tokens=tokens, eval_at=at)
    device = pick_device()
    sampler = GpuSampler([0]) if device.type == "cuda" else None
    wall0 = time.time()  # the sampler's clock starts now: its trace's times count from here
    if sampler is not None:
        sampler.start()
    try:
        out = run_trial(job, device=device)
    finally:
        if sampler is not None:
            sampler.stop()
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
        "speedup_ci95": m.get("speedup_ci95"),  # its interval within the run
        "kv_cache_bytes": m.get("kv_cache_bytes"),
        "backends": sorted({x.get("backend") for x in out.attrs.get("layers", [])}),
        "corpus": out.attrs.get("corpus"),
        "fail_reason": out.attrs.get("fail_reason"),
        "curve": [
            [r["tokens"], r["values"]["val_loss"]]
            for r in out.attrs.get("rungs") or []
            if "val_loss" in r.get("values", {})
        ],
    }
    if row["train_s"] and row["train_tokens"]:
        row["train_tokens_per_s"] = row["train_tokens"] / row["train_s"]
    if sampler is not None:
        windows = t.get("train_windows") or ([t["train_window"]] if t.get("train_window") else [])
        row |= gpu_busy(sampler.summary(), wall0, windows)
    return row


def gpu_busy(seen: Utilisation, wall0: float, windows: list) -> dict[str, Any]:
    """What NVML saw of a run (`seen`, sampled from `wall0`, epoch seconds): the share of
    the run's time its GPU ran a kernel, and of its training steps' time (`windows`,
    epoch (start, end) pairs) alone: below 1 there, the steps waited on the host. NVML
    counts the whole GPU: another job's kernels on it count too."""
    if seen.mean is None:
        return {"gpu_busy": None, "gpu_busy_note": seen.note}
    label = next(iter(seen.by_gpu))
    points = zip(seen.trace["t_s"], seen.trace["by_gpu"][label])
    inside = [
        u for t_s, u in points if u is not None and any(a <= wall0 + t_s <= b for a, b in windows)
    ]
    return {
        "gpu_busy": seen.by_gpu[label],
        "gpu_busy_training": round(statistics.fmean(inside), 4) if inside else None,
    }


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
    """Mean, sample std, n, min and max per label over its seeds (COMPLETE runs only); the
    val_loss figures also as the label's own ``mean``, ``std`` and ``n``."""
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
                    "n": len(vals),
                    "min": min(vals),
                    "max": max(vals),
                }
        if "val_loss" in stats:  # the figure the table is about, at the top
            stats |= {k: stats["val_loss"][k] for k in ("mean", "std", "n")}
        out[label] = stats
    return out


def ordering_report(agg: dict, reference: dict[str, float]) -> dict[str, Any]:
    """Compare the order of mean val losses with a reference order (the paper's): Kendall
    tau over the shared variants. Whether each of the paper's claims holds is judged by
    `pairwise`, paired by seed; means alone say nothing about it."""
    shared = [v for v in reference if v in agg and "val_loss" in agg[v]]
    concordant = discordant = 0
    for i in range(len(shared)):
        for j in range(i + 1, len(shared)):
            a, b = shared[i], shared[j]
            s1 = math.copysign(1, reference[a] - reference[b])
            s2 = math.copysign(1, agg[a]["val_loss"]["mean"] - agg[b]["val_loss"]["mean"])
            concordant += s1 == s2
            discordant += s1 != s2
    n = concordant + discordant
    return {
        "paper_order": sorted(shared, key=lambda v: reference[v]),
        "our_order": sorted(shared, key=lambda v: agg[v]["val_loss"]["mean"]),
        "kendall_tau": (concordant - discordant) / n if n else None,
    }


def corpus_of(rows: list[dict]) -> dict | None:
    """The corpus record of the first run that has one."""
    return next((r["corpus"] for r in rows if r.get("corpus")), None)


def git_revision() -> str | None:
    """The code's revision: ``$SQA_NAS_GIT_REVISION`` where set (a copy of the tree without
    .git, as on a lent GPU machine), else ``git rev-parse HEAD`` with ``-dirty`` when a
    tracked file differs from it; None outside a repository."""
    if os.environ.get("SQA_NAS_GIT_REVISION"):
        return os.environ["SQA_NAS_GIT_REVISION"]
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def corpus_spec(corpus: str, smoke: bool = False) -> tuple[str, dict]:
    """``--corpus`` as (name, data spec): ``embedded`` (the Python sources, site-packages
    included), ``stdlib`` (the standard library's alone) or a folder that
    `experiments.corpora` built or unpacked (``prose/**/*.txt`` in it, kind ``text``)."""
    if corpus in ("embedded", "stdlib"):
        site = corpus == "embedded" and not smoke
        return corpus, {"kind": "embedded", "include_site_packages": site}
    folder = Path(corpus).expanduser()
    if not (folder / "prose").is_dir():
        raise UserError(
            f"--corpus {corpus!r}: not embedded, stdlib, or a folder with prose/ in it "
            "(python -m experiments.corpora prose --out DIR builds one)"
        )
    return "prose", {"kind": "text", "paths": [f"{folder.resolve()}/prose/**/*.txt"]}


def losses_by_label(rows: list[dict]) -> dict[str, dict[int, float]]:
    """label -> seed -> val_loss of the COMPLETE runs (labels with none left out)."""
    labels = dict.fromkeys(r["label"] for r in rows)
    return {k: v for k in labels if (v := losses_by_seed(rows, k))}


def losses_by_seed(rows: list[dict], label: str) -> dict[int, float]:
    """seed -> val_loss of `label`'s COMPLETE runs."""
    return {
        r["seed"]: r["val_loss"]
        for r in rows
        if r["label"] == label and r["state"] == "COMPLETE" and r.get("val_loss") is not None
    }


def paired(rows: list[dict], a: str, b: str) -> dict[str, Any]:
    """a - b in validation loss, paired by seed (`INTERVAL`): n, the seeds, the mean and
    std of the differences and their 95% interval (None below two pairs)."""
    la, lb = losses_by_seed(rows, a), losses_by_seed(rows, b)
    seeds = sorted(set(la) & set(lb))
    diffs = [la[s] - lb[s] for s in seeds]
    ci = mean_ci95(diffs)
    return {
        "a": a,
        "b": b,
        "n": len(seeds),
        "seeds": seeds,
        "diffs": diffs,
        "diff_mean": statistics.fmean(diffs) if diffs else None,
        "diff_std": statistics.stdev(diffs) if len(diffs) > 1 else None,
        "ci95_low": ci and ci[1],
        "ci95_high": ci and ci[2],
    }


def noise_parts(losses: dict[str, dict[int, float]], seeds: list[int]) -> dict | None:
    """Val losses (label -> seed -> loss, `losses_by_label`) as a table of allocations x
    seeds (those with every seed), split into what the seeds share and what is left
    (two-way analysis of variance):

    - ``pair``: the allocation x seed part, sigma and degrees of freedom ((A-1)(S-1)). Two
      allocations trained with one seed differ by it alone (times sqrt 2): the shared part
      cancels, as it does between the trials of a search (common random numbers).
    - ``shared``: the seeds' own effect (data order and initialisation), sigma (0 when the
      table shows none beyond the rest).

    None below two allocations or two seeds."""
    full = {k: v for k, v in losses.items() if all(s in v for s in seeds)}
    a, n = len(full), len(seeds)
    if a < 2 or n < 2:
        return None
    grand = statistics.fmean(x for v in full.values() for x in v.values())
    rows = {k: statistics.fmean(v.values()) for k, v in full.items()}
    cols = {s: statistics.fmean(v[s] for v in full.values()) for s in seeds}
    df = (a - 1) * (n - 1)
    pair = sum((v[s] - rows[k] - cols[s] + grand) ** 2 for k, v in full.items() for s in seeds)
    pair /= df
    shared = a * sum((c - grand) ** 2 for c in cols.values()) / (n - 1)
    return {
        "pair": math.sqrt(pair),
        "df": df,
        "shared": math.sqrt(max(0.0, (shared - pair) / a)),
        "allocations": a,
    }


def claim_verdict(low: float | None, high: float | None) -> str:
    """For a claim "a < b" and the interval of a - b: ``supports`` (wholly below 0),
    ``contradicts`` (wholly above) or ``cannot tell``."""
    if low is None or high is None or low <= 0 <= high:
        return "cannot tell"
    return "supports" if high < 0 else "contradicts"


def pairwise(
    rows: list[dict],
    variants: list[str],
    baselines: tuple[str, ...] = ("MHA", "GQA"),
) -> list[dict[str, Any]]:
    """Every variant against each baseline (``kind`` "vs MHA": verdict ``higher``,
    ``lower`` or ``cannot tell`` for a's loss; a baseline against an earlier one once),
    then the paper's claims among the variants that ran: each adjacent pair "a < b" of the
    paper's order restricted to them (``kind`` "paper claim", verdict by
    `claim_verdict`)."""
    out = []
    for i, base in enumerate(baselines):
        if base not in variants:
            continue
        for v in variants:
            if v != base and v not in baselines[:i]:
                p = paired(rows, v, base)
                verdict = claim_verdict(p["ci95_low"], p["ci95_high"])
                word = {"supports": "lower", "contradicts": "higher"}.get(verdict, verdict)
                out.append({**p, "kind": f"vs {base}", "verdict": word})
    ran = [v for v in _PAPER_ORDER if v in variants]
    for a, b in zip(ran, ran[1:]):
        p = paired(rows, a, b)
        verdict = claim_verdict(p["ci95_low"], p["ci95_high"])
        out.append({**p, "kind": "paper claim", "claim": f"{a} < {b}", "verdict": verdict})
    return out


def curves(rows: list[dict]) -> dict[str, dict[str, list]]:
    """Per label, its validation-loss curve over the seeds: the token counts every seed's
    curve has, with the mean, std and n there."""
    out: dict[str, dict[str, list]] = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        runs = [
            dict(map(tuple, r["curve"])) for r in rows if r["label"] == label and r.get("curve")
        ]
        if not runs:
            continue
        tokens = sorted(set.intersection(*(set(c) for c in runs)))
        values = [[c[t] for c in runs] for t in tokens]
        out[label] = {
            "tokens": tokens,
            "mean": [statistics.fmean(v) for v in values],
            "std": [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values],
            "n": [len(v) for v in values],
        }
    return out


def resumed_runs(out: Path | None, header: dict[str, Any]) -> list[dict]:
    """The finished runs of an earlier run of the same command that was stopped (its partial
    file beside `out`, `experiments.common.write_partial`); [] when there is none.
    `UserError` when that run had another value for a key of `header`."""
    if out is None:
        raise UserError("--resume needs --out: the partial file it resumes lies beside it")
    path = out.with_suffix(".partial.json")
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--resume: cannot read {path}: {exc}") from None
    for key, value in header.items():
        if data.get(key) != value:
            raise UserError(f"--resume: {path} was made with another {key}; remove it first")
    return [r for r in data.get("runs", []) if r.get("state") == "COMPLETE"]
