"""The paper's Table 1 (dense models, validation loss) with confidence intervals.

Same architecture family as the paper (d_model 256, 8 layers, H = 16, SwiGLU 768, context
1024), every variant trained for the same number of tokens, for several seeds, through the
search's own trial code, on the embedded corpus (the Python sources installed on the
machine) or an English prose corpus (`experiments.corpora`). Common random numbers: a seed
fixes the data order (and the weights' seed) for every variant, and every run is evaluated
on the same validation batches, so variants are compared seed by seed: each variant against
MHA and GQA, and each of the paper's pairwise claims (GQA < sSQA < SQA < ...), with the 95%
t-interval of the per-seed differences and a verdict. Each run is also evaluated at
`--curve-points` token counts on the way: the learning curves (PNG beside the result).

    python -m experiments.paper_table1 --seeds 0,1,2 --tokens 200000000 --compile   # GPU
    python -m experiments.paper_table1 --corpus DIR ...     # DIR from experiments.corpora
    python -m experiments.paper_table1 --smoke                                      # CPU

Finished runs survive a stop: they are kept in `<result>.partial.json`, rewritten after every
run and removed once the result is written. Runs made apart (other seeds or variants, on
another GPU or in another session) are joined with `--merge`, which refuses files that differ
in model, budget, corpus or GPU; a single file merged is analysed again. `--scaling` reads
Table 1 results at several budgets and says whether the gaps grow, shrink or stay:

    python -m experiments.paper_table1 --merge seed0.json seed1.json --out table1.json
    python -m experiments.paper_table1 --scaling t12M.json t50M.json t200M.json --out s.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from experiments.common import write_partial, write_result
from experiments.report_science import plot_curves, plot_scaling
from experiments.science import (
    INTERVAL,
    PAPER_MODEL,
    PAPER_TABLE1,
    SMOKE_MODEL,
    aggregate,
    corpus_of,
    corpus_spec,
    curves,
    git_revision,
    make_spec,
    ordering_report,
    paired,
    pairwise,
    resumed_runs,
    seed_list,
    train_allocation,
)
from sqa_nas.cli import guarded
from sqa_nas.errors import UserError
from sqa_nas.stats import mean_ci95

VARIANTS = ["MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "lSQA"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", type=seed_list, default="0,1,2")
    p.add_argument("--tokens", type=int, default=200_000_000, help="training tokens per run")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-batches", type=int, default=32)
    p.add_argument("--curve-points", type=int, default=10, help="evaluations on the way (0: none)")
    p.add_argument("--compile", action="store_true", help="torch.compile each model (GPU)")
    p.add_argument(
        "--corpus",
        default="embedded",
        help="embedded (Python sources, site-packages included), stdlib, or a folder made "
        "by experiments.corpora (its prose/)",
    )
    p.add_argument("--no-site-packages", action="store_true", help="the same as --corpus stdlib")
    p.add_argument("--timing", action="store_true", help="also time each step paired with MHA's")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished runs of a stopped run of this command (its partial file "
        "beside --out) and train only the rest",
    )
    p.add_argument("--smoke", action="store_true", help="tiny model and budget (CPU test)")
    p.add_argument("--out", help="result file (default experiments/results/...)")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="RESULT",
        help="join result files of this script (other seeds or variants, same model, "
        "budget and corpus) into --out instead of training",
    )
    p.add_argument(
        "--scaling", nargs="+", metavar="RESULT", help="Table 1 results at several budgets"
    )
    p.add_argument(
        "--margin",
        type=float,
        default=0.005,
        help="--scaling: a change of a gap within +-margin (nats) counts as staying",
    )
    args = p.parse_args(argv)
    out = args.out and Path(args.out)
    if args.merge:
        return merge([Path(f) for f in args.merge], out)
    if args.scaling:
        return scale([Path(f) for f in args.scaling], out, args.margin)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"--variants: unknown {', '.join(unknown)}; choose from {VARIANTS}")
    corpus_name, data = corpus_spec(
        "stdlib" if args.no_site_packages else args.corpus, smoke=args.smoke
    )
    model, tokens, batch, evals = PAPER_MODEL, args.tokens, args.batch, args.eval_batches
    curve_points = args.curve_points
    if args.smoke:
        model, tokens, batch, evals, curve_points = SMOKE_MODEL, 2 * 4 * 64, 4, 2, 1
    budget = {
        "tokens_per_run": tokens,
        "batch_size": batch,
        "seq_len": model["seq_len"],
        "lr": args.lr,
        "eval_batches": evals,
        "compile": args.compile,
        "curve_points": curve_points,
    }
    header = {
        "budget": budget,
        "model": model,
        "seeds": args.seeds,
        "variants": variants,
        "corpus_name": corpus_name,
        "data": data,
        "git_revision": git_revision(),
    }
    same = {k: header[k] for k in ("budget", "model", "seeds", "variants", "corpus_name")}
    rows = resumed_runs(out, same) if args.resume else []
    done = {(r["label"], r["seed"]) for r in rows}
    start, partial = time.perf_counter(), None
    name = result_name("paper_table1", corpus_name, tokens, args.smoke)
    for seed in args.seeds:
        spec = make_spec(
            study="paper_table1",
            model=model,
            variants=variants,
            tokens=tokens,
            batch=batch,
            lr=args.lr,
            seed=seed,
            compile=args.compile,
            site_packages=False,
            eval_batches=evals,
            data=data,
            objectives=("val_loss", "throughput_tokens_per_s") if args.timing else ("val_loss",),
        )
        for label, params in spec.seed_params():
            if (label, seed) in done:
                continue
            row = train_allocation(
                spec, params, seed_index=seed, label=label, curve_points=curve_points
            )
            rows.append(row)
            print(
                f"seed {seed} {label:6s} {row['allocation']:8s} val_loss "
                f"{row['val_loss'] or float('nan'):.4f} acc {row['accuracy'] or 0:.3f} "
                f"{row['train_s'] or 0:.1f}s {row['state']} {row['fail_reason'] or ''}",
                flush=True,
            )
            payload = _payload(rows, header, time.perf_counter() - start)
            partial = write_partial(name, payload, out=out)
    payload = _payload(rows, header, time.perf_counter() - start)
    order = payload["ordering"]
    print(
        f"our order: {' < '.join(order['our_order'])}; paper: "
        f"{' < '.join(order['paper_order'])}; Kendall tau {order['kendall_tau']}"
    )
    for pair in payload["pairwise"]:
        print(_pair_line(pair))
    path = write_result(name, payload, out=out)
    plot_curves(payload, path.with_suffix(".png"))
    if partial is not None:
        partial.unlink(missing_ok=True)


def result_name(stem: str, corpus_name: str, tokens: int | None, smoke: bool) -> str:
    """The default result name: `paper_table1_prose_200M`, `paper_table1_50M_smoke`..."""
    corpus = "" if corpus_name == "embedded" else f"_{corpus_name}"
    budget = f"_{tokens / 1e6:g}M" if tokens and not smoke else ""
    return stem + corpus + budget + ("_smoke" if smoke else "")


def _payload(rows: list[dict], header: dict, wall_s: float) -> dict:
    agg = aggregate(rows)
    return {
        "experiment": "paper_table1",
        **header,
        "corpus": corpus_of(rows),
        "wall_s": wall_s,
        "paper": PAPER_TABLE1,
        "interval": INTERVAL,
        "runs": rows,
        "summary": agg,
        "pairwise": pairwise(rows, header["variants"]),
        "ordering": ordering_report(agg, PAPER_TABLE1),
        "curves": curves(rows),
    }


def _pair_line(pair: dict) -> str:
    """One pairwise comparison as a line: `GQA - MHA: +0.0200 [+0.0100, +0.0300] higher`."""
    what = pair.get("claim") or f"{pair['a']} - {pair['b']}"
    if pair["ci95_low"] is None:
        return f"{what}: n={pair['n']}, cannot tell"
    return (
        f"{what}: {pair['diff_mean']:+.4f} [{pair['ci95_low']:+.4f}, "
        f"{pair['ci95_high']:+.4f}] n={pair['n']} {pair['verdict']}"
    )


def _read(path: Path, experiment: str, flag: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{flag}: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("experiment") != experiment:
        raise UserError(f"{flag}: {path} is not a {experiment} result")
    # Files from before issue 19 name their corpus by kind only.
    data.setdefault("corpus_name", (data.get("corpus") or {}).get("kind", "embedded"))
    return data


def merge(paths: list[Path], out: Path | None) -> None:
    """One result from several runs of this script that differ only in their seeds or
    variants; refuses another model, budget, corpus or GPU, and a run found twice."""
    parts = [(path, _read(path, "paper_table1", "--merge")) for path in paths]
    first_path, first = parts[0]
    for path, data in parts[1:]:
        for key in ("model", "budget", "corpus_name"):
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
    seen = set()
    for path, data in parts:
        for r in data["runs"]:
            if (r["label"], r["seed"]) in seen:
                raise UserError(
                    f"--merge: {r['label']} seed {r['seed']} is in more than one "
                    f"file (again in {path})"
                )
            seen.add((r["label"], r["seed"]))
    rows = [r for _, d in parts for r in d["runs"]]
    header = {
        "budget": first["budget"],
        "model": first["model"],
        "seeds": sorted({r["seed"] for r in rows}),
        "variants": list(dict.fromkeys(v for _, d in parts for v in d["variants"])),
        "corpus_name": first["corpus_name"],
        "data": first.get("data"),
        "git_revision": first.get("git_revision"),
    }
    payload = _payload(rows, header, sum(d["wall_s"] for _, d in parts))
    if any(d.get("partial") for _, d in parts):
        payload["partial"] = True
    payload["merged_from"] = [
        {
            "file": p.name,
            "command": d["command"],
            "machine": d["machine"].get("device"),
            "git_revision": d.get("git_revision"),
        }
        for p, d in parts
    ]
    tokens, smoke = first["budget"]["tokens_per_run"], first["model"] == SMOKE_MODEL
    name = result_name("paper_table1", first["corpus_name"], tokens, smoke)
    path = write_result(name, payload, out=out, machine=first["machine"])
    if payload["curves"]:
        plot_curves(payload, path.with_suffix(".png"))


def scale(paths: list[Path], out: Path | None, margin: float) -> None:
    """The scaling result (`science.scaling`) of Table 1 files at several budgets."""
    if len(paths) < 2:
        raise UserError("--scaling: give Table 1 results at two budgets or more")
    tables = [_read(path, "paper_table1", "--scaling") for path in paths]
    result = scaling(tables, margin)
    first = min(tables, key=lambda t: t["budget"]["tokens_per_run"])
    payload = {
        "experiment": "scaling",
        "model": first["model"],
        "corpus_name": first["corpus_name"],
        "corpus": first.get("corpus"),
        "seeds": sorted({r["seed"] for t in tables for r in t["runs"]}),
        "budget": {"tokens_per_run": result["budgets"]},
        "git_revision": git_revision(),
        "interval": INTERVAL,
        "tables": [
            {
                "file": p.name,
                "tokens_per_run": t["budget"]["tokens_per_run"],
                "command": t["command"],
                "git_revision": t.get("git_revision"),
            }
            for p, t in zip(paths, tables)
        ],
        **result,
    }
    for t in result["trends"]:
        low, high = t["ci95_low"], t["ci95_high"]
        ci = "" if low is None else f" [{low:+.4f}, {high:+.4f}]"
        print(f"{t['a']} - {t['b']}: {t['verdict']}{ci}")
    name = result_name("scaling", first["corpus_name"], None, first["model"] == SMOKE_MODEL)
    path = write_result(name, payload, out=out, machine=first["machine"])
    plot_scaling(payload, path.with_suffix(".png"))


# Budget keys that may differ between the tables of a scaling comparison (compiling changes
# the speed, not the arithmetic).
_NOT_COMPARED = ("tokens_per_run", "curve_points", "compile")
SCALING_PAIRS = [("GQA", "MHA"), ("SQA", "MHA"), ("xSQA", "MHA"), ("SQA", "GQA"), ("xSQA", "GQA")]


def scaling(tables: list[dict], margin: float) -> dict[str, Any]:
    """How the gaps a - b of `SCALING_PAIRS` change with the training budget, from Table 1
    results at different ``tokens_per_run`` (same model, corpus and other settings). Per
    budget, each gap with its paired interval; per pair, the change of the gap from the
    smallest budget to the largest, paired by seed and signed so that positive means the
    gap widens: ``stays`` when its 95% interval lies within +-`margin`, else ``grows`` or
    ``shrinks`` when the interval excludes 0, else ``cannot tell``. Each budget is its own run
    with its own LR schedule: a learning curve's point at 50M tokens of a 200M run is not
    the 50M budget, so curves are not used here."""
    tables = sorted(tables, key=lambda t: t["budget"]["tokens_per_run"])
    first = tables[0]
    for t in tables[1:]:
        for key in ("model", "corpus_name"):
            if t.get(key) != first.get(key):
                raise UserError(f"--scaling: the tables differ in {key}")
        fp = (t.get("corpus") or {}).get("fingerprint")
        if fp != (first.get("corpus") or {}).get("fingerprint"):
            raise UserError("--scaling: the tables trained on different corpora")
        rest = {k: v for k, v in t["budget"].items() if k not in _NOT_COMPARED}
        mine = {k: v for k, v in first["budget"].items() if k not in _NOT_COMPARED}
        if rest != mine:
            raise UserError(f"--scaling: the tables differ in more than tokens ({rest} vs {mine})")
    budgets = [t["budget"]["tokens_per_run"] for t in tables]
    if len(set(budgets)) != len(budgets):
        raise UserError(f"--scaling: two tables at the same budget ({budgets})")
    points = [
        {
            "tokens": t["budget"]["tokens_per_run"],
            "gaps": [paired(t["runs"], a, b) for a, b in SCALING_PAIRS],
        }
        for t in tables
    ]
    trends = []
    for i, (a, b) in enumerate(SCALING_PAIRS):
        small, large = points[0]["gaps"][i], points[-1]["gaps"][i]
        seeds = sorted(set(small["seeds"]) & set(large["seeds"]))
        ds = dict(zip(small["seeds"], small["diffs"]))
        dl = dict(zip(large["seeds"], large["diffs"]))
        sign = 1.0 if (small["diff_mean"] or 0.0) >= 0 else -1.0
        change = [sign * (dl[s] - ds[s]) for s in seeds]
        ci = mean_ci95(change)
        if ci is None:
            verdict = "cannot tell"
        elif -margin <= ci[1] and ci[2] <= margin:  # whatever its sign, too small to matter
            verdict = "stays"
        elif ci[1] > 0:
            verdict = "grows"
        elif ci[2] < 0:
            verdict = "shrinks"
        else:
            verdict = "cannot tell"
        trends.append(
            {
                "a": a,
                "b": b,
                "from_tokens": points[0]["tokens"],
                "to_tokens": points[-1]["tokens"],
                "seeds": seeds,
                "change_mean": ci and ci[0],
                "ci95_low": ci and ci[1],
                "ci95_high": ci and ci[2],
                "verdict": verdict,
            }
        )
    return {"budgets": budgets, "points": points, "trends": trends, "margin": margin}


if __name__ == "__main__":
    sys.exit(guarded(main))
