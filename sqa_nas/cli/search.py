"""`sqa-nas search SPACE.yaml`: run (or resume) a search, then print its Pareto front
(`--format`: fitted to the terminal, plain, csv or json; `sqa_nas.cli.tables`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from sqa_nas.cli import shown
from sqa_nas.cli.args import positive
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
from sqa_nas.dashboard.ladder import ladder
from sqa_nas.data import describe_split, load_dataset
from sqa_nas.errors import UserError
from sqa_nas.search.driver import Driver
from sqa_nas.search.executors import make_executor
from sqa_nas.search.figures import SHOWN, RunStats
from sqa_nas.search.noise import K_SIGMA, Noise, Verdict, assess
from sqa_nas.search.records import TrialRecord, trial_records
from sqa_nas.search.space import SearchSpec, load_space, parse_space
from sqa_nas.search.storage import check_storage, default_storage


def _spec_with_overrides(args: argparse.Namespace) -> SearchSpec:
    """The search space file with the command line's overrides, validated again."""
    spec = load_space(args.space)
    data = spec.model_dump(mode="json")
    execution = data["execution"]
    for flag, section, key in (
        ("study", None, "study"),
        ("storage", None, "storage"),
        ("n_trials", "budget", "n_trials"),
        ("executor", "execution", "executor"),
        ("workers", "execution", "workers"),
        ("device", "execution", "device"),
        ("seed", "sampler", "seed"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            (data[section] if section else data)[key] = value
    for flag, key in (
        ("address", "address"),
        ("gpus_per_trial", "gpus_per_trial"),
        ("max_concurrent", "max_concurrent"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            execution["ray"][key] = value
    return parse_space(data, f"{args.space} (with command-line overrides)")


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", type=Path, help="search space YAML (see search_spaces/)")
    p.add_argument("--study", help="study name (default: the file's `study:` or its name)")
    p.add_argument(
        "--storage",
        help="Optuna storage URL (default sqlite:///runs/STUDY/study.db) or journal:PATH",
    )
    p.add_argument("--n-trials", type=positive, help="evaluated trials to reach")
    p.add_argument("--executor", choices=["local", "ray"])
    p.add_argument("--workers", type=positive, help="local worker processes")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, help="sampler seed")
    ray = p.add_argument_group("ray executor")
    ray.add_argument(
        "--address",
        help="join this Ray cluster (auto or HOST:PORT); default: "
        "start a local Ray instance on loopback",
    )
    ray.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs each trial asks Ray for (a fraction shares a GPU; 0: CPU trials); default "
        "1 / execution.trials_per_gpu",
    )
    ray.add_argument(
        "--max-concurrent",
        type=positive,
        help="at most this many trials at once (default: as many as the cluster's GPUs hold)",
    )
    p.add_argument(
        "--gpu-type",
        metavar="NAME",
        help="show the final Pareto front of trials "
        "measured on this GPU type only (default: one front per GPU type)",
    )
    add_format_argument(p, "the final Pareto front")


def run_search_command(args: argparse.Namespace) -> int:
    fmt = chosen_format(args)
    say = chatter(fmt)  # stdout, or stderr when stdout holds csv / json
    spec = _spec_with_overrides(args)
    # The storage is checked before the data (cheap first): "" is refused, not defaulted.
    check_storage(default_storage(spec.study_name) if spec.storage is None else spec.storage)
    data_line = check_data(spec)
    driver = Driver(spec, make_executor(spec), console=say)
    say.print(
        f"[bold]sqa-nas search[/] {shown(args.space)}: study [bold]{shown(spec.study_name)}[/], "
        f"{spec.cardinality():,} architectures, objectives "
        f"{', '.join(spec.objectives)}, storage {shown(driver.url)}",
        soft_wrap=not say.is_terminal,  # a log gets one line, never one cut with blanks
    )
    say.print(data_line, markup=False, soft_wrap=not say.is_terminal)
    result = driver.run(spec.budget.n_trials, spec.budget.max_wall_seconds)
    print_front(result.study, spec.objectives, say, getattr(args, "gpu_type", None), fmt)
    if spec.budget.early_stopping.scheduler != "none":
        print_ladder(result.study, spec.ladder(), say)
    print_stats(result.stats, say)
    return 130 if result.interrupted else 0


def check_data(spec: SearchSpec) -> str:
    """Load the space's data (built into the cache once) and cut one training and one
    validation window at model.seq_len from it: a missing path, an empty corpus or one
    shorter than a window is refused (UserError) before the study's storage and lock are
    created, so it leaves no empty study behind. Returns the line describing the data."""
    data = load_dataset(spec.data.model_dump(mode="json"))
    seq_len = spec.model.seq_len
    next(data.train_batches(1, seq_len))
    data.val_batches(1, seq_len, 1)
    return describe_split(data.meta)


def print_ladder(study: optuna.Study, tokens: Sequence[int], console: Console) -> None:
    """The multi-fidelity ladder, one line per rung: how many trials reached it, went on,
    were stopped there or wait there (`dashboard.ladder`)."""
    for row in ladder(trial_records(study), tokens):
        waiting = f", {row.paused} paused" if row.paused else ""
        ended = f"{row.reached} complete" if row.top else f"{row.promoted} went on"
        console.print(
            f"rung {row.rung} ({row.tokens:,} tokens): {row.reached} reached, {ended}, "
            f"{row.stopped} stopped{waiting}",
            markup=False,
            highlight=False,
        )


def print_stats(stats: dict, console: Console) -> None:
    """The run's end-of-search figures: NVML utilisation and training-step share
    (`RunStats.lines`), then the executor's, fractions as percentages."""

    def shown(key, value):
        if isinstance(value, float) and "fraction" in key:
            return f"{value:.1%}"
        return str(value)

    for line in RunStats.read(stats).lines():
        console.print(line, markup=False, highlight=False)
    for key, value in stats.items():
        if key in SHOWN:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {shown(key, v)}" for k, v in value.items()) or "-"
        console.print(f"{key}: {shown(key, value)}")


def print_front(
    study: optuna.Study,
    objectives: Sequence[str],
    console: Console,
    gpu_type: str | None = None,
    fmt: str = "table",
) -> None:
    """The Pareto front, one per GPU type when trials ran on several: measured throughput
    on different GPUs is not comparable (`gpu_type` shows one). Each front is read against
    the study's noise (`noise.assess`): the trials within noise of it follow it, and one
    sentence says whether it is resolved. `fmt`: table (fitted to `console`), plain, or csv
    / json on stdout (`front_data`)."""
    fronts = _fronts(study, objectives, gpu_type)
    if fmt == "json":
        write_data(json_text(front_data(study.study_name, objectives, fronts)))
        return
    if fmt == "csv":
        write_data(csv_text([t for f in fronts for _, t in _trials(f, objectives)]))
        return
    for where, records, verdict in fronts:
        sheet = front_sheet(study.study_name, objectives, where, records, verdict)
        print_sheet(sheet, fmt, console)
        console.print(verdict.summary(), markup=False, highlight=False, soft_wrap=fmt == "plain")


Front = tuple[str | None, list[TrialRecord], Verdict]  # GPU type (None: all), records, verdict


def _fronts(study: optuna.Study, objectives: Sequence[str], gpu_type: str | None) -> list[Front]:
    records = trial_records(study)
    noise = Noise.read(study.user_attrs)
    types = sorted({r.gpu_type for r in records if r.state == "COMPLETE" and r.gpu_type})
    if gpu_type is not None and gpu_type not in types:
        raise UserError(
            f"--gpu-type: no completed trial ran on {gpu_type!r}; GPU types in "
            f"this study: {', '.join(types) or 'none recorded'}"
        )
    if gpu_type is None and len(types) <= 1:
        return [(None, records, assess(records, objectives, noise))]
    out: list[Front] = []
    for name in [gpu_type] if gpu_type else types:
        chosen = [r for r in records if r.gpu_type == name]
        out.append((name, chosen, assess(chosen, objectives, noise)))
    return out


def front_sheet(
    name: str,
    objectives: Sequence[str],
    where: str | None,
    records: list[TrialRecord],
    verdict: Verdict,
) -> Sheet:
    """The front's table: trial, baseline, per-layer allocation (wrapping between layers),
    the objectives with their spread, params, KV-cache bytes per token, speedup over MHA and
    a note; the trials within noise of the front follow it, dim. A narrow terminal gives up
    the KV bytes, then the params, the baseline and the speedup."""
    on = f" on {where}" if where else ""
    completed = sum(r.state == "COMPLETE" for r in records)
    sheet = Sheet(
        f"Pareto front of {name}{on}: {len(verdict.front)} of {completed} completed trials",
        [
            Column("trial"),
            Column("baseline", right=False, drop=3),
            Column("per-layer H_q/H_kv", right=False, wrap=True),
            *(Column(o) for o in objectives),
            Column("params", drop=2),
            Column("KV B/token", drop=1),
            Column("speedup vs MHA", drop=4),
            Column("note", right=False, wrap=True),
        ],
    )
    for r, t in _trials((where, records, verdict), objectives):
        sheet.add(
            [
                str(r.number),
                r.seed_variant or "",
                r.allocation,
                *[_value(r, o) for o in objectives],
                f"{t['params'] or 0:,}",
                f"{t['kv_cache_bytes_per_token'] or 0:,}",
                f"{t['speedup_vs_mha']:.2f}x" if t["speedup_vs_mha"] else "-",
                t["note"],
            ],
            style="dim" if t["within_noise"] else None,
        )
    return sheet


def _trials(front: Front, objectives: Sequence[str]) -> list[tuple[TrialRecord, dict[str, Any]]]:
    """The front's trials, then those within noise of it: each `TrialRecord` and its flat
    record at full precision (what csv and json print, one line or object each)."""
    where, _, verdict = front
    out = []
    for r, close in [(r, False) for r in verdict.front] + [
        (r, True) for r in verdict.indistinguishable
    ]:
        assert r.values is not None  # fronts hold completed trials only
        a, m = r.analytics, r.metrics
        low, high = m.speedup_ci95 or (None, None)
        notes = [
            f"within {K_SIGMA:g} sigma" if close else "",
            "noisy throughput" if m.noisy_throughput else "",
        ]
        out.append(
            (
                r,
                {
                    "trial": r.number,
                    "gpu_type": where,
                    "baseline": r.seed_variant,
                    "allocation": r.allocation,
                    **{o: r.values[o] for o in objectives},
                    "val_loss_std": m.val_loss_std,
                    "throughput_rel_ci95": m.throughput_rel_ci95,
                    "speedup_ci95_low": low,
                    "speedup_ci95_high": high,
                    "params": a.params,
                    "kv_cache_bytes_per_token": a.kv_cache_bytes_per_token,
                    "speedup_vs_mha": (
                        a.analytic_speedup_vs_mha if m.speedup_vs_mha is None else m.speedup_vs_mha
                    ),
                    "within_noise": close,
                    "noisy_throughput": bool(m.noisy_throughput),
                    "note": "; ".join(filter(None, notes)),
                },
            )
        )
    return out


def front_data(name: str, objectives: Sequence[str], fronts: list[Front]) -> dict[str, Any]:
    """What ``--format json`` prints: the study, its objectives, and per front (one per GPU
    type when trials ran on several) its GPU type, completed trials, whether the noise
    resolves it, the verdict's sentence, and its trials (`_trials`; csv prints the same
    trials, one line each)."""
    return {
        "study": name,
        "objectives": list(objectives),
        "fronts": [
            {
                "gpu_type": where,
                "completed": sum(r.state == "COMPLETE" for r in records),
                "resolved": verdict.resolved,
                "verdict": verdict.summary(),
                "trials": [t for _, t in _trials((where, records, verdict), objectives)],
            }
            for where, records, verdict in fronts
        ],
    }


def _value(r: TrialRecord, objective: str) -> str:
    """An objective's value with its spread where the trial measured one: val_loss +- its
    std over seeds, throughput +- its 95% interval (relative)."""
    assert r.values is not None
    m, value = r.metrics, r.values[objective]
    if objective == "val_loss" and m.val_loss_std is not None:
        return f"{value:.4g} +- {m.val_loss_std:.2g}"
    if objective == "throughput_tokens_per_s" and m.throughput_rel_ci95 is not None:
        return f"{value:.4g} +-{m.throughput_rel_ci95:.0%}"
    if objective == "speedup_vs_mha" and m.speedup_ci95 is not None:
        low, high = m.speedup_ci95
        return f"{value:.3g} [{low:.3g}, {high:.3g}]"
    return f"{value:.4g}"
