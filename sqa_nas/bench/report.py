"""Result files and the tables drawn from them: writing a result (atomically), how many rows
a grid has, grouping rows into one table per cell setting, and each row's share of the best
backend's TFLOP/s."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sqa_nas.bench.row import BenchRow
from sqa_nas.bench.settings import BenchSettings

# Keys that, with the variant and length, identify a cell: rows equal on these but for the
# backend are compared for `fraction_of_best`.
CELL_KEYS = (
    "variant",
    "seq_len",
    "batch",
    "n_heads",
    "head_dim",
    "dtype",
    "causal",
    "pattern",
    "mask",
    "mode",
    "scope",
)


def write_json(path: Path, data: dict) -> Path:
    """Write a results file (creating its folder) through a temporary sibling and a rename,
    so a stop mid-write leaves the old file whole; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_rows(
    path: Path | None,
    schema: str,
    machine: dict,
    args: argparse.Namespace,
    rows: list[dict],
    *,
    command: str | None = None,
) -> None:
    """A diagnosis script's result (`path` None: none): its rows under the machine header,
    with the command (default: ``python`` and this process's arguments) and the flags
    that made it."""
    if path is None:
        return
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(
        path,
        {
            "schema": schema,
            "machine": machine,
            "command": command or " ".join(["python", *sys.argv]),
            "settings": settings,
            "rows": rows,
        },
    )
    print(f"wrote {path}")


def grid_size(cells: Sequence[BenchSettings]) -> int:
    """The rows `run_grid` times for `cells`: per cell, each length x each variant, the
    baselines among them once (a progress bar's total)."""
    return sum(len(c.seq_lens) * len(dict.fromkeys([*c.baselines, *c.variants])) for c in cells)


def group_rows(rows: Sequence[BenchRow]) -> dict[str, list[BenchRow]]:
    """Rows grouped into one table per cell setting (all but variant, length, backend),
    keyed by the table's title."""
    out: dict[str, list[BenchRow]] = {}
    for r in rows:
        key = (
            f"attention {r.scope}, {r.mode}, {r.dtype}, batch {r.batch}, "
            f"head_dim {r.head_dim}, {'causal' if r.causal else 'non-causal'}, "
            f"{r.pattern}"
        )
        out.setdefault(key, []).append(r)
    return out


def add_fraction_of_best(rows: Sequence[BenchRow]) -> list[BenchRow]:
    """Where several backends timed the same cell, every timed row gets the best explicitly
    named backend (`best_backend`) and its own share of that backend's TFLOP/s
    (`fraction_of_best`): the measure of how good `auto`'s choice was. Returns the rows in
    their order, updated."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(tuple(json.dumps(r.value(k)) for k in CELL_KEYS), []).append(i)
    out = list(rows)
    for group in groups.values():
        members = [rows[i] for i in group]
        named = [
            (r.tflops, r)
            for r in members
            if r.backend_requested != "auto" and r.tflops is not None
        ]
        if len({r.backend_requested for r in members}) < 2 or not named:
            continue
        best_tflops, best = max(named, key=lambda pair: pair[0])
        for i in group:
            tflops = rows[i].tflops
            if tflops is not None:
                out[i] = rows[i].update(
                    best_backend=best.backend_requested, fraction_of_best=tflops / best_tflops
                )
    return out
