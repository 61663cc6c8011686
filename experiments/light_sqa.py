"""Open question 3 of the paper: is light SQA (H_q = 3H/4) on the quality / speed front?

Every allocation of `search_spaces/light_sqa.yaml` (one H_q / H_kv for all layers: H_q in
{H, 3H/4, H/2, H/4} x H_kv in {H, H/2, H/4, 1}, the 11 valid pairs) trained with several
seeds at the Table 1 budget, through the same code and settings as `paper_table1` (common
random numbers: a seed fixes the data order for every allocation). Each allocation is scored
by its validation loss and its training speed (tokens/s of its whole training run), each
with a 95% t-interval over the seeds, and placed against the front with those intervals:
``off the front`` when another is as fast (within 2%) and has a lower loss beyond the
noise, ``on the front`` when no other's intervals even reach as good on both axes, else
``not resolved``. Runs a Table 1 result already holds
(same budget, corpus, model and GPU) are reused with `--table1`: only the three allocations
Table 1 lacks are trained.

    python -m experiments.light_sqa --seeds 0,1,2 --tokens 200000000 --compile \\
        --table1 experiments/results/paper_table1_h200.json     # on a GPU
    python -m experiments.light_sqa --smoke                     # CPU, a minute
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from experiments.common import SEARCH_SPACES, write_partial, write_result
from experiments.science import (
    INTERVAL,
    PAPER_MODEL,
    SMOKE_MODEL,
    aggregate,
    corpus_of,
    corpus_spec,
    git_revision,
    make_spec,
    resumed_runs,
    seed_list,
    train_allocation,
)
from sqa_nas.cli import guarded
from sqa_nas.data import load_dataset
from sqa_nas.errors import UserError
from sqa_nas.machine import device_name
from sqa_nas.search.choices import HeadsChoice
from sqa_nas.search.space import load_space
from sqa_nas.stats import mean_ci95
from sqa_nas.train import pick_device

SPACE = SEARCH_SPACES / "light_sqa.yaml"  # its grid of H_q / H_kv pairs
TABLE1_VARIANTS = ["MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "lSQA"]
SPEED_TOLERANCE = 0.02  # speeds this close (a fraction of the slower's) count as equal


def _diff(a: dict[int, float], b: dict[int, float]) -> tuple[float, float] | None:
    """The 95% interval of a - b paired by seed (None below two shared seeds)."""
    seeds = sorted(set(a) & set(b))
    ci = mean_ci95([a[s] - b[s] for s in seeds])
    return ci and (ci[1], ci[2])


def front_verdicts(rows: list[dict], tolerance: float = SPEED_TOLERANCE) -> dict[str, dict]:
    """Per allocation (label): its place against the front with intervals, and the
    allocations that decide it. Both axes are compared seed by seed; speeds within
    `tolerance` count as equal. Allocation a is ``off the front`` when some b has a lower
    loss beyond the noise (the 95% interval of b - a below 0) and is as fast (the interval
    of its speed minus a's reaches no lower than -tolerance * a's speed); ``on the front``
    when no b's intervals even reach as good on both axes; else ``not resolved``."""
    done = [r for r in rows if r["state"] == "COMPLETE" and r.get("train_tokens_per_s")]
    labels = list(dict.fromkeys(r["label"] for r in done))
    loss = {k: {r["seed"]: r["val_loss"] for r in done if r["label"] == k} for k in labels}
    speed = {
        k: {r["seed"]: r["train_tokens_per_s"] for r in done if r["label"] == k} for k in labels
    }
    out = {}
    for a in labels:
        beaten_by, maybe = [], []
        for b in labels:
            if b == a:
                continue
            dl, ds = _diff(loss[b], loss[a]), _diff(speed[b], speed[a])
            if dl is None or ds is None:
                maybe.append(b)
                continue
            slack = tolerance * statistics.fmean(speed[a].values())
            if dl[1] < 0 and ds[0] >= -slack:  # lower loss beyond the noise, as fast
                beaten_by.append(b)
            elif dl[0] <= 0 and ds[1] >= -slack:  # its intervals reach as good on both
                maybe.append(b)
        verdict = "off the front" if beaten_by else "not resolved" if maybe else "on the front"
        out[a] = {"verdict": verdict, "beaten_by": beaten_by, "could_be_beaten_by": maybe}
    return out


