"""The GPU's SM clock and power while a benchmark row repeats: does a long row run slower
per FLOP because the clocks drop?

For each batch size the row's call is queued back to back for `--seconds` while
``nvidia-smi`` samples the SM clock, power draw, temperature and the active clock-event
(throttle) reasons every 50 ms. Printed and saved per batch: the median ms per call and
per sequence of the batch, the median SM clock and power, and every reason seen.

    python experiments/clocks.py --variants MHA --batch 1,4 --seq-len 32768 --head-dim 128
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

from sqa_nas.bench import BenchSettings, time_call, timed_step, write_rows
from sqa_nas.cli import csv, guarded, positive, seconds
from sqa_nas.errors import UserError
from sqa_nas.machine import machine_info

FIELDS = ["clocks.sm", "power.draw", "temperature.gpu", "clocks_event_reasons.active"]
OLD_REASONS = "clocks_throttle_reasons.active"  # the name before driver 535


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
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    probe = subprocess.run(["nvidia-smi", f"--query-gpu={FIELDS[-1]}", "--format=csv", "-i", gpu],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        FIELDS[-1] = OLD_REASONS
    return subprocess.Popen(
        ["nvidia-smi", f"--query-gpu={','.join(FIELDS)}", "--format=csv,noheader,nounits",
         "-lms", "50", "-i", gpu], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def samples(proc: subprocess.Popen) -> list[list[str]]:
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines()]
    good = [r for r in rows if len(r) == len(FIELDS)]
    if not good:
        raise UserError(f"nvidia-smi gave no samples: {out.strip()[:300]}")
    return good


def measure(settings: BenchSettings, name: str, n: int, budget_s: float) -> dict:
    device = torch.device(settings.device)
    setup, fn = timed_step(settings, name, n)
    per = min(time_call(fn, device=device, setup=setup, warmup=2, repeats=2))
    proc = sampler()
    time.sleep(0.3)  # the sampler's first lines
    ms = [1e3 * s for s in time_call(fn, device=device, setup=setup, warmup=0,
                                     repeats=max(3, int(budget_s / per)))]
    rows = samples(proc)
    busy = [r for r in rows if r[0].isdigit() and float(r[1]) > 150]  # under load
    busy = busy or rows
    reasons = sorted({r[3] for r in busy})
    return {"variant": name, "batch": settings.batch, "seq_len": n, "calls": len(ms),
            "ms": statistics.median(ms), "ms_min": min(ms),
            "ms_per_sequence": statistics.median(ms) / settings.batch,
            "sm_clock_mhz": statistics.median(float(r[0]) for r in busy),
            "sm_clock_min_mhz": min(float(r[0]) for r in busy),
            "power_w": statistics.median(float(r[1]) for r in busy),
            "temperature_c": max(float(r[2]) for r in busy),
            "event_reasons": reasons, "samples": len(busy)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise UserError("clocks.py needs a CUDA GPU and nvidia-smi")
    machine = machine_info(torch.device("cuda"))
    rows = []
    print(f"{machine['device']} | driver {machine.get('driver', '?')} | causal fwd, head_dim "
          f"{args.head_dim}, {args.seq_len:,} tokens, {args.seconds:g} s per row")
    print("| variant | batch | calls | ms | ms per sequence | SM MHz (median / min) | W | "
          "max C | clock-event reasons |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.variants:
        for b in args.batch:
            settings = BenchSettings(variants=[name], seq_lens=[args.seq_len], batch=b,
                                     head_dim=args.head_dim, dtype="bfloat16", device="cuda",
                                     baselines=())
            settings.validate()
            r = measure(settings, name, args.seq_len, args.seconds)
            rows.append(r)
            print(f"| {name} | {b} | {r['calls']} | {r['ms']:.3f} | {r['ms_per_sequence']:.3f} "
                  f"| {r['sm_clock_mhz']:.0f} / {r['sm_clock_min_mhz']:.0f} | "
                  f"{r['power_w']:.0f} | {r['temperature_c']:.0f} | "
                  f"{' '.join(r['event_reasons'])} |", flush=True)
    write_rows(args.out, "sqa-nas/clocks/1", machine, args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
