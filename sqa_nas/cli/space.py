"""`sqa-nas space SPACE.yaml`: validate a search space and describe its choices, cardinality,
analytic cost range and the memory its largest trial needs on the device of the run
(formulas only: nothing is built or allocated)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from sqa_nas.analytics import format_bytes
from sqa_nas.cli import console, shown
from sqa_nas.search.costs import cost_range
from sqa_nas.search.memory import largest_trial, room
from sqa_nas.search.space import load_space


def add_space_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", type=Path, help="search space YAML to validate and describe")
    p.add_argument("--json", action="store_true", help="print the resolved space as JSON")


def run_space_command(args: argparse.Namespace) -> int:
    spec = load_space(args.space)
    if args.json:
        console.print_json(json.dumps(spec.model_dump(mode="json")))
        return 0
    m = spec.model
    console.print(
        f"[bold]{shown(args.space)}[/] is valid: study [bold]{shown(spec.study_name)}[/]"
    )
    console.print(
        f"model: d_model {m.d_model}, {m.n_layers} layers, H {m.n_heads} (head_dim "
        f"{m.head_dim_}), ffn {m.ffn_dim}, seq_len {m.seq_len}, "
        f"{'causal' if m.causal else 'bidirectional'}"
    )
    units = spec.units()
    console.print(
        f"tying: {spec.search.tying} -> {len(units)} unit(s): "
        + ", ".join(f"{u} (layers {idx[0]}..{idx[-1]})" for u, idx in units)
    )
    table = Table(title="choices per unit")
    table.add_column("parameter")
    table.add_column("choices")
    for name, dist in spec.distributions().items():
        if name.startswith(units[0][0] + ".") or name.startswith("model."):
            table.add_row(name, ", ".join(map(str, dist.choices)))
    console.print(table)
    console.print(
        f"cardinality: [bold]{spec.cardinality():,}[/] architectures; objectives: "
        f"{', '.join(f'{o} ({d})' for o, d in zip(spec.objectives, spec.directions))}"
    )
    lo, hi = cost_range(spec)
    console.print(
        f"analytic cost range at seq_len {m.seq_len} (per token): params "
        f"{lo['params']:,} .. {hi['params']:,}; attention FLOPs "
        f"{lo['attn_flops']:.3g} .. {hi['attn_flops']:.3g}; KV cache "
        f"{lo['kv_bytes']:,} .. {hi['kv_bytes']:,} bytes"
    )
    space = room(spec.execution)
    _, need = largest_trial(spec, space.device_type)  # load_space refused what does not fit
    where = f"fits {space.words}" if space.known else f"checked against {space.words}"
    console.print(
        f"memory: the largest trial needs ~{format_bytes(need.total)} ({need.describe()}); "
        + where,
        markup=False,
    )
    console.print(
        f"seed trials: {', '.join(spec.seed_trials) or 'none'}; sampler "
        f"{spec.sampler.name or 'auto'}; budget {spec.budget.n_trials} trials"
    )
    return 0