def _reused(
    path: Path, budget: dict, model: dict, seeds: list[int], corpus_name: str, data: dict
) -> list[dict]:
    """The runs of Table 1 result `path` that this experiment would make itself; refused
    before anything trains when they ran another budget, model, corpus or GPU."""
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--table1: cannot read {path}: {exc}") from None
    if not isinstance(table, dict) or table.get("experiment") != "paper_table1":
        raise UserError(f"--table1: {path} is not a paper_table1 result")
    theirs = {k: v for k, v in table["budget"].items() if k != "curve_points"}
    mine = {k: v for k, v in budget.items() if k != "curve_points"}
    if theirs != mine or table["model"] != model:
        raise UserError(
            f"--table1: {path} trained another budget or model ({theirs} vs {mine}); give "
            "the same --tokens, --compile and corpus"
        )
    if table.get("corpus_name", "embedded") != corpus_name:
        raise UserError(f"--table1: {path} trained on the {table.get('corpus_name')} corpus")
    here = device_name(pick_device())
    if table["machine"]["device"] != here:
        raise UserError(
            f"--table1: {path} ran on {table['machine']['device']}, this machine has "
            f"{here}: speeds would not compare"
        )
    runs = [r for r in table["runs"] if r["seed"] in seeds]
    whole = (table.get("corpus") or {}).get("fingerprint")  # for runs that name none
    theirs = {(r.get("corpus") or {}).get("fingerprint") or whole for r in runs}
    if runs and None in theirs:
        raise UserError(f"--table1: {path} does not record the fingerprint of its corpus")
    here = load_dataset(data).fingerprint  # built once here, then read from the cache
    if runs and theirs != {here}:
        raise UserError(
            f"--table1: {path} trained on a corpus of another fingerprint "
            f"({', '.join(f[:16] for f in sorted(theirs))}) than this machine's "
            f"{corpus_name} corpus ({here[:16]}): its runs would not compare"
        )
    return [{**r, "reused": True} for r in runs]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=seed_list, default="0,1,2")
    p.add_argument("--tokens", type=int, default=200_000_000, help="training tokens per run")
    p.add_argument("--compile", action="store_true", help="torch.compile each model (GPU)")
    p.add_argument("--corpus", default="embedded", help="as paper_table1's --corpus")
    p.add_argument("--allocations", help="H_q/H_kv pairs, e.g. 16/16,12/4 (default: all)")
    p.add_argument("--table1", type=Path, help="reuse this Table 1 result's runs")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished runs of a stopped run of this command (its partial file "
        "beside --out) and train only the rest",
    )
    p.add_argument("--smoke", action="store_true", help="tiny model and budget (CPU test)")
    p.add_argument("--out", type=Path, help="result JSON (default experiments/results/...)")
    args = p.parse_args(argv)
    corpus_name, data = corpus_spec(args.corpus, smoke=args.smoke)
    model, tokens, batch, evals = PAPER_MODEL, args.tokens, 64, 32
    if args.smoke:
        model, tokens, batch, evals = SMOKE_MODEL, 2 * 4 * 64, 4, 2
    budget = {
        "tokens_per_run": tokens,
        "batch_size": batch,
        "seq_len": model["seq_len"],
        "lr": 2e-3,
        "eval_batches": evals,
        "compile": args.compile,
    }
    seeded = {
        seed: make_spec(
            study="light_sqa",
            model=model,
            variants=TABLE1_VARIANTS,
            tokens=tokens,
            batch=batch,
            lr=budget["lr"],
            seed=seed,
            compile=args.compile,
            site_packages=False,
            eval_batches=evals,
            data=data,
            objectives=("val_loss",),
        )
        for seed in args.seeds
    }
    spec = seeded[args.seeds[0]]
    names = {params["all.heads"]: label for label, params in spec.seed_params()}
    grid = [str(c) for c in load_space(SPACE).distributions()["all.heads"].choices]
    if args.allocations:
        asked = args.allocations.split(",")
        unknown = [a for a in asked if a not in grid]
        if unknown:
            raise UserError(f"--allocations: {', '.join(unknown)} not in the grid {grid}")
        grid = asked
    rows = (
        _reused(args.table1, budget, model, args.seeds, corpus_name, data) if args.table1 else []
    )
    rows = [r for r in rows if r["allocation"].split(" x")[0] in grid]
    header = {
        "experiment": "light_sqa",
        "budget": budget,
        "model": model,
        "seeds": args.seeds,
        "allocations": grid,
        "corpus_name": corpus_name,
        "data": data,
        "git_revision": git_revision(),
        "reused_from": str(args.table1) if args.table1 else None,
        "interval": INTERVAL + "; speed: training tokens/s of each run, paired likewise",
    }
    if args.resume:
        same = {k: header[k] for k in ("budget", "model", "seeds", "allocations", "corpus_name")}
        made = {(r["label"], r["seed"]) for r in rows}  # reused from Table 1 again
        rows += [r for r in resumed_runs(args.out, same) if (r["label"], r["seed"]) not in made]
    have = {(r["allocation"].split(" x")[0], r["seed"]) for r in rows}
    name = "light_sqa" + ("" if corpus_name == "embedded" else f"_{corpus_name}")
    name += "_smoke" if args.smoke else ""
    start, partial = time.perf_counter(), None
    for seed in args.seeds:
        for heads in grid:
            if (heads, seed) in have:
                continue
            label = names.get(heads, heads)
            row = train_allocation(
                seeded[seed], {"all.heads": heads}, seed_index=seed, label=label
            )
            rows.append(row)
            print(
                f"seed {seed} {label:6s} {heads:6s} val_loss {row['val_loss'] or float('nan'):.4f}"
                f" {row.get('train_tokens_per_s') or 0:,.0f} tokens/s {row['state']}",
                flush=True,
            )
            payload = {**header, "corpus": corpus_of(rows), "runs": rows}
            partial = write_partial(name, payload, out=args.out)
    fingerprints = {(r.get("corpus") or {}).get("fingerprint") for r in rows}
    if len(fingerprints) > 1:
        raise UserError("--table1: its runs trained on another corpus than the ones made here")
    payload = _payload(rows, header, time.perf_counter() - start, names)
    print(f"lSQA ({payload['light']}): {payload['lsqa']['verdict']}")
    path = write_result(name, payload, out=args.out)
    plot(payload, path.with_suffix(".png"))
    if partial is not None:
        partial.unlink(missing_ok=True)


