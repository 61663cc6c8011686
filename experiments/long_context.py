"""Sliding-window SQA at 128k, 512k and 1M tokens on one GPU: the paper's open question 2.

The paper (arXiv 2510.01817) leaves open whether SW-SQA and Flex-SQA (SQA heads with a
sliding window, plus a few global tokens) make million-token attention practical. Two parts,
attention kernel scope by default (`--scope layer` adds the projections), head_dim 128,
causal, bf16, `backend="auto"`:

- heads, at `--sweep-len` (128k): the same 4096-token window (and window + 16 global tokens)
  on MHA, GQA, SQA, sSQA and xSQA heads, forward: effective TFLOP/s from the mask's real
  density, and the speedup over MHA heads under the same mask.
- lengths, at each of `--seq-lens`: SW-SQA (window) and Flex-SQA (window + global tokens)
  forward, and forward + backward with `--backward`, against dense causal MHA, GQA and SQA
  forward up to `--dense-max-len`.

Few distinct shapes, since compiled FlexAttention compiles once per shape: the flex pattern
runs on three head layouts at the sweep length and on Flex-SQA's at the others. Long calls
are timed fewer times (`--budget-s`): dense MHA at 1M tokens takes seconds a call.

    python -m experiments.long_context                       # ~3 min on an H200
    python -m experiments.long_context --dense-max-len 524288 --no-backward
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from experiments.common import (
    command_line,
    default_device,
    default_dtype,
    default_out,
    progress,
    save_and_print,
)
from experiments.report import long_context_markdown
from sqa_nas.bench import (
    DEFAULT_GLOBAL_TOKENS,
    DEFAULT_WINDOW,
    TIMING,
    BenchResult,
    BenchRow,
    BenchSettings,
    expand_grid,
    run_grid,
    write_json,
)
from sqa_nas.cli import guarded
from sqa_nas.cli.args import csv, positive, seconds
from sqa_nas.cli.bench import add_row_timeout_argument

SCHEMA = "sqa-nas/long_context/1"


def names_or_none(text: str) -> list[str]:
    """A comma-separated list of variant names, or 'none' for an empty list."""
    return [] if text.strip().lower() == "none" else csv(str)(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seq-lens", type=csv(positive), default=[131_072, 524_288, 1_048_576])
    p.add_argument(
        "--sweep-len",
        type=positive,
        default=131_072,
        help="length of the heads sweep (default 131072)",
    )
    p.add_argument("--head-dim", type=positive, default=128)
    p.add_argument("--n-heads", type=positive, default=16, help="reference H (default 16)")
    p.add_argument("--batch", type=positive, default=1)
    p.add_argument("--window", type=positive, default=DEFAULT_WINDOW)
    p.add_argument("--global-tokens", type=positive, default=DEFAULT_GLOBAL_TOKENS)
    p.add_argument(
        "--window-heads",
        type=names_or_none,
        default=["MHA", "GQA", "SQA", "sSQA", "xSQA"],
        help="variants whose heads run the window at the sweep length ('none')",
    )
    p.add_argument(
        "--flex-heads",
        type=names_or_none,
        default=["MHA", "sSQA", "xSQA"],
        help="variants whose heads run window + global tokens at the sweep length ('none')",
    )
    p.add_argument(
        "--length-variants",
        type=names_or_none,
        default=["SW-SQA", "Flex-SQA"],
        help="windowed variants of the length sweep (default SW-SQA,Flex-SQA)",
    )
    p.add_argument(
        "--dense",
        type=csv(str),
        default=["MHA", "GQA", "SQA"],
        help="dense causal baselines of the length sweep",
    )
    p.add_argument(
        "--dense-max-len",
        type=positive,
        default=1_048_576,
        help="longest length the dense baselines run at (1M MHA: ~7 s a call)",
    )
    p.add_argument(
        "--backward",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time forward + backward of SW-SQA and Flex-SQA (default on)",
    )
    p.add_argument(
        "--backends",
        type=csv(str),
        default=["auto"],
        help="backends of the heads sweep, e.g. auto,flash_attn,flex (default auto)",
    )
    p.add_argument("--scope", choices=["kernel", "layer"], default="kernel")
    p.add_argument("--device", help="default: cuda when visible")
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        help="default: bfloat16 on GPU, float32 on CPU",
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=positive, default=10)
    p.add_argument(
        "--budget-s",
        type=seconds,
        default=6.0,
        help="timed seconds per row before repeats are cut (>= 2 kept)",
    )
    p.add_argument("--quick", action="store_true", help="3 repeats, 3 s per row")
    add_row_timeout_argument(p)
    p.add_argument(
        "--check-len",
        type=positive,
        help="tokens of the correctness check (default 2 x window + 64, so the "
        "check sees the window's edge and the global tokens)",
    )
    p.add_argument("--no-check", action="store_true")
    p.add_argument(
        "--out", type=Path, help="JSON path (default: experiments/results/long_context_<gpu>.json)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.budget_s = 3, 3.0
    return args


def plan(args, device: str, dtype: str) -> dict[str, list[BenchSettings]]:
    """The cells of both parts: {"heads": [...], "lengths": [...]}."""
    base = BenchSettings(
        variants=["MHA"],
        seq_lens=[args.sweep_len],
        batch=args.batch,
        n_heads=args.n_heads,
        head_dim=args.head_dim,
        dtype=dtype,
        device=device,
        mode="fwd",
        scope=args.scope,
        causal=True,
        window=args.window,
        global_tokens=args.global_tokens,
        warmup=args.warmup,
        repeats=args.repeats,
        budget_s=args.budget_s,
        baselines=(),
        check=not args.no_check,
        check_len=args.check_len or 2 * args.window + 64,
    )
    heads = []
    for pattern, names in (("window", args.window_heads), ("flex", args.flex_heads)):
        if names:
            baselines = ("MHA",) if "MHA" in names else ()
            heads += expand_grid(
                base,
                backend=args.backends,
                variants=[names],
                pattern=[pattern],
                baselines=[baselines],
            )
    lengths = []
    modes = ["fwd", "fwd+bwd"] if args.backward else ["fwd"]
    for n in args.seq_lens:
        for variant, pattern in (("SW-SQA", "window"), ("Flex-SQA", "flex")):
            if variant not in args.length_variants:
                continue
            lengths += expand_grid(
                base, seq_lens=[[n]], variants=[[variant]], pattern=[pattern], mode=modes
            )
        if args.dense and n <= args.dense_max_len:
            lengths += expand_grid(
                base,
                seq_lens=[[n]],
                variants=[args.dense],
                pattern=["dense"],
                baselines=[("MHA",)],
            )
    return {"heads": heads, "lengths": lengths}


def add_dense_speedups(rows: list[BenchRow]) -> list[BenchRow]:
    """`speedup_vs_dense_MHA`: forward time of dense causal MHA at the same length over the
    row's; the question is how much a window buys against full attention."""
    dense = {
        r.seq_len: r.ms
        for r in rows
        if r.extra.get("part") == "lengths"
        and r.variant == "MHA"
        and r.pattern == "dense"
        and r.mode == "fwd"
        and r.timed
    }
    return [
        r.model_copy(update={"speedups": r.speedups | {"dense_MHA": dense[r.seq_len] / r.ms}})
        if r.extra.get("part") == "lengths" and r.mode == "fwd" and r.timed and r.seq_len in dense
        else r
        for r in rows
    ]


