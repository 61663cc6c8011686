"""The paper's Table 3 on this GPU: seconds per forward step of the whole model.

The paper (arXiv 2510.01817, Table 3) times a decoder of d_model 256, 8 layers, H = 16
(head_dim 16), SwiGLU 768, vocab 10,000, RoPE, RMSNorm, under bf16 autocast on one A100,
at 1k / 4k / 32k / 131k / 200k tokens with batch 128 / 32 / 4 / 1 / 1. Here the same
model (`sqa_nas.model` preset "paper") runs every variant through the automatic kernel
choice, with SW-SQA and Flex-SQA added, and the same family at head_dim 64 and 128
(presets "paper-hd64" / "paper-hd128", d_model 1024 / 2048) where attention kernels run
near their peak. Timing: inference mode, bf16 autocast, a correctness check of the layer
first, then warm-up per variant and the median of CUDA-event-timed repeats
(`sqa_nas.timing.time_call`); the paper's own timers had no synchronisation.

At 200k tokens the LM head alone writes 200,000 x 10,000 bf16 logits (4 GB): counted in the
step, as in the paper.

    python -m experiments.paper_table3                      # head_dim 16, 64, 128
    python -m experiments.paper_table3 --head-dims 16 --quick
    python -m experiments.report                            # tables + PNG from the JSON
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from experiments.common import (
    command_line,
    default_device,
    default_dtype,
    default_out,
    progress,
    save_and_print,
)
from experiments.report import paper_table3_markdown
from sqa_nas.bench import BenchResult, BenchRow, BenchSettings, run_grid, timed_step, write_json
from sqa_nas.cli import guarded
from sqa_nas.cli.args import csv, positive, seconds
from sqa_nas.cli.bench import add_row_timeout_argument
from sqa_nas.registry import get_variant
from sqa_nas.timing import profile_call

SCHEMA = "sqa-nas/paper_table3/1"
PAPER_VARIANTS = ("MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA")
VARIANTS = PAPER_VARIANTS + ("SW-SQA", "Flex-SQA")
# The paper's batch per length: 128 x 1k = 32 x 4k = 4 x 32k = 131k tokens a step.
PAPER_BATCH = {1024: 128, 4096: 32, 32768: 4, 131072: 1, 200000: 1}

# Table 3 of arXiv 2510.01817, seconds per forward step, one A100 40GB (as the paper reports it).
PAPER_A100 = {
    1024: dict(xSQA=0.0570, SQA=0.0642, sSQA=0.0669, MQA=0.0760, GQA=0.0785, MHA=0.0869),
    4096: dict(xSQA=0.0637, SQA=0.0750, sSQA=0.0793, MQA=0.1001, GQA=0.1027, MHA=0.1114),
    32768: dict(xSQA=0.1348, SQA=0.1991, sSQA=0.2117, MQA=0.3612, GQA=0.3637, MHA=0.3727),
    131072: dict(xSQA=0.3759, SQA=0.6308, sSQA=0.6630, MQA=1.2530, GQA=1.2558, MHA=1.2648),
    200000: dict(xSQA=0.8194, SQA=1.4116, sSQA=1.4824, MQA=2.8555, GQA=2.8596, MHA=2.8734),
}
# Our earlier H200 run of the same model with torch SDPA (cuDNN), 2026-11-29 (ANCHORS.md):
# the starting point this script is measured against.
ANCHOR_H200_SDPA = {
    1024: dict(MHA=0.0278, GQA=0.0246, MQA=0.0238, SQA=0.0194, sSQA=0.0205, xSQA=0.0168),
    4096: dict(MHA=0.0408, GQA=0.0376, MQA=0.0369, SQA=0.0260, sSQA=0.0271, xSQA=0.0203),
    32768: dict(MHA=0.1644, GQA=0.1602, MQA=0.1604, SQA=0.0879, sSQA=0.0890, xSQA=0.0520),
    131072: dict(MHA=0.5934, GQA=0.5831, MQA=0.5822, SQA=0.3012, sSQA=0.3024, xSQA=0.1604),
    200000: dict(MHA=1.4239, GQA=1.3121, MQA=1.2857, SQA=0.6666, sSQA=0.6767, xSQA=0.3454),
}
# Exponentials per second of this GPU class's special-function units (ANCHORS.md): at
# head_dim 16 the softmax, not the matmuls, bounds attention; this floor says how close.
EXP_PER_S = 3.9e12


REFERENCE = {
    "paper_a100_s": PAPER_A100,
    "paper_batch": PAPER_BATCH,
    "anchor_h200_sdpa_s": ANCHOR_H200_SDPA,
    "exp_per_s": EXP_PER_S,
    "sources": "arXiv 2510.01817 Table 3",
}
NOTES = [
    "seconds per forward step of the whole model, bf16 autocast, inference mode, "
    "median of CUDA-event timings after warm-up (repeats queued back to back)",
    "at 200k tokens the LM head writes 4 GB of bf16 logits (counted)",
    "softmax_exp_floor_s: exponentials / 3.9e12 per s, the bound at head_dim 16",
]


def batch_for(n: int) -> int:
    """The paper's batch at its lengths; elsewhere as many tokens a step (131,072)."""
    return PAPER_BATCH.get(n, max(1, 131_072 // n))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--head-dims",
        type=csv(positive),
        default=[16, 64, 128],
        help="16 = the paper's model; 64, 128 = d_model 1024, 2048 (default all)",
    )
    p.add_argument(
        "--seq-lens",
        type=csv(positive),
        default=list(PAPER_BATCH),
        help="default: the paper's 1024,4096,32768,131072,200000",
    )
    p.add_argument(
        "--batch",
        type=positive,
        help="one batch for every length (default: the paper's per length)",
    )
    p.add_argument("--variants", type=csv(str), default=list(VARIANTS))
    p.add_argument(
        "--flex-head-dims",
        type=csv(positive),
        help="head dims at which Flex-SQA runs (default: all of --head-dims); "
        "compiled FlexAttention compiles once per shape, ~seconds each",
    )
    p.add_argument(
        "--window", type=int, help="window of SW-SQA / Flex-SQA (default: the registry's, 512)"
    )
    p.add_argument("--n-layers", type=positive, help="override the model's 8 layers")
    p.add_argument("--backend", default="auto", help="auto or a backend name")
    p.add_argument("--device", help="default: cuda when visible")
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        help="autocast dtype (default: bfloat16 on GPU, float32 on CPU)",
    )
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=positive, default=5)
    p.add_argument(
        "--budget-s",
        type=seconds,
        default=4.0,
        help="timed seconds per cell before repeats are cut (>= 2 kept)",
    )
    p.add_argument(
        "--quick", action="store_true", help="2 repeats, 2 s per cell: for a first look"
    )
    add_row_timeout_argument(p)
    p.add_argument(
        "--check-len",
        type=positive,
        default=1024,
        help="tokens of the per-variant correctness check (default 1024)",
    )
    p.add_argument("--no-check", action="store_true")
    p.add_argument(
        "--profile",
        type=csv(positive),
        default=[],
        help="lengths at which one step per variant is profiled (top kernels)",
    )
    p.add_argument(
        "--out", type=Path, help="JSON path (default: experiments/results/paper_table3_<gpu>.json)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.budget_s = 2, 2.0
    return args


def cells(args, device: str, dtype: str) -> list[BenchSettings]:
    base = dict(
        n_heads=16,
        dtype=dtype,
        device=device,
        backend=args.backend,
        mode="fwd",
        scope="model",
        causal=True,
        window=args.window,
        warmup=args.warmup,
        repeats=args.repeats,
        baselines=("MHA", "GQA"),
        check=not args.no_check,
        check_len=args.check_len,
        budget_s=args.budget_s,
        n_layers=args.n_layers,
    )
    return [
        BenchSettings(
            **{**base, "variants": _variants_at(args, hd)},
            seq_lens=[n],
            batch=args.batch or batch_for(n),
            head_dim=hd,
        )
        for hd in args.head_dims
        for n in args.seq_lens
    ]


def _variants_at(args, head_dim: int) -> list[str]:
    """The variants at `head_dim`: those needing compiled FlexAttention (global tokens,
    block-sparse) only at --flex-head-dims."""
    if args.flex_head_dims is None or head_dim in args.flex_head_dims:
        return list(args.variants)
    return [v for v in args.variants if get_variant(v).pattern not in ("flex", "block_sparse")]


def annotate(row: BenchRow) -> BenchRow:
    """The row with the paper's A100 time (and our share of it), our earlier H200 time and
    the softmax floor added as columns where they apply."""
    n, v = row.seq_len, row.variant
    columns = {}
    if row.head_dim == 16 and row.batch == PAPER_BATCH.get(n):
        if v in PAPER_A100.get(n, {}):
            columns["paper_a100_s"] = PAPER_A100[n][v]
            if row.timed:
                columns["fraction_of_paper"] = row.ms / 1e3 / PAPER_A100[n][v]
        if v in ANCHOR_H200_SDPA.get(n, {}):
            columns["anchor_h200_sdpa_s"] = ANCHOR_H200_SDPA[n][v]
    if row.density is not None and row.n_q_heads is not None:
        layers = row.extra.get("n_layers", 8)
        exps = layers * max(row.n_q_heads, row.n_kv_heads) * row.batch * row.density * n * n
        columns["softmax_exp_floor_s"] = exps / EXP_PER_S
    return row.update(**columns)


def run(args) -> dict:
    device = default_device(args.device)
    dtype = default_dtype(device, args.dtype)
    grid = cells(args, device, dtype)
    t0 = time.perf_counter()

    def finish(result: BenchResult) -> dict:
        rows = [annotate(r.update(n_layers=args.n_layers or 8)) for r in result.rows]
        return result.replace(rows=rows).to_dict() | {
            "schema": SCHEMA,
            "reference": REFERENCE,
            "notes": NOTES,
        }

    def save_partial(result: BenchResult) -> None:  # a run cut short keeps its finished cells
        if args.out is not None:
            write_json(args.out, finish(result))
        if result.running is None:  # also called before every row, with the row in flight
            progress(f"saved {len(result.rows)} rows to {args.out}")

    result = finish(
        run_grid(
            grid,
            progress=progress,
            extra={"command": command_line(), "paper_batch": args.batch is None},
            on_cell=save_partial,
            row_timeout_s=args.row_timeout_s,
        )
    )
    profiles = []
    for cell in grid:
        if cell.seq_lens[0] not in args.profile:
            continue
        for name in cell.variants:
            try:
                _, fn = timed_step(cell, name, cell.seq_lens[0])
                fn(None)  # compiled and warm before the profile
                prof = profile_call(fn, torch.device(device))
            except Exception as exc:  # a profile is a diagnosis: never fail the run for it
                prof = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
            profiles.append(
                {
                    "variant": name,
                    "seq_len": cell.seq_lens[0],
                    "head_dim": cell.head_dim,
                    "batch": cell.batch,
                }
                | prof
            )
    result.update(profiles=profiles, wall_s=time.perf_counter() - t0)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out = args.out or default_out("paper_table3", args.device)
    return save_and_print(run(args), args.out, paper_table3_markdown)


if __name__ == "__main__":
    sys.exit(guarded(main))