def _payload(rows: list[dict], header: dict, wall_s: float, names: dict[str, str]) -> dict:
    h = header["model"]["n_heads"]
    light = str(HeadsChoice(3 * h // 4, h // 4))  # the paper's light SQA: H_q = 3H/4
    verdicts = front_verdicts(rows)
    label = names.get(light, light)
    return {
        **header,
        "corpus": corpus_of(rows),
        "wall_s": wall_s,
        "runs": rows,
        "summary": aggregate(rows, keys=("val_loss", "train_tokens_per_s", "accuracy")),
        "front": verdicts,
        "light": light,
        "lsqa": {"label": label, **verdicts.get(label, {"verdict": "not run"})},
    }


def plot(payload: dict, path: Path) -> None:
    """Validation loss against training speed, each with its 95% interval over seeds."""
    # matplotlib is optional (only the plot needs it): imported when drawing
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"on the front": "tab:red", "not resolved": "tab:orange", "off the front": "gray"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, s in payload["summary"].items():
        if "val_loss" not in s or "train_tokens_per_s" not in s:
            continue
        runs = [r for r in payload["runs"] if r["label"] == label and r["state"] == "COMPLETE"]
        ci_loss = mean_ci95([r["val_loss"] for r in runs])
        ci_speed = mean_ci95([r["train_tokens_per_s"] for r in runs])
        x, y = s["train_tokens_per_s"]["mean"], s["val_loss"]["mean"]
        verdict = payload["front"].get(label, {}).get("verdict", "not resolved")
        ax.errorbar(
            x,
            y,
            xerr=[[x - ci_speed[1]], [ci_speed[2] - x]] if ci_speed else None,
            yerr=[[y - ci_loss[1]], [ci_loss[2] - y]] if ci_loss else None,
            fmt="o",
            color=colors[verdict],
            capsize=3,
        )
        bold = label == payload["lsqa"]["label"]
        ax.annotate(
            f"{label} ({s['allocation'].split(' x')[0]})",
            (x, y),
            fontsize=8,
            fontweight="bold" if bold else "normal",
            xytext=(4, 3),
            textcoords="offset points",
        )
    for verdict, color in colors.items():
        ax.scatter([], [], color=color, label=verdict)
    ax.set_xlabel("training throughput (tokens/s), 95% CI over seeds")
    ax.set_ylabel("validation loss, 95% CI over seeds")
    ax.set_title(f"One H_q / H_kv for all layers: lSQA {payload['lsqa']['verdict']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(guarded(main))
