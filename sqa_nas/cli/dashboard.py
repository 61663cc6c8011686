"""`sqa-nas dashboard STUDY`: the interactive dashboard, or with `--once` / `--png` /
`--json` the static outputs. Textual and matplotlib are imported only when used."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from pathlib import Path

from sqa_nas.cli import console, err_console, shown
from sqa_nas.cli.args import existing_storage, seconds, unwritable
from sqa_nas.dashboard.view import StorageSource, StudyView
from sqa_nas.errors import UserError


def add_dashboard_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help="study name")
    p.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: sqlite:///PATH, postgresql://..., journal:PATH "
        "(default sqlite:///runs/STUDY/study.db)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="print a static snapshot (summary and Pareto table) and exit",
    )
    p.add_argument(
        "--png",
        metavar="FILE",
        help="write the Pareto scatter as a PNG and exit (a folder: FOLDER/STUDY.png)",
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        help="write the Pareto front as JSON ('-' for stdout; a folder: FOLDER/STUDY.json) "
        "and exit",
    )
    p.add_argument(
        "--pick",
        metavar="SPEC",
        help="select a trial: 'knee', 'best:OBJ' or 'best:OBJ:within=OTHER+1%%' "
        "(printed with --once, selected in the app)",
    )
    p.add_argument(
        "--x",
        dest="x_axis",
        metavar="METRIC",
        help="scatter x axis (default the second objective)",
    )
    p.add_argument(
        "--y", dest="y_axis", metavar="METRIC", help="scatter y axis (default the first objective)"
    )
    p.add_argument(
        "--gpu-type",
        metavar="NAME",
        help="only trials measured on this GPU type (e.g. 'NVIDIA H200')",
    )
    p.add_argument(
        "--refresh",
        type=seconds,
        default=2.0,
        metavar="SECONDS",
        help="how often the app re-reads the storage (default 2)",
    )
    p.add_argument(
        "--export-dir",
        default="exports",
        metavar="DIR",
        help="where the app's export key writes (DIR/STUDY-trialN)",
    )


def run_dashboard_command(args) -> int:
    existing_storage(args.storage)  # reading creates no storage
    if args.refresh <= 0:
        raise UserError(f"--refresh must be > 0 seconds, got {args.refresh}")
    if args.once and args.json == "-":
        raise UserError("--once and --json - both write to stdout: give --json a file name")
    if args.png:
        args.png = _output("--png", args.png, args.study, ".png")
    if args.json and args.json != "-":
        args.json = _output("--json", args.json, args.study, ".json")
    source = StorageSource(args.study, args.storage)
    records = source.records()
    view = StudyView(
        records,
        source.objectives,
        source.directions,
        gpu_type=args.gpu_type,
        runs=source.runs(),
        study_attrs=source.study_attrs(),
    )
    axes = _axes(view, args.x_axis, args.y_axis)
    picked = None
    if args.pick:
        picked = (args.pick, view.pick(args.pick, axes))  # UserError on a bad spec

    interactive = not (args.once or args.png or args.json)
    if interactive and not (sys.stdout.isatty() and sys.stdin.isatty()):
        err_console.print("not a terminal: printing a snapshot (as --once)")
        interactive, args.once = False, True
    if interactive:
        from sqa_nas.dashboard.app import Dashboard

        Dashboard(
            source,
            records=records,
            axes=axes,
            gpu_type=args.gpu_type,
            pick=args.pick,
            refresh_s=args.refresh,
            export_dir=args.export_dir,
        ).run()
        return 0

    title = f"{source.name} ({source.where})"
    if args.json:
        from sqa_nas.dashboard.snapshot import write_json

        with _writing("--json", args.json):
            path = write_json(view, args.json)
        if path:
            err_console.print(f"wrote {len(view.front)} Pareto trials to {shown(path)}")
    if args.png:
        from sqa_nas.dashboard.plots import write_png

        with _writing("--png", args.png):
            path = write_png(
                view,
                *axes,
                args.png,
                title=f"{source.name}: Pareto front",
                selected=picked[1].number if picked else None,
            )
        err_console.print(f"wrote {shown(path)}")
    if args.once:
        from sqa_nas.dashboard.snapshot import snapshot

        console.print(snapshot(view, title=title, axes=axes, picked=picked))
    elif picked and args.json != "-":
        console.print(f"{picked[0]}: trial #{picked[1].number}")
    return 0


def _output(flag: str, path: str, study: str, suffix: str) -> str:
    """Where `flag` writes: `path` (for a PNG with ".png" added when it has no suffix, as
    write_png does), or ``path/STUDY<suffix>`` when `path` is a folder; refused before the
    study is read when it could not be written."""
    out = Path(path)
    if out.is_dir():
        out /= (re.sub(r"[^A-Za-z0-9_.-]", "_", study).strip(".") or "study") + suffix
    elif suffix == ".png" and not out.suffix:
        out = out.with_suffix(suffix)
    why = unwritable(out)
    if why is not None:
        raise UserError(f"{flag} {path}: {why}")
    return str(out)


@contextlib.contextmanager
def _writing(flag: str, path: str):
    """An output that cannot be written is the user's to fix: say which and why."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write it ({exc.strerror or exc})") from None


def _axes(view, x: str | None, y: str | None) -> tuple[str, str]:
    for flag, name in (("--x", x), ("--y", y)):
        if name is not None and name not in view.axes:
            raise UserError(
                f"{flag} {name!r}: not a metric of this study; choose from {', '.join(view.axes)}"
            )
    default_x, default_y = view.default_axes()
    return x or default_x, y or default_y
