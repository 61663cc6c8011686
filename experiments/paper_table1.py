"""The paper's Table 1 (dense models, validation loss) at a budget that fits our GPU time.

Same architecture family as the paper (d_model 256, 8 layers, H = 16, SwiGLU 768, context
1024), every variant trained for the same number of tokens on the embedded corpus (the
Python sources installed on the machine, site-packages included, so a run never repeats its
data) for several seeds, through the search's own trial code. Reports validation loss,
perplexity, next-token accuracy and wall time with their spread, and compares the ordering
with the paper's (MHA < GQA < sSQA < SQA < xSQA < MQA < xSMQA).

    python -m experiments.paper_table1 --tokens 20000000 --seeds 0,1      # on a GPU
    python -m experiments.paper_table1 --smoke                            # CPU, seconds

Finished runs survive a stop: they are kept in `<result>.partial.json`, rewritten after every
run and removed once the result is written. Seeds run apart (one per GPU, or one per session)
are joined with `--merge`, which checks they share the model, budget and corpus:

    python -m experiments.paper_table1 --merge seed0.json seed1.json --out table1.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from experiments.common import write_partial, write_result
from experiments.science import (
    PAPER_MODEL,
    PAPER_TABLE1,
    SMOKE_MODEL,
    aggregate,
    corpus_of,
    make_spec,
    ordering_report,
    seed_list,
    train_allocation,
)
from sqa_nas.cli import guarded
from sqa_nas.errors import UserError

VARIANTS = ["MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "lSQA"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", type=seed_list, default="0,1")
    p.add_argument("--tokens", type=int, default=20_000_000, help="training tokens per run")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-batches", type=int, default=32)
    p.add_argument("--compile", action="store_true", help="torch.compile each model (GPU)")
    p.add_argument(
        "--no-site-packages", action="store_true", help="standard library only (a smaller corpus)"
    )
    p.add_argument("--smoke", action="store_true", help="tiny model and budget (CPU test)")
    p.add_argument("--out", help="result file (default experiments/results/...)")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="RESULT",
        help="join result files of this script (other seeds, same model, budget "
        "and corpus) into --out instead of training",
    )
    args = p.parse_args(argv)
    out = args.out and Path(args.out)
    if args.merge:
        return merge([Path(f) for f in args.merge], out)
    variants = args.variants.split(",")
    seeds = args.seeds
    model, tokens, batch, evals = PAPER_MODEL, args.tokens, args.batch, args.eval_batches
    if args.smoke:
        model, tokens, batch, evals = SMOKE_MODEL, 2 * 4 * 64, 4, 2
    budget = {
        "tokens_per_run": tokens,
        "batch_size": batch,
        "seq_len": model["seq_len"],
        "lr": args.lr,
        "eval_batches": evals,
        "compile": args.compile,
    }
    rows, start = [], time.perf_counter()
    name = "paper_table1" + ("_smoke" if args.smoke else "")
    for seed in seeds:
        spec = make_spec(
            study="paper_table1",
            model=model,
            variants=variants,
            tokens=tokens,
            batch=batch,
            lr=args.lr,
            seed=seed,
            compile=args.compile,
            site_packages=not (args.smoke or args.no_site_packages),
            eval_batches=evals,
        )
        for label, params in spec.seed_params():
            row = train_allocation(spec, params, seed_index=seed, label=label)
            rows.append(row)
            print(
                f"seed {seed} {label:6s} {row['allocation']:8s} val_loss "
                f"{row['val_loss'] or float('nan'):.4f} acc {row['accuracy'] or 0:.3f} "
                f"{row['train_s'] or 0:.1f}s {row['state']} {row['fail_reason'] or ''}",
                flush=True,
            )
            partial = write_partial(
                name,
                _payload(rows, budget, model, seeds, variants, time.perf_counter() - start),
                out=out,
            )
    payload = _payload(rows, budget, model, seeds, variants, time.perf_counter() - start)
    order = payload["ordering"]
    print(
        f"our order: {' < '.join(order['our_order'])}; paper: "
        f"{' < '.join(order['paper_order'])}; Kendall tau {order['kendall_tau']}"
    )
    write_result(name, payload, out=out)
    partial.unlink(missing_ok=True)


def _payload(
    rows: list[dict],
    budget: dict,
    model: dict,
    seeds: list[int],
    variants: list[str],
    wall_s: float,
) -> dict:
    agg = aggregate(rows)
    return {
        "experiment": "paper_table1",
        "budget": budget,
        "model": model,
        "seeds": seeds,
        "variants": variants,
        "corpus": corpus_of(rows),
        "wall_s": wall_s,
        "paper": PAPER_TABLE1,
        "runs": rows,
        "summary": agg,
        "ordering": ordering_report(agg, PAPER_TABLE1),
    }


def merge(paths: list[Path], out: Path | None) -> None:
    """One result from several runs of this script that differ only in their seeds."""
    parts = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"--merge: cannot read {path}: {exc}") from None
        if data.get("experiment") != "paper_table1":
            raise UserError(f"--merge: {path} is not a paper_table1 result")
        parts.append((path, data))
    first_path, first = parts[0]
    for path, data in parts[1:]:
        for key in ("model", "budget"):
            if data[key] != first[key]:
                raise UserError(
                    f"--merge: {path} has another {key} than {first_path} "
                    f"({data[key]} vs {first[key]})"
                )
        if data["machine"]["device"] != first["machine"]["device"]:
            raise UserError(
                f"--merge: {path} ran on {data['machine']['device']}, "
                f"{first_path} on {first['machine']['device']}: train times would "
                "not compare"
            )
        fingerprint = (data.get("corpus") or {}).get("fingerprint")
        if fingerprint != (first.get("corpus") or {}).get("fingerprint"):
            raise UserError(f"--merge: {path} trained on another corpus than {first_path}")
    rows = [r for _, d in parts for r in d["runs"]]
    seen = set()
    for path, data in parts:
        for r in data["runs"]:
            if (r["label"], r["seed"]) in seen:
                raise UserError(
                    f"--merge: {r['label']} seed {r['seed']} is in more than one "
                    f"file (again in {path})"
                )
            seen.add((r["label"], r["seed"]))
    seeds = sorted({r["seed"] for r in rows})
    variants = list(dict.fromkeys(v for _, d in parts for v in d["variants"]))
    payload = _payload(
        rows, first["budget"], first["model"], seeds, variants, sum(d["wall_s"] for _, d in parts)
    )
    if any(d.get("partial") for _, d in parts):
        payload["partial"] = True
    payload["merged_from"] = [
        {"file": p.name, "command": d["command"], "machine": d["machine"].get("device")}
        for p, d in parts
    ]
    smoke = "_smoke" if first["model"] == SMOKE_MODEL else ""
    write_result("paper_table1" + smoke, payload, out=out, machine=first["machine"])


if __name__ == "__main__":
    sys.exit(guarded(main))
