"""Distributed search through Ray: a throughput-only search, then a quality search, both on
Ray workers holding one GPU each (`sqa_nas.search.executors.ray`), with the GPUs' in-trial
fraction and NVML utilisation measured.

    python -m experiments.ray_search                         # a private Ray instance, all GPUs
    python -m experiments.ray_search --address auto          # a running cluster (see the README)
    python -m experiments.ray_search --smoke --gpus-per-trial 0   # CPU check, about a minute

Phase "throughput" searches `throughput_tokens_per_s` alone: short trials, the case where a
fresh process per trial would idle the GPUs. Phase "quality" runs the space as written (val
loss and throughput). For each phase the result holds the run's figures (`executor`:
`sqa_nas.search.figures.RunStats`): the in-trial fraction per GPU (time inside trials / wall
time from the GPU's first trial start to its last trial end, and to the end of the phase),
NVML's utilisation of this host's GPUs over the phase and the training-step share, and every
trial (state, allocation, objectives, node, GPU, timings). Writes
results/ray_search_<gpu>_x<GPUs>.json and the console log next to it (.txt). Results written
before the figures were renamed hold `busy_fraction*` and nvidia-smi's utilization instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from experiments.common import RESULTS, SEARCH_SPACES, device_slug, write_result
from experiments.science import SMOKE_PER_LAYER_HEADS, SMOKE_PER_LAYER_MODEL
from sqa_nas.cli import guarded
from sqa_nas.cli.search import print_front, print_stats
from sqa_nas.machine import machine_info, package_version
from sqa_nas.search.driver import Driver
from sqa_nas.search.executors.ray import RayExecutor
from sqa_nas.search.figures import RunStats
from sqa_nas.search.records import trial_records
from sqa_nas.search.space import load_space, parse_space
from sqa_nas.train import pick_device

ROOT = Path(__file__).resolve().parents[1]


def phase_spec(args, phase: str):
    data = load_space(args.space).model_dump(mode="json")
    data["execution"]["executor"] = "ray"
    ray = data["execution"]["ray"]
    if args.address:
        ray["address"] = args.address
    if args.gpus_per_trial is not None:
        ray["gpus_per_trial"] = args.gpus_per_trial
    if args.smoke:
        data["model"].update(SMOKE_PER_LAYER_MODEL)
        data["search"].update(SMOKE_PER_LAYER_HEADS, tying="per_layer", group_size=None)
        data["budget"]["train"].update(steps=8, batch_size=2, eval_batches=2)
        data["budget"]["throughput"].update(batch_size=2, repeats=2)
        ray["cpus_per_trial"] = 1
    if phase == "throughput":
        data["study"] = f"{data['study']}_throughput"
        data["objectives"] = ["throughput_tokens_per_s"]
        data["sampler"]["name"] = None  # TPE for one objective
        data["budget"]["n_trials"] = args.throughput_trials
    elif args.trials:
        data["budget"]["n_trials"] = args.trials
    return parse_space(data, f"{args.space} ({phase} phase)")


def run_phase(args, phase: str, storage_dir: Path, console: Console):
    spec = phase_spec(args, phase)
    console.rule(
        f"phase {phase}: study {spec.study_name}, {spec.budget.n_trials} trials, "
        f"objectives {', '.join(spec.objectives)}"
    )
    started = time.time()
    driver = Driver(
        spec,
        RayExecutor(spec),
        console=console,
        storage_url=f"sqlite:///{storage_dir}/{spec.study_name}.db",
    )
    result = driver.run(spec.budget.n_trials, spec.budget.max_wall_seconds)
    ended = time.time()
    print_front(result.study, spec.objectives, console)
    print_stats(result.stats, console)
    records = trial_records(result.study)
    starts = [r.datetime_start.timestamp() for r in records if r.datetime_start]
    first = min(starts) if starts else started
    return {
        "study": spec.study_name,
        "objectives": spec.objectives,
        "n_trials": spec.budget.n_trials,
        "wall_s": round(ended - started, 1),
        "first_trial_after_s": round(first - started, 1),
        "executor": result.stats,
        "mha_reference": result.study.user_attrs.get("mha_reference", {}),
        "trials": [trial_row(r) for r in records],
    }


def trial_row(r) -> dict:
    a = r.attrs
    return {
        "number": r.number,
        "state": r.state,
        "seed_variant": r.seed_variant,
        "allocation": r.allocation,
        "values": r.values,
        "speedup_vs_mha": (a.get("metrics") or {}).get("speedup_vs_mha"),
        "device": a.get("device"),
        "timings": a.get("timings"),
        "start": str(r.datetime_start),
        "complete": str(r.datetime_complete),
        "fail_reason": a.get("fail_reason"),
        "worker_deaths": a.get("worker_deaths"),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", type=Path, default=SEARCH_SPACES / "ray_demo.yaml")
    p.add_argument("--address", help="join this Ray cluster (default: a private instance)")
    p.add_argument("--gpus-per-trial", type=float)
    p.add_argument("--throughput-trials", type=int, default=24)
    p.add_argument("--trials", type=int, help="quality-phase trials (default: the space's)")
    p.add_argument("--phases", default="throughput,quality")
    p.add_argument("--smoke", action="store_true", help="tiny model (CPU check)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    console = Console(record=True, width=120, highlight=False, log_path=False)
    phases = {}
    with tempfile.TemporaryDirectory() as storage_dir:
        for phase in args.phases.split(","):
            phases[phase] = run_phase(args, phase, Path(storage_dir), console)
    # Each phase starts its own Ray instance, so one GPU has a new node id per phase: the
    # count is the most GPUs one phase used.
    gpus = {
        name: sorted(
            k for k in RunStats.read(ph["executor"]).in_trial_fraction_by_gpu if " GPU " in k
        )
        for name, ph in phases.items()
    }
    n_gpus = max(map(len, gpus.values()), default=0)
    name = (
        f"ray_search_{device_slug(machine_info(pick_device()))}"
        + (f"_x{n_gpus}" if n_gpus else "")
        + ("_smoke" if args.smoke else "")
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    versions = {k: package_version(k) for k in ("ray", "optuna", "torch")}
    write_result(
        name,
        {"versions": versions, "gpus_used": gpus, "phases": phases},
        out=args.out_dir / f"{name}.json",
    )
    (args.out_dir / f"{name}.txt").write_text(console.export_text())
    print(f"wrote {args.out_dir / f'{name}.txt'}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(guarded(main))