def run(args) -> dict:
    device = default_device(args.device)
    dtype = default_dtype(device, args.dtype)
    parts = plan(args, device, dtype)
    t0 = time.perf_counter()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings |= {"device": device, "dtype": dtype, "command": command_line()}
    rows: list[BenchRow] = []

    def assemble(machine: dict, new_rows: list[BenchRow], **extra) -> dict:
        everything = add_dense_speedups(rows + new_rows)
        return {
            "schema": SCHEMA,
            "machine": machine,
            "timing": TIMING,
            "settings": settings,
            "rows": [r.to_dict() for r in everything],
            "wall_s": time.perf_counter() - t0,
            **extra,
            "notes": [
                "TFLOP/s are effective: FLOPs of the keys each query sees "
                "(count_visible), so a window's TFLOP/s compare with dense ones",
                "speedup_vs_MHA: against MHA heads under the same mask (heads "
                "part); speedup_vs_dense_MHA: against dense causal MHA at the "
                "same length",
            ],
        }

    result = None
    for part, grid in parts.items():
        if not grid:
            continue

        def save_partial(partial: BenchResult, part=part) -> None:  # keeps a cut run's rows
            if args.out is not None:
                running = (
                    {"running": partial.running | {"part": part}}
                    if partial.running is not None
                    else {}
                )
                write_json(
                    args.out,
                    assemble(
                        partial.machine,
                        [r.update(part=part) for r in partial.rows],
                        partial=True,
                        **running,
                    ),
                )

        result = run_grid(
            grid,
            progress=lambda s, p=part: progress(f"{p}: {s}"),
            extra={"command": settings["command"]},
            on_cell=save_partial,
            row_timeout_s=args.row_timeout_s,
        )
        rows += [r.update(part=part) for r in result.rows]
    return assemble(result.machine, [])


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out = args.out or default_out("long_context", args.device)
    return save_and_print(run(args), args.out, long_context_markdown)


if __name__ == "__main__":
    sys.exit(guarded(main))
