"""`sqa-nas convert SRC --allocation SPEC --method select|mean|fit --out DIR`: a trained model
(a Llama-family Hugging Face folder, an sqa-nas export or checkpoint) rewritten with fewer
query heads per layer, as an sqa-nas export. Everything is checked before anything is
written: the output folder, the source, the allocation against every layer, the data."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich.table import Table

from sqa_nas import __version__
from sqa_nas.cli import console, shown
from sqa_nas.cli.args import positive
from sqa_nas.convert import (
    DEFAULT_RIDGE,
    METHODS,
    Calibration,
    calibration_batches,
    check_conversion,
    convert_model,
    load_data,
    read_data_spec,
    read_source,
    target_config,
    write_conversion,
)
from sqa_nas.errors import UserError
from sqa_nas.train import pick_device


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="Llama-family HF folder, sqa-nas export folder or checkpoint file")
    p.add_argument(
        "--allocation",
        required=True,
        metavar="SPEC",
        help="a variant (SQA, sSQA, xSQA, ...), per-layer heads as the search writes them "
        "('8/4 x2, 4/4 w64 x2'), or a YAML file with a layers: list",
    )
    p.add_argument("--method", required=True, choices=METHODS, help="see docs/convert.md")
    p.add_argument("--out", required=True, metavar="DIR", help="the export folder to write")
    p.add_argument(
        "--kv-heads",
        metavar="keep|N",
        help="KV heads per layer: keep the source's, or N for every layer (default: the "
        "allocation's; fewer are made by mean pooling, more by copying)",
    )
    p.add_argument(
        "--calibration",
        metavar="DATA",
        help="calibration tokens: a data kind, a YAML data mapping, or a YAML file with one "
        "(a search space's data: section); default: embedded",
    )
    p.add_argument("--calibration-batches", type=positive, default=8, metavar="N")
    p.add_argument("--calibration-batch-size", type=positive, default=4, metavar="B")
    p.add_argument("--calibration-seq-len", type=positive, default=256, metavar="N")
    p.add_argument(
        "--ridge", type=float, default=DEFAULT_RIDGE, help="fit: the relative ridge term"
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--force", action="store_true", help="write into a folder holding files")


def check_out(out: Path, force: bool) -> None:
    """`UserError` unless `out` is absent, an empty folder, or `force` is given."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} already holds files: pass --force to write into it")


def run_convert_command(args) -> int:
    out = Path(args.out)
    check_out(out, args.force)
    if not 0 <= args.ridge < math.inf:
        raise UserError(f"--ridge must be a finite number >= 0, got {args.ridge}")
    device = pick_device("cpu" if args.device == "cpu" else "auto")
    if args.device == "cuda" and device.type != "cuda":
        raise UserError("--device cuda: no GPU is visible")
    data_spec = read_data_spec(args.calibration, "--calibration")
    source = read_source(args.src)
    src = source.model.config
    target = target_config(src, args.allocation, args.kv_heads)
    check_conversion(src, target, args.method)
    cal = Calibration(
        args.calibration_batches, args.calibration_batch_size, args.calibration_seq_len
    )
    data = load_data(data_spec, src.vocab_size, "--calibration")
    batches = calibration_batches(data, cal, device)
    done = convert_model(source.model.to(device), target, args.method, batches, ridge=args.ridge)
    provenance = {
        "source": source.record(),
        "allocation": args.allocation,
        "kv_heads": args.kv_heads,
        "calibration": {"data": data_spec, **cal.record(), "fingerprint": data.fingerprint},
        "sqa_nas": __version__,
    }
    write_conversion(done, out, provenance=provenance, dtype=source.dtype, force=args.force)
    table = Table(title=f"{shown(source.architecture)} -> {args.method}", title_justify="left")
    for column in ("layer", "source H_q/H_kv", "target H_q/H_kv", "output error"):
        table.add_column(column, justify="right")
    for i, (a, b) in enumerate(zip(src.layer_configs, target.layer_configs)):
        error = f"{done.errors[i]:.2e}" if done.errors is not None else "-"
        table.add_row(
            str(i), f"{a.n_q_heads}/{a.n_kv_heads}", f"{b.n_q_heads}/{b.n_kv_heads}", error
        )
    console.print(table)
    console.print(
        f"wrote {shown(out)}/ (output error: relative squared error of each attention layer "
        f"on {cal.batches * cal.batch_size * cal.seq_len:,} calibration tokens)"
    )
    return 0
