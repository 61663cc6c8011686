"""The GPU's SM clock and power while a benchmark row repeats: does a long row run slower
per FLOP because the clocks drop?

For each batch size the row's call is queued back to back for `--seconds` while
``nvidia-smi`` samples the SM clock, power draw, temperature and the active clock-event
(throttle) reasons every 50 ms. Printed and saved per batch: the median ms per call and
per sequence of the batch, the median SM clock and power, and every reason seen.

    python -m experiments.clocks --variants MHA --batch 1,4 --seq-len 32768 --head-dim 128
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from experiments.common import command_line
from sqa_nas.bench import BenchSettings, timed_step, write_rows
from sqa_nas.cli import guarded
from sqa_nas.cli.args import csv, positive, seconds
from sqa_nas.errors import UserError
from sqa_nas.machine import machine_info
from sqa_nas.timing import time_call

QUERY = "clocks.sm,power.draw,temperature.gpu,{reasons}"
REASONS, OLD_REASONS = "clocks_event_reasons.active", "clocks_throttle_reasons.active"
LOADED_W = 150  # samples drawing less are taken as before or after the row, not under it


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", type=csv(str), default=["MHA"])
    p.add_argument("--batch", type=csv(positive), default=[1, 4])
    p.add_argument("--seq-len", type=positive, default=32_768)
    p.add_argument("--head-dim", type=positive, default=128)
    p.add_argument("--seconds", type=seconds, default=3.0, help="per row (default 3)")
    p.add_argument("--out", type=Path, help="JSON path")
    return p.parse_args(argv)


def sampler() -> subprocess.Popen:
    """nvidia-smi printing SM MHz, W, C and the clock-event reasons every 50 ms."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    try:
        probe = subprocess.run(
            ["nvidia-smi", f"--query-gpu={REASONS}", "--format=csv", "-i", gpu],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        raise UserError("clocks.py needs nvidia-smi on PATH") from None
    reasons = REASONS if probe.returncode == 0 else OLD_REASONS  # renamed in driver 535
    return subprocess.Popen(
        [
            "nvidia-smi",
            f"--query-gpu={QUERY.format(reasons=reasons)}",
            "--format=csv,noheader,nounits",
            "-lms",
            "50",
            "-i",
            gpu,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def samples(proc: subprocess.Popen) -> list[tuple[float, float, float, str]]:
    """Stop the sampler; (SM MHz, W, C, reasons) of every line that parses."""
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    got = []
    for line in out.splitlines():
        fields = [c.strip() for c in line.split(",")]
        try:
            got.append((float(fields[0]), float(fields[1]), float(fields[2]), fields[3]))
        except (ValueError, IndexError):  # "[N/A]", a warning line
            continue
    if not got:
        raise UserError(f"nvidia-smi gave no samples: {out.strip()[:300]}")
    return got


def measure(settings: BenchSettings, name: str, n: int, budget_s: float) -> dict:
    device = torch.device(settings.device)
    setup, fn = timed_step(settings, name, n)
    per = min(time_call(fn, device=device, setup=setup, warmup=2, repeats=2))
    proc = sampler()
    time.sleep(0.3)  # the sampler's first lines
    ms = [
        1e3 * s
        for s in time_call(
            fn, device=device, setup=setup, warmup=0, repeats=max(3, int(budget_s / per))
        )
    ]
    got = samples(proc)
    busy = [x for x in got if x[1] > LOADED_W] or got
    mhz, watts, celsius, reasons = zip(*busy)
    return {
        "variant": name,
        "batch": settings.batch,
        "seq_len": n,
        "calls": len(ms),
        "ms": statistics.median(ms),
        "ms_min": min(ms),
        "ms_per_sequence": statistics.median(ms) / settings.batch,
        "sm_clock_mhz": statistics.median(mhz),
        "sm_clock_min_mhz": min(mhz),
        "power_w": statistics.median(watts),
        "temperature_c": max(celsius),
        "event_reasons": sorted(set(reasons)),
        "samples": len(busy),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise UserError("clocks.py needs a CUDA GPU and nvidia-smi")
    machine = machine_info(torch.device("cuda"))
    rows = []
    print(
        f"{machine['device']} | driver {machine.get('driver', '?')} | causal fwd, head_dim "
        f"{args.head_dim}, {args.seq_len:,} tokens, {args.seconds:g} s per row"
    )
    print(
        "| variant | batch | calls | ms | ms per sequence | SM MHz (median / min) | W | "
        "max C | clock-event reasons |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.variants:
        for b in args.batch:
            settings = BenchSettings(
                variants=[name],
                seq_lens=[args.seq_len],
                batch=b,
                head_dim=args.head_dim,
                dtype="bfloat16",
                device="cuda",
                baselines=(),
            )
            settings.validate()
            r = measure(settings, name, args.seq_len, args.seconds)
            rows.append(r)
            print(
                f"| {name} | {b} | {r['calls']} | {r['ms']:.3f} | {r['ms_per_sequence']:.3f} "
                f"| {r['sm_clock_mhz']:.0f} / {r['sm_clock_min_mhz']:.0f} | "
                f"{r['power_w']:.0f} | {r['temperature_c']:.0f} | "
                f"{' '.join(r['event_reasons'])} |",
                flush=True,
            )
    write_rows(args.out, "sqa-nas/clocks/1", machine, args, rows, command=command_line())
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
