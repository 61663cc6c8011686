"""How much of a benchmark row is the host's time to launch a call rather than the kernels'.

Per variant (on a CUDA GPU; on CPU, where every time is the host's, only the plumbing):
- ``synced_ms``: median of CUDA-event samples taken one call at a time, the device
  synchronised before each (the host's launch time lands in every sample);
- ``queued_ms``: median of samples queued back to back, the benchmark's timing
  (`sqa_nas.timing.time_call`);
- ``device_ms``: the kernels' device time in one call (torch.profiler);
- ``host_ms``: the host's wall time per call while queuing calls without synchronising.

Where ``host_ms`` nears ``device_ms`` the synchronised samples exceed the kernels' time.

    python -m experiments.host_time --pattern flex --variants MHA,sSQA,xSQA --seq-len 131072
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from experiments.common import command_line, default_device, default_dtype
from sqa_nas.bench import (
    DEFAULT_GLOBAL_TOKENS,
    DEFAULT_WINDOW,
    PATTERNS,
    BenchSettings,
    timed_step,
    write_rows,
)
from sqa_nas.cli import guarded
from sqa_nas.cli.args import csv, positive
from sqa_nas.machine import machine_info
from sqa_nas.timing import profile_call, time_call


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", type=csv(str), default=["MHA", "sSQA", "xSQA"])
    p.add_argument("--seq-len", type=positive, default=131_072)
    p.add_argument("--pattern", choices=PATTERNS, default="flex")
    p.add_argument("--window", type=positive, default=DEFAULT_WINDOW)
    p.add_argument("--global-tokens", type=positive, default=DEFAULT_GLOBAL_TOKENS)
    p.add_argument("--head-dim", type=positive, default=128)
    p.add_argument("--mode", choices=["fwd", "fwd+bwd"], default="fwd")
    p.add_argument("--repeats", type=positive, default=20)
    p.add_argument("--device", help="default: cuda when visible")
    p.add_argument("--out", type=Path, help="JSON path")
    return p.parse_args(argv)


def measure(settings: BenchSettings, name: str, n: int, repeats: int) -> dict:
    device = torch.device(settings.device)
    setup, fn = timed_step(settings, name, n)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    queued = time_call(fn, device=device, setup=setup, warmup=3, repeats=repeats)
    synced = [
        time_call(fn, device=device, setup=setup, warmup=0, repeats=1)[0] for _ in range(repeats)
    ]
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(setup() if setup else None)
    host = (time.perf_counter() - t0) / repeats
    sync()
    prof = profile_call(lambda _: fn(setup() if setup else None), device, top=4)
    return {
        "variant": name,
        "seq_len": n,
        "synced_ms": 1e3 * statistics.median(synced),
        "queued_ms": 1e3 * statistics.median(queued),
        "device_ms": prof["total_ms"],
        "host_ms": 1e3 * host,
        "top_kernels": prof["top"],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    device = default_device(args.device)
    settings = BenchSettings(
        variants=args.variants,
        seq_lens=[args.seq_len],
        head_dim=args.head_dim,
        dtype=default_dtype(device),
        device=device,
        mode=args.mode,
        pattern=args.pattern,
        window=args.window,
        global_tokens=args.global_tokens,
        baselines=(),
    )
    settings.validate()  # UserError for an unknown variant, or cuda without a GPU
    machine = machine_info(torch.device(device))
    rows = []
    print(
        f"{machine['device']} | torch {machine['torch']} | {args.pattern} mask, "
        f"{args.mode}, head_dim {args.head_dim}, {args.seq_len:,} tokens"
    )
    print("| variant | synced ms | queued ms | device ms (profiler) | host ms per call |")
    print("|---|---|---|---|---|")
    for name in args.variants:
        r = measure(settings, name, args.seq_len, args.repeats)
        rows.append(r)
        print(
            f"| {name} | {r['synced_ms']:.3f} | {r['queued_ms']:.3f} | "
            f"{r['device_ms']:.3f} | {r['host_ms']:.3f} |",
            flush=True,
        )
    write_rows(args.out, "sqa-nas/host_time/1", machine, args, rows, command=command_line())
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
