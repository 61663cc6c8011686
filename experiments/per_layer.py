"""Does a per-layer allocation found by the search beat every uniform variant at equal
throughput?

1. Run a per-layer search (or read an existing study with --study / --storage).
2. Take the search's best mixed allocation (layers differ) on the Pareto front by val loss.
3. Retrain it and the uniform baselines (MHA, GQA, SQA, sSQA, xSQA) with fresh seeds.
4. A uniform variant is beaten at equal throughput when it is not faster than the mixed
   allocation (beyond `--tolerance`) and its mean validation loss is higher by more than the
   larger of the two seed spreads.

    python -m experiments.per_layer --space search_spaces/quickstart.yaml --n-trials 16
    python -m experiments.per_layer --space search_spaces/paper_dense.yaml --n-trials 20 \
        --tokens 15000000                                   # on a GPU
    python -m experiments.per_layer --smoke
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from experiments.common import SEARCH_SPACES, write_partial, write_result
from experiments.science import (
    SMOKE_PER_LAYER_HEADS,
    SMOKE_PER_LAYER_MODEL,
    aggregate,
    corpus_of,
    seed_list,
    train_allocation,
)
from sqa_nas.cli import guarded
from sqa_nas.errors import UserError
from sqa_nas.search.driver import Driver
from sqa_nas.search.executors.local import LocalExecutor
from sqa_nas.search.pareto import pareto_front
from sqa_nas.search.records import load_study, trial_records
from sqa_nas.search.space import load_space, parse_space
from sqa_nas.search.storage import default_storage
from sqa_nas.search.study_attrs import read_study_attrs

UNIFORM = ["MHA", "GQA", "SQA", "sSQA", "xSQA"]


def _search(args):
    data = load_space(args.space).model_dump(mode="json")
    data["search"]["tying"], data["search"]["group_size"] = "per_layer", None
    data["study"] = "per_layer" + ("_smoke" if args.smoke else "")
    if args.smoke:
        data["model"].update(SMOKE_PER_LAYER_MODEL)
        data["budget"]["train"].update(steps=4, tokens=None, batch_size=2, eval_batches=2)
        data["budget"]["throughput"].update(batch_size=2, repeats=1)
        data["search"].update(SMOKE_PER_LAYER_HEADS)
        data["seed_trials"] = ["MHA"]
    if args.n_trials:
        data["budget"]["n_trials"] = args.n_trials
    if args.tokens:
        data["budget"]["train"].update(tokens=args.tokens, steps=None)
    spec = parse_space(data, str(args.space))
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
    p.add_argument("--space", type=Path, default=SEARCH_SPACES / "quickstart.yaml")
    p.add_argument("--study", help="use this finished study instead of searching")
    p.add_argument("--storage", help="its storage URL")
    p.add_argument("--n-trials", type=int)
    p.add_argument("--tokens", type=int, help="training tokens per run (default: the space's)")
    p.add_argument(
        "--seeds", type=seed_list, default="100,101", help="fresh seeds for the retraining"
    )
    p.add_argument("--uniform", default=",".join(UNIFORM), help="uniform baselines")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="throughput within this fraction counts as equal (default 5%%)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny model and budget (CPU test)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.study:
        study = load_study(args.study, args.storage)
        attrs = read_study_attrs(study, args.storage or default_storage(args.study))
        spec = parse_space(attrs.space or {}, f"study {args.study}")
    else:
        spec, study = _search(args)
    records = [r for r in trial_records(study) if r.state == "COMPLETE"]
    front = pareto_front(records, spec.objectives)

    def is_mixed(r):
        return len({(x.n_q_heads, x.n_kv_heads, x.window) for x in r.layers}) > 1

    # The best mixed allocation on the front; failing that, the best mixed one found.
    mixed = [r for r in front if is_mixed(r)] or [r for r in records if is_mixed(r)]
    if not mixed:
        raise UserError("the search found no mixed allocation; run more trials")
    best = min(mixed, key=lambda r: r.values["val_loss"])
    where = "on the front" if best in front else "off the front"
    print(f"best mixed allocation ({where}): trial {best.number} [{best.allocation}]")
    data = {**spec.model_dump(mode="json"), "seed_trials": args.uniform.split(",")}
    if args.tokens:  # also for a study searched elsewhere (--study)
        data["budget"]["train"].update(tokens=args.tokens, steps=None)
    retrain = parse_space(data, "retraining")
    candidates = [("mixed", best.params)] + retrain.seed_params()
    rows, partial = [], None
    name = "per_layer" + ("_smoke" if args.smoke else "")
    header = {
        "experiment": "per_layer",
        "space": spec.model_dump(mode="json"),
        "search": {
            "study": study.study_name,
            "trials": len(records),
            "front": [r.allocation for r in front],
        },
        "mixed": {
            "trial": best.number,
            "allocation": best.allocation,
            "params": best.params,
            "search_values": best.values,
            "on_front": best in front,
        },
        "seeds": args.seeds,
        "tolerance": args.tolerance,
    }
    for seed in args.seeds:
        seeded = parse_space(
            {
                **retrain.model_dump(mode="json"),
                "sampler": {**retrain.sampler.model_dump(), "seed": seed},
            },
            "retraining",
        )
        for label, params in candidates:
            row = train_allocation(seeded, params, seed_index=seed, label=label)
            rows.append(row)
            print(
                f"seed {seed} {label:6s} [{row['allocation']}] val_loss {row['val_loss']:.4f} "
                f"throughput {row['throughput_tokens_per_s']:.4g}",
                flush=True,
            )
            partial = write_partial(
                name, {**header, "corpus": corpus_of(rows), "runs": rows}, out=args.out
            )
    agg = aggregate(rows)
    verdicts = compare(agg, args.tolerance)
    comparable = [k for k, v in verdicts.items() if v["comparable"]]
    # None when no uniform variant is as slow as the mixed one: nothing to compare at equal
    # throughput.
    beats_all = (
        all(verdicts[k]["verdict"] == "mixed better" for k in comparable) if comparable else None
    )
    print(
        f"mixed beats every uniform variant at equal or lower throughput "
        f"({', '.join(comparable) or 'none comparable'}): {beats_all}"
    )
    write_result(
        name,
        {
            **header,
            "corpus": corpus_of(rows),
            "runs": rows,
            "summary": agg,
            "verdicts": verdicts,
            "mixed_beats_all_comparable": beats_all,
        },
        out=args.out,
    )
    if partial is not None:
        partial.unlink(missing_ok=True)


def compare(agg: dict, tolerance: float) -> dict:
    """Per uniform variant: is it comparable (not faster than mixed beyond the tolerance),
    and is mixed better, worse, or within the seed spread on validation loss?"""
    m = agg["mixed"]
    out = {}
    for label, u in agg.items():
        if label == "mixed" or "val_loss" not in u:
            continue
        faster = u["throughput_tokens_per_s"]["mean"] > m["throughput_tokens_per_s"]["mean"] * (
            1 + tolerance
        )
        diff = u["val_loss"]["mean"] - m["val_loss"]["mean"]
        spread = max(u["val_loss"]["std"], m["val_loss"]["std"])
        verdict = (
            "within spread"
            if abs(diff) <= spread
            else "mixed better"
            if diff > 0
            else "uniform better"
        )
        out[label] = {
            "comparable": not faster,
            "val_loss_diff": diff,
            "spread": spread,
            "verdict": verdict,
            "throughput_ratio": u["throughput_tokens_per_s"]["mean"]
            / m["throughput_tokens_per_s"]["mean"],
        }
    return out


if __name__ == "__main__":
    sys.exit(guarded(main))
