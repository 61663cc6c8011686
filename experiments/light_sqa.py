"""Open question 3 of the paper: is light SQA (H_q = 3H/4) on the quality / speed front?

Runs the search in `search_spaces/light_sqa.yaml` — one allocation for all layers, H_q in
{H, 3H/4, H/2, H/4} x H_kv in {H, H/2, H/4, 1}, every valid pair once (grid) — scoring each
by validation loss and measured training throughput, then plots the Pareto front with lSQA
(12/4 at H = 16) marked and writes the answer with the data.

    python -m experiments.light_sqa --tokens 10000000       # on a GPU
    python -m experiments.light_sqa --smoke                 # CPU, a minute
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from experiments.common import SEARCH_SPACES, write_result
from experiments.science import SMOKE_MODEL
from sqa_nas.cli import guarded
from sqa_nas.search.choices import HeadsChoice
from sqa_nas.search.driver import Driver
from sqa_nas.search.executors.local import LocalExecutor
from sqa_nas.search.pareto import pareto_front
from sqa_nas.search.records import trial_records
from sqa_nas.search.space import load_space, parse_space

SPACE = SEARCH_SPACES / "light_sqa.yaml"


def run(args) -> dict:
    data = load_space(SPACE).model_dump(mode="json")
    train = data["budget"]["train"]
    if args.smoke:
        data["model"] = {**data["model"], **SMOKE_MODEL}
        train.update(tokens=4 * 64 * 2, batch_size=4, eval_batches=2, compile=False)
        data["budget"]["throughput"].update(batch_size=4, repeats=2)
        data["data"] = {"kind": "embedded"}
        data["budget"]["n_trials"] = 4
    else:
        if args.small:  # a CPU-sized member of the family: H = 16 kept, so 3H/4 = 12 exists
            data["model"].update(d_model=128, n_layers=4, ffn_dim=384, seq_len=256)
            train.update(batch_size=8, compile=False, eval_batches=16)
            data["budget"]["throughput"].update(batch_size=8, repeats=5)
            data["data"] = {"kind": "embedded"}
        if args.tokens:
            train["tokens"] = args.tokens
    data["study"] = "light_sqa" + ("_smoke" if args.smoke else "")
    spec = parse_space(data, str(SPACE))
    storage = args.storage or f"sqlite:///{tempfile.mkdtemp()}/light_sqa.db"
    print(f"study storage: {storage} (rerun with --storage {storage} to resume)", flush=True)
    result = Driver(spec, LocalExecutor(workers=1, trial_timeout_s=3600), storage_url=storage).run(
        spec.budget.n_trials
    )
    records = [r for r in trial_records(result.study) if r.state == "COMPLETE"]
    front = {r.number for r in pareto_front(records, spec.objectives)}
    h = spec.model.n_heads
    light = str(HeadsChoice(3 * h // 4, h // 4))  # the paper's light SQA: H_q = 3H/4
    trials = [
        {
            "number": r.number,
            "allocation": r.allocation,
            "seed_variant": r.seed_variant,
            "val_loss": r.values["val_loss"],
            "throughput_tokens_per_s": r.values["throughput_tokens_per_s"],
            "speedup_vs_mha": r.metrics.speedup_vs_mha,
            "on_front": r.number in front,
        }
        for r in records
    ]
    lsqa = [t for t in trials if t["allocation"].split(" x")[0] == light]
    return {
        "space": spec.model_dump(mode="json"),
        "trials": trials,
        "light": light,
        "lsqa_on_front": bool(lsqa and lsqa[0]["on_front"]),
        "corpus": records[0].attrs.get("corpus") if records else None,
    }


def plot(payload: dict, path: Path) -> None:
    # matplotlib is optional (only the plot needs it): imported when drawing
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    trials = payload["trials"]
    for t in trials:
        ax.scatter(
            t["throughput_tokens_per_s"],
            t["val_loss"],
            c="tab:red" if t["on_front"] else "tab:gray",
            s=30,
            zorder=3,
        )
        label = t["allocation"].split(" x")[0]
        bold = label == payload["light"]
        ax.annotate(
            label + (" (lSQA)" if bold else ""),
            (t["throughput_tokens_per_s"], t["val_loss"]),
            fontsize=8,
            fontweight="bold" if bold else "normal",
            xytext=(4, 3),
            textcoords="offset points",
        )
    front = sorted(
        (t for t in trials if t["on_front"]), key=lambda t: t["throughput_tokens_per_s"]
    )
    ax.plot(
        [t["throughput_tokens_per_s"] for t in front],
        [t["val_loss"] for t in front],
        c="tab:red",
        lw=1,
        label="Pareto front",
    )
    ax.set_xlabel("training throughput (tokens/s)")
    ax.set_ylabel("validation loss")
    ax.set_title(f"H_q / H_kv for all layers — lSQA on the front: {payload['lsqa_on_front']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, help="training tokens per trial (default: the YAML)")
    p.add_argument("--storage", help="Optuna storage (default: a temporary SQLite file)")
    p.add_argument("--smoke", action="store_true", help="tiny model and budget (CPU test)")
    p.add_argument(
        "--small",
        action="store_true",
        help="d_model 128, 4 layers, context 256: a real run that fits a CPU",
    )
    p.add_argument("--out", type=Path, help="result JSON (default experiments/results/...)")
    args = p.parse_args(argv)
    payload = run(args)
    on = [t["allocation"] for t in payload["trials"] if t["on_front"]]
    print(
        f"Pareto front: {', '.join(on)}; lSQA ({payload['light']}) on the front: "
        f"{payload['lsqa_on_front']}"
    )
    name = "light_sqa" + ("_smoke" if args.smoke else "")
    path = write_result(name, {"experiment": "light_sqa", **payload}, out=args.out)
    plot(payload, path.with_suffix(".png"))


if __name__ == "__main__":
    sys.exit(guarded(main))
