"""`sqa-nas variants`: every attention variant and every kernel backend on this machine."""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from sqa_nas.cli import console
from sqa_nas.cli.args import positive
from sqa_nas.registry import list_backends, list_variants


def add_variants_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--n-heads",
        type=positive,
        default=16,
        help="reference head count H used to show head numbers (default 16)",
    )


def run_variants_command(args: argparse.Namespace) -> int:
    table = Table(title=f"Attention variants (H = {args.n_heads})")
    for col in ("variant", "H_q", "H_kv", "pattern", "attention FLOPs vs MHA", "what"):
        table.add_column(col)
    # Names, descriptions and reasons may come from plugins (entry points) or exception
    # messages: cells are plain Text, never markup.
    for v in list_variants():
        hq, hkv = v.heads(args.n_heads)
        table.add_row(
            Text(v.name),
            f"{v.q} = {hq}",
            f"{v.kv} = {hkv}",
            v.pattern,
            f"{max(hq, hkv) / args.n_heads:.2f}x",
            Text(v.description),
        )
    console.print(table)
    backends = Table(title="Kernel backends on this machine")
    for col in ("backend", "available", "what / why not"):
        backends.add_column(col)
    for b in list_backends():
        why_not = b.availability()
        backends.add_row(
            Text(b.name),
            "[green]yes[/]" if why_not is None else "[red]no[/]",
            Text(b.description if why_not is None else why_not),
        )
    console.print(backends)
    return 0
