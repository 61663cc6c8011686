"""`sqa-nas search SPACE.yaml` and `sqa-nas space SPACE.yaml`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sqa_nas.cli import positive
from sqa_nas.errors import UserError


def _spec_with_overrides(args):
    from sqa_nas.search.space import load_space, parse_space

    spec = load_space(args.space)
    data = spec.model_dump(mode="json")
    execution = data["execution"]
    for flag, section, key in (("study", None, "study"), ("storage", None, "storage"),
                               ("n_trials", "budget", "n_trials"),
                               ("executor", "execution", "executor"),
                               ("workers", "execution", "workers"),
                               ("device", "execution", "device"),
                               ("seed", "sampler", "seed")):
        value = getattr(args, flag, None)
        if value is not None:
            (data[section] if section else data)[key] = value
    for flag, key in (("address", "address"), ("gpus_per_trial", "gpus_per_trial"),
                      ("max_concurrent", "max_concurrent")):
        value = getattr(args, flag, None)
        if value is not None:
            execution["ray"][key] = value
    return parse_space(data, f"{args.space} (with command-line overrides)")


# ------------------------------------------------------------------------------------ search
def add_search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", type=Path, help="search space YAML (see search_spaces/)")
    p.add_argument("--study", help="study name (default: the file's `study:` or its name)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///runs/STUDY/study.db)"
                                     " or journal:PATH")
    p.add_argument("--n-trials", type=positive, help="evaluated trials to reach")
    p.add_argument("--executor", choices=["local", "ray"])
    p.add_argument("--workers", type=positive, help="local worker processes")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, help="sampler seed")
    ray = p.add_argument_group("ray executor")
    ray.add_argument("--address", help="join this Ray cluster (auto or HOST:PORT); default: "
                                       "start a local Ray instance on loopback")
    ray.add_argument("--gpus-per-trial", type=float, help="GPUs each trial asks Ray for "
                     "(a fraction shares a GPU; 0: CPU trials); default 1")
    ray.add_argument("--max-concurrent", type=positive, help="at most this many trials at "
                     "once (default: as many as the cluster's GPUs hold)")
    p.add_argument("--gpu-type", metavar="NAME", help="show the final Pareto front of trials "
                   "measured on this GPU type only (default: one front per GPU type)")


def make_executor(spec):
    e = spec.execution
    if e.executor == "ray":
        from sqa_nas.search.executors.ray import RayExecutor

        return RayExecutor(spec)
    from sqa_nas.search.executors.local import LocalExecutor

    return LocalExecutor(workers=e.workers, device=e.device,
                         trial_timeout_s=spec.budget.trial_timeout_s)


def run_search_command(args) -> int:
    from sqa_nas.cli import console
    from sqa_nas.search.study import Driver

    spec = _spec_with_overrides(args)
    driver = Driver(spec, make_executor(spec), console=console)
    console.print(f"[bold]sqa-nas search[/] {args.space}: study [bold]{spec.study_name}[/], "
                  f"{spec.cardinality():,} architectures, objectives "
                  f"{', '.join(spec.objectives)}, storage {driver.url}")
    result = driver.run(spec.budget.n_trials, spec.budget.max_wall_seconds)
    print_front(result.study, spec.objectives, console, getattr(args, "gpu_type", None))
    print_stats(result.stats, console)
    return 130 if result.interrupted else 0


def print_stats(stats: dict, console) -> None:
    """The executor's end-of-search figures, fractions as percentages."""
    def shown(key, value):
        if isinstance(value, float) and "fraction" in key:
            return f"{value:.1%}"
        return str(value)

    for key, value in stats.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {shown(key, v)}" for k, v in value.items()) or "-"
        console.print(f"{key}: {shown(key, value)}")


def print_front(study, objectives, console, gpu_type: str | None = None) -> None:
    """The Pareto front, one per GPU type when trials ran on several: measured throughput
    on different GPUs is not comparable (`gpu_type` shows one)."""
    from sqa_nas.search.records import trial_records

    records = trial_records(study)
    types = sorted({r.gpu_type for r in records if r.state == "COMPLETE" and r.gpu_type})
    if gpu_type is not None and gpu_type not in types:
        raise UserError(f"--gpu-type: no completed trial ran on {gpu_type!r}; GPU types in "
                        f"this study: {', '.join(types) or 'none recorded'}")
    if gpu_type is not None or len(types) > 1:
        for name in [gpu_type] if gpu_type else types:
            _print_front([r for r in records if r.gpu_type == name], study.study_name,
                         objectives, console, f" on {name}")
    else:
        _print_front(records, study.study_name, objectives, console, "")


