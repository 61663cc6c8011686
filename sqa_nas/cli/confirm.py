"""`sqa-nas confirm STUDY --top K --seeds S`: retrain the front's first K members with S
fresh seeds on the study's executor and show which stay on the front."""

from __future__ import annotations

import argparse

from rich.table import Table

from sqa_nas.cli import console, shown
from sqa_nas.cli.args import existing_storage, positive, whole
from sqa_nas.errors import UserError
from sqa_nas.progress import Bar
from sqa_nas.search.confirm import confirm, confirmed_rows
from sqa_nas.search.executors import make_executor
from sqa_nas.search.pareto import pareto_front
from sqa_nas.search.records import load_study, of_gpu_type, trial_records
from sqa_nas.search.space import parse_space
from sqa_nas.search.storage import default_storage
from sqa_nas.search.study_attrs import read_study_attrs


def add_confirm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study name")
    p.add_argument(
        "--storage", metavar="URL", help="Optuna storage (default sqlite:///runs/STUDY/study.db)"
    )
    p.add_argument("--top", type=positive, default=3, help="front members to retrain (3)")
    p.add_argument(
        "--seeds", type=whole(2, "a number of seeds"), default=3, help="fresh seeds each (3)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the study's")
    p.add_argument("--workers", type=positive, help="local worker processes")
    p.add_argument("--gpu-type", metavar="NAME", help="the front of trials measured on NAME")


def run_confirm_command(args: argparse.Namespace) -> int:
    existing_storage(args.storage)  # a missing storage is not created
    study = load_study(args.study, args.storage, write=True)  # the result is stored in it
    url = args.storage or default_storage(args.study)
    attrs = read_study_attrs(study, url)
    stored = attrs.space
    if stored is None:
        where = f" (its records belong in {attrs.folder})" if attrs.folder else ""
        raise UserError(f"study {args.study!r} holds no search space to retrain from{where}")
    execution = dict(stored.get("execution", {}))
    for key in ("device", "workers"):
        if getattr(args, key) is not None:
            execution[key] = getattr(args, key)
    spec = parse_space({**stored, "execution": execution}, f"study {args.study!r}")
    records, _ = of_gpu_type(trial_records(study), args.gpu_type)
    front = pareto_front(records, spec.objectives)[: args.top]
    console.print(
        f"[bold]sqa-nas confirm[/] {shown(args.study)}: retraining {len(front)} front member(s) "
        f"with {args.seeds} fresh seeds each"
    )
    with Bar(len(front), "members", console=console) as bar:
        bar.update(0)
        result = confirm(
            study,
            spec,
            make_executor(spec),
            top=args.top,
            seeds=args.seeds,
            url=url,
            gpu_type=args.gpu_type,
            on_done=lambda _: bar.advance(),
        )
    table = Table(title=f"Confirmed front of {shown(args.study)} ({args.seeds} fresh seeds)")
    for col in ("trial", "per-layer H_q/H_kv", "search val_loss", "confirmed", "on front"):
        table.add_column(col, justify="left" if col.startswith("per") else "right")
    for row in confirmed_rows(front, result):
        spread = row["val_loss_std"]
        table.add_row(
            str(row["trial"]),
            row["allocation"],
            f"{row['search_val_loss']:.4f}" if row["search_val_loss"] is not None else "-",
            f"{row['val_loss_mean']:.4f} +- {spread:.4f}" if spread is not None else "-",
            "yes" if row["on_front"] else "drops off",
        )
    console.print(table)
    console.print(result["summary"])
    return 0
