"""What every experiment script shares: where results go and how they are named, the
command line a result records, the default device and dtype, writing a result (and the
partial file that keeps finished runs when a run is stopped), and showing progress
(`progress_bar`: done / total, rate, ETA).

It imports the benchmark and the machine header only, never the search (optuna): the GPU
scripts run where only torch is installed. The quality experiments' training helpers are
in `experiments.science`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from rich.console import Console

from sqa_nas.bench import write_json
from sqa_nas.machine import header_line, machine_info
from sqa_nas.progress import Bar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DOCS = ROOT / "docs"
SEARCH_SPACES = ROOT / "search_spaces"
T = TypeVar("T")


def device_slug(machine: dict) -> str:
    """'NVIDIA H200' -> 'h200', any CPU -> 'cpu': the suffix of result file names."""
    if machine.get("device_type") != "cuda":
        return "cpu"
    name = machine["device"].lower().removeprefix("nvidia ").strip()
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def default_device(device: str | None = None) -> str:
    """`device` when given, else "cuda" where a GPU is visible, else "cpu"."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: str, dtype: str | None = None) -> str:
    """`dtype` when given, else bfloat16 on a GPU and float32 on the CPU."""
    return dtype or ("bfloat16" if device.startswith("cuda") else "float32")


def command_line() -> str:
    """The command that runs this process again: ``python -m experiments.NAME ARGS`` for
    a script of this package, else ``python ARGV``."""
    script = Path(sys.argv[0])
    if script.suffix == ".py" and script.resolve().parent == HERE:
        return " ".join(["python", "-m", f"experiments.{script.stem}", *sys.argv[1:]])
    return " ".join(["python", *sys.argv])


def default_out(stem: str, device: str | None) -> Path:
    """experiments/results/<stem>_<gpu>.json, e.g. paper_table3_h200.json, for `device`
    (default: cuda when visible)."""
    device_ = torch.device(default_device(device))
    machine = {
        "device_type": device_.type,
        "device": torch.cuda.get_device_name(device_) if device_.type == "cuda" else "cpu",
    }
    return RESULTS / f"{stem}_{device_slug(machine)}.json"


def save_and_print(result: dict, out: Path, markdown: Callable[[dict], str]) -> int:
    """Write the results file, then print its machine header, its tables (`markdown` of
    the result) and where it went; returns the exit status 0."""
    write_json(out, result)
    print(header_line(result["machine"]))
    print(markdown(result))
    print(f"wrote {out} ({result['wall_s']:.0f} s)")
    return 0


def progress(line: str) -> None:
    """A benchmark's progress line, on stderr (stdout holds the tables)."""
    print(f"  {line}", file=sys.stderr, flush=True)


def progress_bar(total: int, unit: str = "runs") -> Bar:
    """A progress bar on stderr (stdout holds the tables) for `total` units of `unit` (a
    plural noun: "rows", "runs", "variants"): done / total, rate, elapsed and ETA; rich on a
    terminal, plain lines in a log (`sqa_nas.progress.Bar`)::

        with progress_bar(len(variants), "variants") as bar:
            for v in variants:
                bar.begin(v)  # v starts; the one before it is done
                ...
                bar.log(f"{v}: ...")  # a line above the bar
            bar.finish()

    A benchmark grid passes ``progress=bar.begin`` to `sqa_nas.bench.run_grid`, with
    ``total=sqa_nas.bench.grid_size(cells)``; a plain loop uses `tracked`."""
    return Bar(total, unit, console=Console(stderr=True, highlight=False))


def tracked(
    items: Sequence[T], unit: str = "runs", label: Callable[[T], str] = str
) -> Iterator[T]:
    """`items` one by one under a `progress_bar` (each shown by `label(item)` while it
    runs): ``for v in tracked(variants, "variants"):``. Lines printed to stderr meanwhile
    (`progress`) show above the bar."""
    with progress_bar(len(items), unit) as bar:
        for item in items:
            bar.begin(label(item))
            yield item
        bar.finish()


def write_result(
    name: str,
    payload: dict,
    out: Path | None = None,
    *,
    quiet: bool = False,
    machine: dict | None = None,
) -> Path:
    """Write `payload` with the machine header (this machine's unless `machine` is given:
    results joined from another machine's files) and the command to `out`, by default
    results/<name>_<gpu>.json; returns the path."""
    machine = machine or machine_info(default_device())
    path = write_json(
        out or RESULTS / f"{name}_{device_slug(machine)}.json",
        {"machine": machine, "command": command_line(), **payload},
    )
    if not quiet:
        print(f"wrote {path}")
    return path


def write_partial(name: str, payload: dict, out: Path | None = None) -> Path:
    """Finished runs survive a stop: the caller rewrites this file after every run, beside
    the result (``<out>.partial.json``, never over a finished result), and removes it once
    the result is written."""
    return write_result(
        name + "_partial",
        {**payload, "partial": True},
        out=out and out.with_suffix(".partial.json"),
        quiet=True,
    )
