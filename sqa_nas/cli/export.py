"""`sqa-nas export STUDY --trial N | --pick SPEC --out DIR [--format torch|hf] [--weights CKPT]
[--force]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from sqa_nas.cli import console
from sqa_nas.cli.args import existing_storage, whole
from sqa_nas.export import export_trial, find_trial
from sqa_nas.printable import printable
from sqa_nas.search.records import load_study


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study name")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--trial", type=whole(0, "a trial number"), metavar="N", help="trial number"
    )
    which.add_argument(
        "--pick", metavar="SPEC", help="knee | best:OBJECTIVE | best:OBJECTIVE:within=OTHER+1%%"
    )
    p.add_argument(
        "--storage", metavar="URL", help="Optuna storage (default sqlite:///runs/STUDY/study.db)"
    )
    p.add_argument(
        "--gpu-type",
        metavar="NAME",
        help="--pick among trials measured on this GPU type (needed when the study holds several)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder to write into (created); refused when it already holds a file the "
        "export writes, unless --force",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the files of the same names in an existing --out folder",
    )
    p.add_argument(
        "--format",
        dest="fmt",
        choices=("torch", "hf"),
        default="torch",
        help="torch: model.py + config.yaml + README.md (default); hf: also a "
        "Hugging Face folder loadable with trust_remote_code=True",
    )
    p.add_argument(
        "--weights",
        metavar="CHECKPOINT",
        help="write the weights of this sqa-nas checkpoint file (refused unless its keys and "
        "shapes are the trial's model's); default: the model's initialisation, untrained",
    )
    p.add_argument(
        "--force-hf",
        action="store_true",
        help="write the hf folder even when transformers is not installed here",
    )


def run_export_command(args) -> int:
    existing_storage(args.storage)  # reading creates no storage
    study = load_study(args.study, args.storage)
    record = find_trial(study, args.trial, args.pick, args.gpu_type)
    weights = Path(args.weights) if args.weights else None
    out = export_trial(
        study,
        record,
        Path(args.out),
        args.fmt,
        weights=weights,
        force_hf=args.force_hf,
        force=args.force,
    )
    how = f"--pick {args.pick}" if args.pick else "--trial"
    values = ", ".join(f"{k} {v:.4g}" for k, v in (record.values or {}).items())
    console.print(
        f"exported trial {record.number} ({how}; {values}) as {args.fmt}, "
        f"{'weights of ' + printable(weights.name) if weights else 'untrained weights'}, to "
        f"{printable(out)}/; see {printable(out / 'README.md')}",
        markup=False,  # a path is text, not markup
    )
    return 0
