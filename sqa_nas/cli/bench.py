"""`sqa-nas bench` (also `python -m sqa_nas bench`): times attention variants x sequence
lengths, after a correctness check against the float64 reference, and prints one table per
setting (`--format`: fitted to the terminal, plain, csv or json; `sqa_nas.cli.tables`) with a
progress bar on stderr while the rows run; `--json` / `--png` / `--calibration-out` write
the results."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import torch
from rich.console import Console
from rich.markup import escape

from sqa_nas.bench import (
    DEFAULT_GLOBAL_TOKENS,
    DEFAULT_ROW_TIMEOUT_S,
    DEFAULT_WINDOW,
    DTYPES,
    MODES,
    PATTERNS,
    SCOPES,
    BenchResult,
    BenchRow,
    BenchSettings,
    expand_grid,
    grid_size,
    group_rows,
    plot_rows,
    run_grid,
    write_json,
)
from sqa_nas.bench.row import OUT_OF_MEMORY
from sqa_nas.cli import err_console, shown
from sqa_nas.cli.args import csv, output_file, positive, seconds
from sqa_nas.cli.tables import (
    Column,
    Sheet,
    add_format_argument,
    chatter,
    chosen_format,
    csv_text,
    json_text,
    print_sheet,
    write_data,
)
from sqa_nas.kernels.calibration import order_from_rows
from sqa_nas.machine import header_line
from sqa_nas.progress import Bar


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = csv(str)(text)
        for item in items:
            if item not in allowed:
                raise argparse.ArgumentTypeError(
                    f"invalid choice: {item!r} (choose from {', '.join(allowed)})"
                )
        return items

    return parse


EXIT_STATUS = (
    "Exit status: 0 when every row ran or was refused by its backend; 1 when a correctness "
    "check failed; 2 for bad arguments, for a row that needs more memory than the device "
    "has (refused before anything runs: the estimate is in the message), and for a row "
    "that ran out of memory anyway (the table marks it 'out of memory', the other rows "
    "run, and one line at the end names it)."
)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EXIT_STATUS
    p.add_argument("--variants", type=csv(str), default=["MHA", "GQA", "SQA", "sSQA", "xSQA"])
    p.add_argument("--seq-lens", type=csv(int), default=[1024, 4096])
    p.add_argument("--batch", type=csv(positive), default=[1], help="batch sizes (list)")
    p.add_argument("--n-heads", type=positive, default=16, help="reference H (default 16)")
    p.add_argument("--head-dim", type=csv(positive), default=[64], help="head dims (list)")
    p.add_argument(
        "--dtype",
        type=_choices(list(DTYPES)),
        help="dtypes (list); default: bfloat16 on GPU, float32 on CPU",
    )
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda when visible)")
    p.add_argument(
        "--backend",
        "--backends",
        dest="backend",
        type=csv(str),
        default=["auto"],
        help="auto and/or backend names (list); options as flash_attn:pack_gqa=0",
    )
    p.add_argument("--mode", type=_choices(MODES), default=["fwd"], help="fwd, bwd, fwd+bwd")
    p.add_argument(
        "--scope",
        choices=SCOPES,
        default="kernel",
        help="kernel: attention only; layer: with the projections; model: the "
        "paper's model family under autocast",
    )
    p.add_argument(
        "--preset", help="model scope: a model preset (default: the paper family at --head-dim)"
    )
    p.add_argument("--n-layers", type=positive, help="model scope: override the layer count")
    p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--causal-modes",
        type=_choices(["causal", "noncausal"]),
        help="both masks in one run, e.g. causal,noncausal (overrides --causal)",
    )
    p.add_argument(
        "--patterns",
        type=_choices(PATTERNS),
        default=["native"],
        help="mask families (list): native = each variant's own; window / flex "
        f"use --window (default {DEFAULT_WINDOW}) and --global-tokens "
        f"(default {DEFAULT_GLOBAL_TOKENS})",
    )
    p.add_argument("--window", type=int, help="sliding window for every variant")
    p.add_argument("--global-tokens", type=int, help="global tokens (needs --window)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=positive, default=10)
    p.add_argument(
        "--budget-s",
        type=seconds,
        help="cap the timed seconds per row: long calls get fewer repeats (>= 2)",
    )
    p.add_argument(
        "--baselines",
        type=csv(str),
        default=["MHA", "GQA"],
        help="variants every row is compared to (default MHA,GQA)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the correctness check")
    p.add_argument(
        "--check-len",
        type=positive,
        default=512,
        help="tokens of the correctness check (default 512)",
    )
    add_row_timeout_argument(p)
    add_format_argument(p, "the tables")
    # Output files are checked as arguments (`output_file`): before any row runs.
    p.add_argument("--json", type=output_file, help="write the results as JSON here")
    p.add_argument("--png", type=output_file, help="plot time and speedup vs length to this PNG")
    p.add_argument(
        "--calibration-out",
        type=output_file,
        help="write the backend order measured here (needs 2+ named backends); "
        "SQA_NAS_CALIBRATION=FILE makes `auto` follow it",
    )


def add_row_timeout_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--row-timeout-s",
        type=seconds,
        default=DEFAULT_ROW_TIMEOUT_S,
        help="a row running longer is taken to hang: print every thread's stack "
        f"and exit (default {DEFAULT_ROW_TIMEOUT_S:.0f}; 0 = never)",
    )


def settings_from_args(args: argparse.Namespace) -> list[BenchSettings]:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = args.dtype or ["bfloat16" if device.startswith("cuda") else "float32"]
    causal = [m == "causal" for m in args.causal_modes] if args.causal_modes else [args.causal]
    base = BenchSettings(
        variants=args.variants,
        seq_lens=args.seq_lens,
        n_heads=args.n_heads,
        device=device,
        scope=args.scope,
        preset=args.preset,
        n_layers=args.n_layers,
        window=args.window,
        global_tokens=args.global_tokens,
        warmup=args.warmup,
        repeats=args.repeats,
        budget_s=args.budget_s,
        baselines=args.baselines,
        check=not args.no_check,
        check_len=args.check_len,
        extra={"command": " ".join(["sqa-nas", "bench", *sys.argv[2:]])},
    )
    return expand_grid(
        base,
        dtype=dtypes,
        head_dim=args.head_dim,
        batch=args.batch,
        causal=causal,
        pattern=args.patterns,
        mode=args.mode,
        backend=args.backend,
    )


def run_bench_command(args: argparse.Namespace) -> int:
    cells = settings_from_args(args)
    for cell in cells:
        cell.validate()
    fmt = chosen_format(args)
    say = chatter(fmt)  # stdout, or stderr when stdout holds csv / json
    with Bar(grid_size(cells), "rows", console=err_console) as bar:
        result = run_grid(
            cells,
            progress=bar.begin,
            on_cell=(lambda partial: write_json(args.json, partial.to_dict()))
            if args.json
            else None,
            row_timeout_s=args.row_timeout_s,
        )
        bar.finish()
    failed = any(r.error is not None and "correctness" in r.error for r in result.rows)
    if fmt == "table":
        say.print(f"[bold]{escape(header_line(result.machine))}[/]")
    else:  # plain, or on stderr beside csv / json
        say.print(header_line(result.machine), markup=False, highlight=False, soft_wrap=True)
    if fmt == "json":
        write_data(json_text(result.to_dict()))
    elif fmt == "csv":
        write_data(csv_text([r.to_dict() for r in result.rows]))
    else:
        _print_tables(result, list(cells[0].baselines), fmt, say)
    short = [r for r in result.rows if r.out_of_memory]
    if args.json:
        say.print(f"wrote {shown(write_json(args.json, result.to_dict()))}", soft_wrap=True)
    if args.png:
        try:
            title = header_line(result.machine)
            say.print(f"wrote {shown(plot_rows(result.rows, args.png, title=title))}")
        except ImportError:
            say.print(
                "[yellow]matplotlib is not installed: no plot (python -m "
                "experiments.report draws it later from the JSON)[/]"
            )
    if args.calibration_out:
        entries = order_from_rows(
            [r.to_dict() for r in result.rows],
            result.machine["device"],
            source=f"{result.settings['command']} ({time.strftime('%Y-%m-%d')})",
        )
        write_json(
            args.calibration_out,
            {"machine": result.machine, "entries": [e.as_dict() for e in entries]},
        )
        say.print(f"wrote {shown(args.calibration_out)} ({len(entries)} measured orders)")
    if short:
        err_console.print(f"[red]error:[/] {escape(_short_of_memory(short))}")
    return 1 if failed else 2 if short else 0


def _short_of_memory(rows: list[BenchRow]) -> str:
    """One line naming the rows that ran out of memory, with what each tried to allocate."""
    named = []
    for r in rows[:3]:
        asked = (r.error or "").removeprefix(OUT_OF_MEMORY).strip(" ()")  # "tried to ..."
        named.append(
            f"{r.variant} at N={r.seq_len:,} (batch {r.batch}, head_dim {r.head_dim}, "
            f"{r.scope} {r.mode} {r.dtype})" + (f": {asked}" if asked else "")
        )
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    return (
        f"{len(rows)} row(s) ran out of memory: {'; '.join(named)}{more}; the other rows ran"
        " (lower --seq-lens or --batch, or free the device)"
    )


def _print_tables(result: BenchResult, baselines: list[str], fmt: str, out: Console) -> None:
    """One table per cell setting (`bench_sheets`), then the masks and why each backend
    ran, as `fmt` (table or plain)."""
    sheets = bench_sheets(result.rows, baselines)
    masks = sorted({r.mask for r in result.rows if r.mask is not None})
    reasons = sorted(
        {(r.backend, r.backend_reason) for r in result.rows if r.backend_reason is not None}
    )
    sheets[-1].notes += [f"mask: {m}" for m in masks] + [f"{b}: {why}" for b, why in reasons]
    for sheet in sheets:
        print_sheet(sheet, fmt, out)


def bench_sheets(rows: Sequence[BenchRow], baselines: Sequence[str]) -> list[Sheet]:
    """One `Sheet` per cell setting (`group_rows`): variant, N, heads, backend, kernel, ms,
    TFLOP/s, the speedup over each baseline, the share of the best backend (when several
    timed a cell) and the check. A row without a timing says why in the ms column
    (``out of memory``, ``check failed``, ``error``) and in a note under its table. On a
    narrow terminal a column with one value in every row goes first, then the kernel, the
    share of the best, the later baselines (last first), the heads, the backend, the check,
    the TFLOP/s and the first baseline: the variant, N and ms stay."""
    several = any(r.fraction_of_best is not None for r in rows)
    columns = [
        Column("variant", right=False),
        Column("N"),
        Column("heads", drop=4),
        Column("backend", right=False, drop=5),
        Column("kernel", right=False, drop=1),
        Column("ms"),
        Column("TFLOP/s", drop=7),
        *(Column(f"vs {b}", drop=3 if i else 8) for i, b in enumerate(baselines)),
        *([Column("of best", drop=2)] if several else []),
        Column("check", right=False, drop=6),
    ]
    sheets = []
    for title, group in group_rows(rows).items():
        sheet = Sheet(title, columns)
        for r in group:
            heads = f"{_or(r.n_q_heads, '?')}/{_or(r.n_kv_heads, '?')}"
            if r.error is not None:
                why = (
                    OUT_OF_MEMORY
                    if r.out_of_memory
                    else ("check failed" if "correctness" in r.error else "error")
                )
                head = [r.variant, str(r.seq_len), heads, _or(r.backend, r.backend_requested)]
                sheet.add(
                    [*head, _or(r.kernel, "-"), why, *[""] * (len(columns) - 6)], style="red"
                )
                if not r.out_of_memory:  # its size is in the closing line and the JSON
                    sheet.notes.append(f"{r.variant} N={r.seq_len} {head[3]}: {r.error}")
                continue
            check = ("ok" if r.check_ok else "") if r.check_ok is not None else "skipped"
            sheet.add(
                [
                    r.variant,
                    str(r.seq_len),
                    heads,
                    _or(r.backend, "-"),
                    _or(r.kernel, "-"),
                    f"{r.ms:.3f}",
                    f"{r.tflops:.2f}",
                    *[_times(r.speedup(b)) for b in baselines],
                    *(
                        [f"{r.fraction_of_best:.0%}" if r.fraction_of_best is not None else "-"]
                        if several
                        else []
                    ),
                    check,
                ]
            )
        sheets.append(sheet)
    return sheets


def _times(speedup: float | None) -> str:
    return "-" if speedup is None else f"{speedup:.2f}x"


def _or(value, default):
    """`value`, or `default` where the row lacks it (None)."""
    return default if value is None else value
