"""Does multi-fidelity search find the front sooner? The `paper_dense.yaml` space searched by
the product's own command under the same GPU-time limit twice: NSGA-II with every trial
trained to the full budget, and MO-ASHA (`budget.early_stopping.scheduler: mo_asha`, random
sampling, as Schmucker et al. 2021 pair it) whose trials stop at rungs unless they are in the
top 1/eta of their rung. Each arm runs with several sampler seeds.

Per run it records the full-budget trials' hypervolume against GPU-seconds (wall seconds
since the search began times the GPUs it used; the reference point is fixed in the file),
the trials per rung, and how well a rung's ranking predicts the full budget's (Kendall tau of
val_loss between each rung and the last, over the trials that reached both). The summary
says, per sampler seed and on the mean, when MO-ASHA reached NSGA-II's final hypervolume, as
a share of NSGA-II's GPU time (the target is <= 1/3), or that it did not.

    python -m experiments.mo_asha                                # on a GPU (20+ minutes)
    python -m experiments.mo_asha --arms nsga2,mo_asha --seeds 0,1 --gpu-seconds 300
    python -m experiments.mo_asha --merge a.json b.json          # runs made apart
    python -m experiments.mo_asha --smoke                        # CPU, about a minute

Writes experiments/results/mo_asha_<gpu>.json (keys: `reference`, `settings`, `runs[]` with
`arm`, `seed`, `gpu_seconds`, `gpus`, `history` [[gpu_s, hypervolume], ...],
`final_hypervolume`, `trials` (complete, stopped), `rungs`, `rank_correlation`; `summary`)
and a PNG of hypervolume against GPU-seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
import yaml

from experiments.common import SEARCH_SPACES, progress, write_result
from sqa_nas.cli import guarded
from sqa_nas.cli import main as cli_main
from sqa_nas.errors import UserError
from sqa_nas.search.asha import kendall_tau
from sqa_nas.search.figures import run_stats
from sqa_nas.search.pareto import hypervolume_history
from sqa_nas.search.records import trial_records
from sqa_nas.search.study_attrs import read_study_attrs

ARMS = ("nsga2", "mo_asha")
OBJECTIVES = ["val_loss", "speedup_vs_mha"]
REFERENCE = {"val_loss": 2.5, "speedup_vs_mha": 0.8}  # every trained layout beats both
TOKENS, MIN_TOKENS, ETA = 50_000_000, 5_555_556, 3  # rungs at 5.6M, 16.7M, then 50M
SMOKE = {"tokens": 27 * 128, "min_tokens": 3 * 128, "gpu_seconds": 15.0}
SMOKE_REFERENCE = {"val_loss": 8.0, "speedup_vs_mha": 0.1}  # a tiny CPU model's range


def _space(arm: str, seed: int, gpu_seconds: float, smoke: bool, executor: str) -> dict:
    """`paper_dense.yaml` for one arm: MHA as the only baseline (the others would take most
    of a short budget in both arms), no noise trial, time-limited, trials without end."""
    space = yaml.safe_load((SEARCH_SPACES / "paper_dense.yaml").read_text())
    space["study"] = f"mo_asha_{arm}_{seed}"
    space["objectives"] = OBJECTIVES
    space["seed_trials"] = ["MHA"]
    budget = space["budget"]
    budget.update(n_trials=100_000, max_wall_seconds=gpu_seconds, noise_seeds=0)
    tokens, min_tokens = (SMOKE["tokens"], SMOKE["min_tokens"]) if smoke else (TOKENS, MIN_TOKENS)
    budget["train"].update(tokens=tokens, compile=False)  # both arms eager: no compile cost
    if arm == "mo_asha":
        space["sampler"] = {"name": "random", "seed": seed}
        budget["early_stopping"] = {"scheduler": "mo_asha", "eta": ETA, "min_tokens": min_tokens}
    else:
        space["sampler"] = {**space["sampler"], "seed": seed}
    space.setdefault("execution", {})["executor"] = executor
    if smoke:
        space["model"].update(d_model=32, n_layers=2, n_heads=4, ffn_dim=64, seq_len=32)
        space["search"].update(n_q_heads=["H", "H/2", "H/4"], n_kv_heads=["H", "H/2", 1])
        budget["train"].update(batch_size=4, warmup_steps=2, eval_batches=2, compile=False)
        budget["throughput"].update(batch_size=2, warmup=1, repeats=1, max_seconds=0.3)
        if arm == "nsga2":
            space["sampler"]["population"] = 4
        space["data"] = {"kind": "embedded"}
        space["execution"].update(device="cpu", workers=1)
    return space


def run(arm: str, seed: int, gpu_seconds: float, smoke: bool, executor: str) -> dict:
    """One time-limited search; its hypervolume history and ladder."""
    with tempfile.TemporaryDirectory(prefix="sqa-nas-mo-asha-") as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_text(yaml.safe_dump(_space(arm, seed, gpu_seconds, smoke, executor)))
        storage = f"sqlite:///{tmp}/study.db"
        start = time.perf_counter()
        if status := cli_main(["search", str(path), "--storage", storage]):
            raise UserError(f"the {arm} search (seed {seed}) exited with status {status}")
        wall = time.perf_counter() - start
        study = optuna.load_study(study_name=f"mo_asha_{arm}_{seed}", storage=storage)
        records = trial_records(study)
        stats = run_stats(read_study_attrs(study, storage).runs)[-1]
    gpus = max(1, len(stats.nvml_util_by_gpu))  # the GPUs the search sampled (1 on a CPU)
    began = min(r.datetime_start for r in records if r.datetime_start)
    ref = tuple((SMOKE_REFERENCE if smoke else REFERENCE)[o] for o in OBJECTIVES)
    history = [
        [round((r.datetime_complete - began).total_seconds() * gpus, 1), round(hv, 6)]
        for r, hv in hypervolume_history(records, OBJECTIVES, ["minimize", "maximize"], ref)
        if r.datetime_complete
    ]
    return {
        "arm": arm,
        "seed": seed,
        "gpus": gpus,
        "wall_s": round(wall, 1),
        "gpu_seconds": round(wall * gpus, 1),
        "history": history,
        "final_hypervolume": history[-1][1] if history else 0.0,
        "trials": {
            "complete": sum(
                r.state == "COMPLETE" and r.typed.duplicate_of is None for r in records
            ),
            "stopped": sum(bool(r.typed.rungs) and r.state == "PRUNED" for r in records),
            "paused_at_end": sum(r.state == "RUNNING" for r in records),
        },
        "rungs": _ladder(records),
        "rank_correlation": _rank_correlation(records),
    }


def _ladder(records) -> list[dict]:
    """Per rung: its tokens and how many trials reached, went on from, or stopped at it."""
    out: dict[int, dict] = {}
    for r in records:
        for g in r.typed.rungs:
            row = out.setdefault(g.rung, {"rung": g.rung, "tokens": g.tokens, "reached": 0})
            row["reached"] += 1
            row[g.decision] = row.get(g.decision, 0) + 1
    return [out[k] for k in sorted(out)]


def _rank_correlation(records) -> list[dict]:
    """Kendall tau of val_loss at each rung against the full budget's, over the trials
    (baselines and promoted ones) that reached both."""
    per_trial = [{g.rung: g.values.get("val_loss") for g in r.typed.rungs} for r in records]
    top = max((max(t) for t in per_trial if t), default=0)
    out = []
    for k in range(top):
        pairs = [(t[k], t[top]) for t in per_trial if t.get(k) is not None and t.get(top)]
        tau = kendall_tau([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None
        out.append({"rung": k, "to_rung": top, "n": len(pairs), "kendall_tau": tau})
    return out


def summarise(runs: list[dict]) -> dict:
    """When MO-ASHA reached NSGA-II's final hypervolume, as a share of NSGA-II's GPU time:
    per sampler seed run with both arms, and for the means."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    pairs = []
    for seed in sorted({s for a, s in by if a == "nsga2" and ("mo_asha", s) in by}):
        full, asha = by[("nsga2", seed)], by[("mo_asha", seed)]
        target = full["final_hypervolume"]
        reached = next((t for t, hv in asha["history"] if hv >= target > 0), None)
        # NSGA-II's GPU time on the same axis: to its last full-budget trial.
        spent = full["history"][-1][0] if full["history"] else full["gpu_seconds"]
        share = reached / spent if reached is not None and spent > 0 else None
        pairs.append(
            {
                "seed": seed,
                "nsga2_final_hv": target,
                "mo_asha_final_hv": asha["final_hypervolume"],
                "nsga2_gpu_s": spent,
                "mo_asha_gpu_s_to_reach": reached,
                "share_of_nsga2_gpu_time": share and round(share, 3),
            }
        )
    shares = [p["share_of_nsga2_gpu_time"] for p in pairs]
    met = bool(pairs) and all(s is not None and s <= 1 / 3 for s in shares)
    shown = ", ".join("never" if s is None else f"{s:.0%}" for s in shares)
    if not pairs:
        verdict = "no sampler seed was run with both arms"
    else:
        verdict = (
            f"target {'met' if met else 'not met'}: MO-ASHA reached NSGA-II's final "
            f"hypervolume at {shown} of NSGA-II's GPU time (target <= 33%), per sampler seed"
        )
    taus = [
        c["kendall_tau"]
        for r in runs
        if r["arm"] == "mo_asha"
        for c in r["rank_correlation"]
        if c["kendall_tau"] is not None and c["rung"] == 0
    ]
    return {
        "pairs": pairs,
        "target_met": met,
        "verdict": verdict,
        "rung0_to_full_kendall_tau_mean": round(statistics.fmean(taus), 3) if taus else None,
    }


