"""How much of a search's front is noise? The `paper_dense.yaml` space searched by the
product's own command with its noise trial on (the MHA baseline trained with several seeds),
then `sqa-nas confirm` on its front: the study's `noise`, the front read against it, and
which front members survive fresh seeds.

    python -m experiments.noise_floor                         # on a GPU, a few minutes
    python -m experiments.noise_floor --tokens 10000000 --n-trials 16 --top 3 --seeds 3
    python -m experiments.noise_floor --smoke                 # CPU, about a minute

Writes experiments/results/noise_<gpu>.json: `noise` (val_loss_std, throughput_rel_std,
speedup_rel_std, n), `verdict` (front, indistinguishable, resolved, summary), `confirm` (the
study's confirm attr: per trial the confirmed mean and std, survivors) and per trial its
allocation, values, intervals and flags.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from experiments.common import SEARCH_SPACES, write_result
from sqa_nas.cli import guarded
from sqa_nas.cli import main as cli_main
from sqa_nas.errors import UserError
from sqa_nas.search.noise import Noise, assess
from sqa_nas.search.records import trial_records
from sqa_nas.search.study_attrs import read_study_attrs


def _space(tokens: int, n_trials: int, noise_seeds: int, smoke: bool) -> dict:
    space = yaml.safe_load((SEARCH_SPACES / "paper_dense.yaml").read_text())
    space["study"] = "noise_floor"
    space["budget"]["n_trials"] = n_trials
    space["budget"]["noise_seeds"] = noise_seeds
    space["budget"]["train"]["tokens"] = tokens
    if smoke:
        space["model"].update(d_model=32, n_layers=2, n_heads=4, ffn_dim=64, seq_len=32)
        space["search"].update(n_q_heads=["H", "H/2"], n_kv_heads=["H", 1])
        space["budget"]["train"].update(batch_size=4, warmup_steps=2, eval_batches=2)
        space["budget"]["throughput"].update(batch_size=2, warmup=1, repeats=2, max_seconds=2)
        space["data"] = {"kind": "embedded"}
        space["seed_trials"] = ["MHA", "xSQA"]
        space.setdefault("execution", {})["device"] = "cpu"
    return space


def run(tokens: int, n_trials: int, noise_seeds: int, top: int, seeds: int, smoke: bool):
    with tempfile.TemporaryDirectory(prefix="sqa-nas-noise-") as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_text(yaml.safe_dump(_space(tokens, n_trials, noise_seeds, smoke)))
        storage = f"sqlite:///{tmp}/study.db"
        start = time.perf_counter()
        if status := cli_main(["search", str(path), "--storage", storage]):
            raise UserError(f"the search exited with status {status}")
        search_s = time.perf_counter() - start
        args = ["confirm", "noise_floor", "--storage", storage, "--top", str(top)]
        if status := cli_main([*args, "--seeds", str(seeds)]):
            raise UserError(f"confirm exited with status {status}")
        confirm_s = time.perf_counter() - start - search_s
        study = optuna.load_study(study_name="noise_floor", storage=storage)
        records = trial_records(study)
        objectives = list(study.user_attrs["objectives"])
        noise = Noise.read(study.user_attrs)
        verdict = assess(records, objectives, noise)
        trials = [
            {
                "number": r.number,
                "state": r.state,
                "seed_variant": r.seed_variant,
                "allocation": r.allocation,
                "values": r.values,
                "metrics": r.metrics.stored(),
                "duplicate_of": r.typed.duplicate_of,
                "noise_trial": r.typed.noise_trial,
                "timings": r.timings.stored(),
            }
            for r in records
        ]
        return {
            "experiment": "noise_floor",
            "tokens_per_trial": tokens,
            "n_trials": n_trials,
            "objectives": objectives,
            "search_s": round(search_s, 1),
            "confirm_s": round(confirm_s, 1),
            "noise": noise.model_dump(),
            "verdict": {
                "front": [r.number for r in verdict.front],
                "indistinguishable": [r.number for r in verdict.indistinguishable],
                "resolved": verdict.resolved,
                "summary": verdict.summary(),
            },
            "confirm": read_study_attrs(study, storage).confirm,
            "trials": trials,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=10_000_000, help="training tokens per trial")
    p.add_argument("--n-trials", type=int, default=16)
    p.add_argument("--noise-seeds", type=int, default=3, help="seeds of the noise trial")
    p.add_argument("--top", type=int, default=3, help="front members to confirm")
    p.add_argument("--seeds", type=int, default=3, help="fresh seeds per confirmed member")
    p.add_argument("--smoke", action="store_true", help="a tiny CPU run (tests)")
    p.add_argument("--out", help="result file (default experiments/results/noise_<gpu>.json)")
    args = p.parse_args(argv)

    def go() -> int:
        tokens = 20_000 if args.smoke else args.tokens
        start = time.perf_counter()
        result = run(tokens, args.n_trials, args.noise_seeds, args.top, args.seeds, args.smoke)
        result["wall_s"] = round(time.perf_counter() - start, 1)
        print(result["verdict"]["summary"])
        if result["confirm"]:
            print(result["confirm"]["summary"])
        write_result("noise", result, Path(args.out) if args.out else None)
        return 0

    return guarded(go)


if __name__ == "__main__":
    sys.exit(main())
