"""Does the speedup objective survive another job on the machine? The quickstart's MHA and
xSQA seed trials timed by the search's own trial code (paired with the MHA step), alone and
with CPU-bound processes competing for every core, several times each.

    python -m experiments.paired_timing                  # ~1 min on a 2-core CPU
    python -m experiments.paired_timing --runs 5 --smoke

Per run it records the paired speedup and its 95% interval, the trial's tokens/s and its
interval, the rounds and seconds the timing took, the noisy flag, and what an unpaired
measurement would have reported: the trial's tokens/s divided by the MHA reference measured
once, alone (how speedups were taken before). Writes (``timings``: one entry per run)
experiments/results/paired_timing_<gpu or cpu>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from experiments.common import SEARCH_SPACES, progress, write_result
from sqa_nas.cli import guarded
from sqa_nas.search.space import parse_space
from sqa_nas.search.trial import TrialJob, run_trial

VARIANTS = ("MHA", "xSQA")


def _spin() -> None:  # a CPU-bound competitor
    x = 0
    while True:
        x = (x * 1103515245 + 12345) % 2**31


@contextlib.contextmanager
def competing(processes: int) -> Iterator[None]:
    """`processes` busy processes for the duration (none for 0)."""
    procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(processes)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
            p.join()


def _spec(smoke: bool):
    space = yaml.safe_load((SEARCH_SPACES / "quickstart.yaml").read_text())
    space["objectives"] = ["speedup_vs_mha"]  # timing only: no training
    space["seed_trials"] = list(VARIANTS)
    if smoke:
        space["budget"]["throughput"].update(max_seconds=2.0)
    return parse_space(space, "quickstart (timing only)")


def measure(runs: int, load: int, smoke: bool) -> dict[str, Any]:
    spec = _spec(smoke)
    params = dict(spec.seed_params())
    rows = []
    alone_mha = None
    for label in ("alone", "competing"):
        with competing(load if label == "competing" else 0):
            for r in range(runs):
                for variant in VARIANTS:
                    job = TrialJob(r, params[variant], spec.model_dump(mode="json"), variant)
                    out = run_trial(job)
                    m = out.attrs.get("metrics", {})
                    if out.state != "COMPLETE":
                        raise SystemExit(f"{variant}: {out.attrs.get('fail_reason')}")
                    if alone_mha is None and variant == "MHA":
                        alone_mha = m["throughput_tokens_per_s"]
                    rows.append(
                        {
                            "condition": label,
                            "run": r,
                            "variant": variant,
                            "speedup_vs_mha": m["speedup_vs_mha"],
                            "speedup_ci95": m["speedup_ci95"],
                            "throughput_tokens_per_s": m["throughput_tokens_per_s"],
                            # None: fewer rounds than an interval needs (the time cap)
                            "throughput_rel_ci95": m.get("throughput_rel_ci95"),
                            "rounds": m["throughput_rounds"],
                            "throughput_s": out.attrs["timings"]["throughput_s"],
                            "noisy_throughput": m["noisy_throughput"],
                            "unpaired_speedup": m["throughput_tokens_per_s"] / alone_mha,
                        }
                    )
                    row = rows[-1]
                    progress(
                        f"{label:9s} run {r} {variant:5s} speedup {row['speedup_vs_mha']:.3f} "
                        f"{row['speedup_ci95']} unpaired {row['unpaired_speedup']:.3f} "
                        f"tokens/s {row['throughput_tokens_per_s']:.0f} "
                        f"+-{row['throughput_rel_ci95'] or float('inf'):.1%} "
                        f"({row['rounds']} rounds)"
                    )
    summary = {}
    for label in ("alone", "competing"):
        for variant in VARIANTS:
            sel = [x for x in rows if x["condition"] == label and x["variant"] == variant]
            summary[f"{label}/{variant}"] = {
                key: [min(x[key] for x in sel), max(x[key] for x in sel)]
                for key in ("speedup_vs_mha", "unpaired_speedup", "throughput_tokens_per_s")
            } | {"median_throughput_s": statistics.median(x["throughput_s"] for x in sel)}
    return {
        "experiment": "paired_timing",
        "competing_processes": load,
        "runs": runs,
        "timings": rows,
        "summary": summary,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="timings per variant and condition")
    p.add_argument(
        "--load", type=int, default=os.cpu_count() or 2, help="competing processes (cores)"
    )
    p.add_argument("--smoke", action="store_true", help="short timing cap (tests)")
    p.add_argument("--out", help="result file (default experiments/results/...)")
    args = p.parse_args(argv)

    def run() -> int:
        start = time.perf_counter()
        result = measure(args.runs, args.load, args.smoke)
        result["wall_s"] = round(time.perf_counter() - start, 1)
        for key, s in result["summary"].items():
            print(
                f"{key:16s} speedup {s['speedup_vs_mha'][0]:.3f}-{s['speedup_vs_mha'][1]:.3f}"
                f"  unpaired {s['unpaired_speedup'][0]:.3f}-{s['unpaired_speedup'][1]:.3f}"
                f"  median timing {s['median_throughput_s']:.1f} s"
            )
        write_result("paired_timing", result, Path(args.out) if args.out else None)
        return 0

    return guarded(run)


if __name__ == "__main__":
    sys.exit(main())
