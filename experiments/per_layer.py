"""Does a per-layer allocation found by the search beat every uniform variant at equal
throughput, beyond the noise?

1. Run the noise-aware per-layer search (its first baseline trained with several seeds:
   the study's noise floor; `--scheduler mo_asha` for multi-fidelity), or read a finished
   study with --study / --storage.
2. Confirm its front: the mixed allocations on it (layers differ; up to `--top`, best val
   loss first) are retrained at the full budget with fresh seeds, and the uniform variants
   (MHA, GQA, MQA, SQA, sSQA, xSQA, xSMQA, lSQA) with the same seeds: common random
   numbers, so every comparison is paired by seed.
3. Each mixed allocation against each uniform variant, both axes paired by seed with 95%
   intervals: the val-loss difference and the speed ratio (their speedups over MHA, each
   paired with the MHA step inside its run). The mixed one is **better** when its loss is
   lower beyond the noise and it is at least as fast (the ratio's interval reaches no
   higher than 1 + `--tolerance`); the uniform one likewise; a **trade-off** when the one
   with the lower loss is slower beyond the tolerance; else **cannot tell**.
4. The answer: **yes** when a mixed allocation has a lower loss beyond the noise than every
   uniform variant at its speed (the speed ratio's interval within the tolerance of 1: one
   such variant at least, each `better`) and than every faster one (`better` or a
   `trade-off` in its favour); slower ones do not count. **No** when every mixed allocation
   has a uniform variant better than it; else **not resolved**.

    python -m experiments.per_layer --space search_spaces/paper_dense.yaml --n-trials 48 \\
        --scheduler mo_asha --tokens 200000000 --seeds 100,101,102          # on a GPU
    python -m experiments.per_layer --smoke
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from experiments.common import SEARCH_SPACES, write_partial, write_result
from experiments.science import (
    INTERVAL,
    SMOKE_PER_LAYER_HEADS,
    SMOKE_PER_LAYER_MODEL,
    aggregate,
    corpus_of,
    corpus_spec,
    git_revision,
    paired,
    resumed_runs,
    seed_list,
    train_allocation,
)
from sqa_nas.cli import guarded
from sqa_nas.errors import UserError
from sqa_nas.search.driver import Driver
from sqa_nas.search.executors.local import LocalExecutor
from sqa_nas.search.pareto import pareto_front
from sqa_nas.search.records import load_study, trial_records
from sqa_nas.search.space import SearchSpec, load_space, parse_space
from sqa_nas.search.storage import default_storage
from sqa_nas.search.study_attrs import read_study_attrs
from sqa_nas.stats import mean_ci95

UNIFORM = ["MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "lSQA"]


def search_space(args) -> SearchSpec:
    """The per-layer search of `args.space` with the command line's changes."""
    data = load_space(args.space).model_dump(mode="json")
    data["search"]["tying"], data["search"]["group_size"] = "per_layer", None
    data["study"] = "per_layer" + ("_smoke" if args.smoke else "")
    budget = data["budget"]
    if args.smoke:
        data["model"].update(SMOKE_PER_LAYER_MODEL)
        budget["train"].update(steps=None, tokens=8 * 64, batch_size=2, eval_batches=2)
        budget["throughput"].update(
            batch_size=2, warmup=1, repeats=1, max_seconds=0.5, ci_target=0.5
        )
        data["search"].update(SMOKE_PER_LAYER_HEADS)
        data["seed_trials"] = ["MHA"]
    if args.n_trials:
        budget["n_trials"] = args.n_trials
    if args.tokens:
        budget["train"].update(tokens=args.tokens, steps=None)
    if args.noise_seeds is not None:
        budget["noise_seeds"] = args.noise_seeds
    if args.scheduler == "mo_asha":
        tokens = budget["train"]["tokens"]
        budget["early_stopping"] = {
            "scheduler": "mo_asha",
            "eta": 3,
            "min_tokens": args.min_tokens or max(1, tokens // 9),
        }
    if args.corpus:
        data["data"] = corpus_spec(args.corpus, smoke=args.smoke)[1]
    return parse_space(data, str(args.space))


def trial_counts(records) -> dict[str, int]:
    """``trials``: the search's evaluated trials, those a scheduler stopped at a rung
    (PRUNED) included; ``full_budget``: those that trained it all (COMPLETE). A failed or
    unfinished trial counts in neither."""
    full = sum(r.state == "COMPLETE" for r in records)
    return {"trials": full + sum(r.state == "PRUNED" for r in records), "full_budget": full}


def _search(args):
    spec = search_space(args)
    storage = args.storage or f"sqlite:///{tempfile.mkdtemp()}/per_layer.db"
    print(
        f"study storage: {storage} (rerun with --storage {storage} to resume the search)",
        flush=True,
    )
    result = Driver(spec, LocalExecutor(workers=1, trial_timeout_s=3600), storage_url=storage).run(
        spec.budget.n_trials
    )
    return spec, result.study


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", type=Path, default=SEARCH_SPACES / "paper_dense.yaml")
    p.add_argument("--study", help="use this finished study instead of searching")
    p.add_argument("--storage", help="its storage URL")
    p.add_argument("--n-trials", type=int)
    p.add_argument("--tokens", type=int, help="training tokens per run (default: the space's)")
    p.add_argument("--scheduler", choices=["none", "mo_asha"], default="none")
    p.add_argument("--min-tokens", type=int, help="mo_asha's first rung (default tokens / 9)")
    p.add_argument(
        "--noise-seeds", type=int, help="seeds of the study's noise trial (default: auto)"
    )
    p.add_argument("--corpus", help="as paper_table1's --corpus (default: the space's data)")
    p.add_argument("--seeds", type=seed_list, default="100,101,102", help="confirm seeds")
    p.add_argument("--top", type=int, default=3, help="mixed front members to confirm")
    p.add_argument("--uniform", default=",".join(UNIFORM), help="uniform baselines")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="speed ratios within this fraction of 1 count as equal (default 5%%)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished runs of a stopped run of this command (its partial file "
        "beside --out) and train only the rest",
    )
    p.add_argument(
        "--stop-after",
        type=float,
        metavar="SECONDS",
        help="start no confirm run that would end later than this many seconds after the "
        "command started (judged by the longest run so far); finish the rest with --resume",
    )
    p.add_argument("--smoke", action="store_true", help="tiny model and budget (CPU test)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    began = time.monotonic()
    if len(args.seeds) < 2:
        raise UserError("--seeds: give two seeds or more (an interval needs pairs)")
    if args.study:
        study = load_study(args.study, args.storage)
        attrs = read_study_attrs(study, args.storage or default_storage(args.study))
        spec = parse_space(attrs.space or {}, f"study {args.study}")
    else:
        spec, study = _search(args)
    every = trial_records(study)
    records = [r for r in every if r.state == "COMPLETE"]
    front = pareto_front(records, spec.objectives)

    def is_mixed(r):
        return len({(x.n_q_heads, x.n_kv_heads, x.window) for x in r.layers}) > 1

    # The mixed allocations on the front, best first; failing that, the best mixed found.
    def loss(r) -> float:
        return (r.values or {}).get("val_loss", math.inf)

    mixed = [r for r in front if is_mixed(r)] or sorted(
        (r for r in records if is_mixed(r)), key=loss
    )[:1]
    if not mixed:
        raise UserError("the search found no mixed allocation; run more trials")
    mixed = sorted(mixed, key=loss)[: args.top]
    data = {**spec.model_dump(mode="json"), "seed_trials": args.uniform.split(",")}
    data["budget"]["early_stopping"] = {"scheduler": "none"}  # the full budget, straight
    if args.tokens:  # also for a study searched elsewhere (--study)
        data["budget"]["train"].update(tokens=args.tokens, steps=None)
    retrain = parse_space(data, "retraining")
    labels = [f"mixed{i + 1}" for i in range(len(mixed))]
    candidates = [(k, r.params) for k, r in zip(labels, mixed)] + retrain.seed_params()
    rows: list[dict] = []
    partial = None
    name = "per_layer" + ("_smoke" if args.smoke else "")
    header = {
        "experiment": "per_layer",
        "space": spec.model_dump(mode="json"),
        "search": {
            "study": study.study_name,
            **trial_counts(every),
            "front": [r.allocation for r in front],
            "scheduler": spec.budget.early_stopping.scheduler,
            "noise": study.user_attrs.get("noise"),
        },
        "mixed": [
            {
                "label": k,
                "trial": r.number,
                "allocation": r.allocation,
                "params": r.params,
                "search_values": r.values,
                "on_front": r in front,
            }
            for k, r in zip(labels, mixed)
        ],
        "budget": {"tokens_per_run": retrain.budget.train.tokens},
        "seeds": args.seeds,
        "tolerance": args.tolerance,
        "git_revision": git_revision(),
        "interval": INTERVAL,
    }
    if args.resume:
        rows = resumed_runs(args.out, {k: header[k] for k in ("mixed", "budget", "seeds")})
    done = {(r["label"], r["seed"]) for r in rows}
    start = time.perf_counter()
    for seed in args.seeds:
        seeded = parse_space(
            {
                **retrain.model_dump(mode="json"),
                "sampler": {**retrain.sampler.model_dump(), "seed": seed},
            },
            "retraining",
        )
        for label, params in candidates:
            if (label, seed) in done:
                continue
            elapsed = time.monotonic() - began
            if not fits(elapsed, rows, args.stop_after):
                print(
                    f"stopped before seed {seed} {label}: {elapsed:.0f} s of --stop-after "
                    f"{args.stop_after:g} gone; {len(rows)} runs done, rerun with --resume",
                    flush=True,
                )
                return
            t0 = time.monotonic()
            row = train_allocation(seeded, params, seed_index=seed, label=label)
            row["wall_s"] = time.monotonic() - t0
            rows.append(row)
            print(
                f"seed {seed} {label:6s} [{row['allocation']}] val_loss "
                f"{row['val_loss'] or float('nan'):.4f} throughput "
                f"{row['throughput_tokens_per_s'] or 0:.4g} {row['state']}",
                flush=True,
            )
            partial = write_partial(
                name, {**header, "corpus": corpus_of(rows), "runs": rows}, out=args.out
            )
    agg = aggregate(rows)
    comparisons = compare(rows, agg, labels, args.tolerance)
    verdict = answer(comparisons, args.tolerance)
    print(f"per-layer question: {verdict['answer']} ({verdict['why']})")
    write_result(
        name,
        {
            **header,
            "corpus": corpus_of(rows),
            "wall_s": time.perf_counter() - start,
            "runs": rows,
            "summary": agg,
            "comparisons": comparisons,
            "pairwise": pairwise_rows(comparisons),
            "verdict": verdict,
        },
        out=args.out,
    )
    if partial is not None:
        partial.unlink(missing_ok=True)


RUN_OVERHEAD = 1.3  # a run's wall time over its training time (H200: 95-105 s for 80 s)


def fits(elapsed: float, rows: list[dict], stop_after: float | None) -> bool:
    """Whether a run started `elapsed` seconds in ends within `stop_after`, if it takes as
    long as the longest of `rows` (their wall time; for rows from before it was kept, their
    training time times `RUN_OVERHEAD`; 0 when no row has either)."""
    if stop_after is None:
        return True
    walls = [r.get("wall_s") or (r.get("train_s") or 0.0) * RUN_OVERHEAD for r in rows]
    return elapsed + max(walls, default=0.0) <= stop_after


def speeds_by_seed(rows: list[dict], label: str, key: str) -> dict[int, float]:
    """seed -> `key` (a speed) of `label`'s COMPLETE runs that have it."""
    return {
        r["seed"]: r[key]
        for r in rows
        if r["label"] == label and r["state"] == "COMPLETE" and r.get(key)
    }


def speed_ratio(rows: list[dict], a: str, b: str) -> dict:
    """a's speed over b's, paired by seed: the geometric mean of the per-seed ratios, its
    95% t-interval (on their logarithms; None below two seeds) and n. The speed is the
    speedup over MHA, paired with the MHA step inside each run, so the machine's drift
    between runs cancels; where a seed lacks it for either, both runs' throughputs."""
    by_key = {
        k: (speeds_by_seed(rows, a, k), speeds_by_seed(rows, b, k))
        for k in ("speedup_vs_mha", "throughput_tokens_per_s")
    }
    logs = []
    for seed in sorted({r["seed"] for r in rows}):
        for sa, sb in by_key.values():
            if seed in sa and seed in sb:
                logs.append(math.log(sa[seed] / sb[seed]))
                break
    ci = mean_ci95(logs)
    return {
        "ratio": math.exp(statistics.fmean(logs)) if logs else None,
        "ci95": [math.exp(ci[1]), math.exp(ci[2])] if ci else None,
        "n": len(logs),
    }


def compare(rows: list[dict], agg: dict, mixed: list[str], tolerance: float) -> dict:
    """Per mixed allocation, per uniform variant: the speed ratio uniform / mixed and the
    val-loss difference uniform - mixed, both paired by seed with their 95% intervals, and
    the verdict (module docstring): ``mixed better`` (lower loss beyond the noise and at
    least as fast: the ratio's interval reaches no higher than 1 + `tolerance`),
    ``uniform better`` (the same the other way round), ``trade-off`` (lower loss beyond
    the noise, but slower beyond the tolerance) or ``cannot tell``. A uniform variant with
    no finished run is listed with verdict ``no runs``."""
    out: dict[str, dict] = {}
    for m in mixed:
        out[m] = {}
        for u, s in agg.items():
            if u in mixed or m not in agg:
                continue
            if "val_loss" not in s:
                out[m][u] = {"verdict": "no runs"}
                continue
            speed = speed_ratio(rows, u, m)
            p = paired(rows, u, m)
            low, high = p["ci95_low"], p["ci95_high"]
            if low is None or speed["ci95"] is None or low <= 0 <= high:
                verdict = "cannot tell"
            elif low > 0:  # the mixed allocation's loss is lower
                verdict = "mixed better" if speed["ci95"][1] <= 1 + tolerance else "trade-off"
            else:
                verdict = "uniform better" if speed["ci95"][0] >= 1 - tolerance else "trade-off"
            if verdict == "trade-off" and not (
                speed["ci95"][0] > 1 + tolerance or speed["ci95"][1] < 1 - tolerance
            ):
                verdict = "cannot tell"  # the faster one is not faster beyond the tolerance
            out[m][u] = {
                "speed_ratio": speed["ratio"],
                "speed_ci95": speed["ci95"],
                "speed_n": speed["n"],
                **{k: p[k] for k in ("n", "diff_mean", "ci95_low", "ci95_high")},
                "verdict": verdict,
            }
    return out


def pairwise_rows(comparisons: dict) -> list[dict]:
    """`compare`'s table as the rows every science result carries (``pairwise``): a is the
    uniform variant, b the mixed allocation, the difference a - b in val loss with its
    interval, the speed ratio a / b with its interval, and the verdict."""
    keys = ("n", "diff_mean", "ci95_low", "ci95_high", "speed_ratio", "speed_ci95", "speed_n")
    return [
        {"a": u, "b": m, **{k: c.get(k) for k in keys}, "verdict": c["verdict"]}
        for m, against in comparisons.items()
        for u, c in against.items()
    ]


def answer(comparisons: dict, tolerance: float) -> dict:
    """yes / no / not resolved (module docstring), with the allocations that decide it."""

    def wins(against: dict) -> bool:  # lower loss than every uniform at its speed or faster
        at_speed = 0
        for c in against.values():
            speed = c.get("speed_ci95")
            if speed and speed[1] < 1 - tolerance:
                continue  # slower beyond the tolerance: whatever its loss, not at this speed
            if c["verdict"] == "mixed better":
                at_speed += speed[0] <= 1 + tolerance
            elif not (c["verdict"] == "trade-off" and c["ci95_low"] > 0):
                return False  # as fast or faster, and its loss is not beaten
        return at_speed > 0

    winners = [m for m, against in comparisons.items() if against and wins(against)]
    beaten = [
        m
        for m, against in comparisons.items()
        if any(c["verdict"] == "uniform better" for c in against.values())
    ]
    if winners:
        return {
            "answer": "yes",
            "why": f"{', '.join(winners)}: a lower loss beyond the noise than every uniform "
            "variant at its speed (one at least) and every faster one",
        }
    if comparisons and len(beaten) == len(comparisons):
        return {
            "answer": "no",
            "why": "every mixed allocation has a uniform variant at least as fast with a "
            "lower loss",
        }
    return {
        "answer": "not resolved",
        "why": "no mixed allocation has a lower loss beyond the noise than every uniform "
        "variant at its speed and faster, and not every one is beaten",
    }


if __name__ == "__main__":
    sys.exit(guarded(main))