def plot(result: dict, out: Path) -> None:
    """Hypervolume of the full-budget front against GPU-seconds, one line per run."""
    import matplotlib  # optional: the GPU machine may lack it (draw later with --plot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in result["runs"]:
        if r["history"]:
            xs, ys = zip(*r["history"])
            style = "-" if r["arm"] == "mo_asha" else "--"
            ax.step(xs, ys, style, where="post", label=f"{r['arm']} seed {r['seed']}")
    ax.set_xlabel("GPU-seconds since the search began")
    ax.set_ylabel("hypervolume (reference in the file)")
    tokens = result["settings"]["tokens"]
    ax.set_title(f"{result['machine']['device']}: paper_dense, full budget {tokens:,} tokens")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default=",".join(ARMS), help=f"of {', '.join(ARMS)}")
    p.add_argument("--seeds", default="0,1", help="sampler seeds, comma-separated")
    p.add_argument("--gpu-seconds", type=float, default=300.0, help="per run (its time limit)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--smoke", action="store_true", help="tiny CPU runs (a test)")
    p.add_argument("--merge", nargs="+", type=Path, help="join result files")
    p.add_argument("--plot", type=Path, help="only draw the PNG of this result file")
    p.add_argument("--out", type=Path, help="result file (default experiments/results/...)")
    args = p.parse_args(argv)
    if args.plot:
        plot(json.loads(args.plot.read_text()), args.plot.with_suffix(".png"))
        return 0
    if args.merge:
        files = [json.loads(f.read_text()) for f in args.merge]
        if len({json.dumps(f["settings"], sort_keys=True) for f in files}) > 1:
            raise UserError("--merge: the files were run with different settings")
        runs = list(
            {
                (r["arm"], r["seed"]): {"source": n.name} | r
                for n, f in zip(args.merge, files)
                for r in f["runs"]
            }.values()
        )
        payload = {
            "reference": files[0].get("reference", REFERENCE),
            "settings": files[0]["settings"],
            "runs": runs,
            "summary": summarise(runs),
            "merged_from": [f.get("command") for f in files],
        }
        out = write_result("mo_asha", payload, args.out, machine=files[0]["machine"])
        print(payload["summary"]["verdict"])
        return 0
    arms = [a for a in args.arms.split(",") if a]
    if unknown := sorted(set(arms) - set(ARMS)):
        raise UserError(f"--arms: unknown {', '.join(unknown)}; known: {', '.join(ARMS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise UserError(f"--seeds: whole numbers, comma-separated, got {args.seeds!r}") from None
    if not args.smoke and not torch.cuda.is_available():
        raise UserError("mo_asha needs a CUDA GPU (or --smoke on the CPU)")
    seconds = SMOKE["gpu_seconds"] if args.smoke else args.gpu_seconds
    runs = []
    for seed in seeds:
        for arm in arms:
            runs.append(run(arm, seed, seconds, args.smoke, args.executor))
            r = runs[-1]
            progress(
                f"{arm} seed {seed}: {r['trials']} in {r['wall_s']:.0f} s, "
                f"final hypervolume {r['final_hypervolume']:.4g}"
            )
    tokens = SMOKE["tokens"] if args.smoke else TOKENS
    settings = {
        "tokens": tokens,
        "eta": ETA,
        "min_tokens": SMOKE["min_tokens"] if args.smoke else MIN_TOKENS,
        "gpu_seconds_per_run": seconds,
        "executor": args.executor,
        "seed_trials": ["MHA"],
        "noise_seeds": 0,
        "compile": False,
    }
    reference = SMOKE_REFERENCE if args.smoke else REFERENCE
    payload = {
        "reference": reference,
        "settings": settings,
        "runs": runs,
        "summary": summarise(runs),
    }
    out = write_result("mo_asha" + ("_smoke" if args.smoke else ""), payload, args.out)
    print(payload["summary"]["verdict"])
    if not args.smoke:
        try:
            plot(json.loads(out.read_text()), out.with_suffix(".png"))
        except ImportError as exc:
            progress(f"no PNG ({exc}); draw it with --plot {out}")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