def _print_front(records, name, objectives, console, where: str) -> None:
    from rich.table import Table

    from sqa_nas.pareto import pareto_front

    front = pareto_front(records, objectives)
    table = Table(title=f"Pareto front of {name}{where}: {len(front)} of "
                        f"{sum(r.state == 'COMPLETE' for r in records)} completed trials")
    for col in ["trial", "baseline", "per-layer H_q/H_kv", *objectives, "params",
                "KV B/token", "speedup vs MHA"]:
        table.add_column(col, justify="left" if col in ("baseline", "per-layer H_q/H_kv")
                         else "right")
    for r in front:
        a, m = r.attrs.get("analytics", {}), r.attrs.get("metrics", {})
        speedup = m.get("speedup_vs_mha", a.get("analytic_speedup_vs_mha"))
        table.add_row(str(r.number), r.seed_variant or "", r.allocation,
                      *[f"{r.values[o]:.4g}" for o in objectives],
                      f"{a.get('params', 0):,}", f"{a.get('kv_cache_bytes_per_token', 0):,}",
                      f"{speedup:.2f}x" if speedup else "-")
    console.print(table)


# ------------------------------------------------------------------------------------- space
def add_space_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", type=Path, help="search space YAML to validate and describe")
    p.add_argument("--json", action="store_true", help="print the resolved space as JSON")


def run_space_command(args) -> int:
    from rich.table import Table

    from sqa_nas.cli import console
    from sqa_nas.search.space import load_space

    spec = load_space(args.space)
    if args.json:
        console.print_json(json.dumps(spec.model_dump(mode="json")))
        return 0
    m = spec.model
    console.print(f"[bold]{args.space}[/] is valid: study [bold]{spec.study_name}[/]")
    console.print(f"model: d_model {m.d_model}, {m.n_layers} layers, H {m.n_heads} (head_dim "
                  f"{m.head_dim_}), ffn {m.ffn_dim}, seq_len {m.seq_len}, "
                  f"{'causal' if m.causal else 'bidirectional'}")
    units = spec.units()
    console.print(f"tying: {spec.search.tying} -> {len(units)} unit(s): "
                  + ", ".join(f"{u} (layers {idx[0]}..{idx[-1]})" for u, idx in units))
    table = Table(title="choices per unit")
    table.add_column("parameter")
    table.add_column("choices")
    for name, dist in spec.distributions().items():
        if name.startswith(units[0][0] + ".") or name.startswith("model."):
            table.add_row(name, ", ".join(map(str, dist.choices)))
    console.print(table)
    console.print(f"cardinality: [bold]{spec.cardinality():,}[/] architectures; objectives: "
                  f"{', '.join(f'{o} ({d})' for o, d in zip(spec.objectives, spec.directions))}")
    lo, hi = cost_range(spec)
    console.print(f"analytic cost range at seq_len {m.seq_len} (per token): params "
                  f"{lo['params']:,} .. {hi['params']:,}; attention FLOPs "
                  f"{lo['attn_flops']:.3g} .. {hi['attn_flops']:.3g}; KV cache "
                  f"{lo['kv_bytes']:,} .. {hi['kv_bytes']:,} bytes")
    console.print(f"seed trials: {', '.join(spec.seed_trials) or 'none'}; sampler "
                  f"{spec.sampler.name or 'auto'}; budget {spec.budget.n_trials} trials")
    return 0


def cost_range(spec) -> tuple[dict, dict]:
    """Min and max of params, attention FLOPs and KV cache over the whole space. Costs add
    up over layers, so each unit's cheapest and dearest choice bound the total."""
    from sqa_nas.analytics import analyze

    keys = ("params", "attn_flops", "kv_bytes")
    dists = spec.distributions()
    base = {k: d.choices[0] for k, d in dists.items()}
    vocab = spec.model.vocab_size or 256
    ref = analyze(spec.build_config(base, vocab), spec.model.seq_len)
    lo = {k: getattr(ref, k) for k in keys}
    hi = dict(lo)
    for unit, _ in spec.units():
        options = [k for k in dists if k.startswith(unit + ".")]
        costs = []
        for combo in _product({k: dists[k].choices for k in options}):
            cost = analyze(spec.build_config({**base, **combo}, vocab), spec.model.seq_len)
            costs.append({k: getattr(cost, k) - lo_k for k, lo_k in
                          ((k, getattr(ref, k)) for k in keys)})
        for k in keys:
            lo[k] += min(c[k] for c in costs)
            hi[k] += max(c[k] for c in costs)
    for k in keys:  # searched model fields scale everything: report the base's range
        if not spec.model.searched:
            continue
        for value_combo in _product({f"model.{n}": v for n, v in spec.model.searched.items()}):
            cost = analyze(spec.build_config({**base, **value_combo}, vocab), spec.model.seq_len)
            lo[k], hi[k] = min(lo[k], getattr(cost, k)), max(hi[k], getattr(cost, k))
    if not isinstance(lo["params"], int):
        raise UserError("internal: params must be integers")
    return lo, hi


def _product(options: dict) -> list[dict]:
    import itertools

    keys = list(options)
    return [dict(zip(keys, values)) for values in itertools.product(*options.values())]
