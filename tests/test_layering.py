"""The house's rules, read from the code's imports (docs/architecture.md draws them):
every room imports only rooms on lower floors, the library never imports its command line,
and no module of the library is longer than a reader can hold (450 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Room (a folder or top-level module of sqa_nas/; kernels/ installs as sqa_nas.kernels) ->
# floor. A room may import only rooms on a lower floor.
FLOORS = {
    "sqa_nas": 0,
    "errors": 0,
    "machine": 0,
    "compiling": 0,
    "gpu_share": 0,  # file locks around a GPU: used by search/trial.py, imports nothing of ours
    "stats": 0,  # small-sample intervals: used by throughput, search and experiments
    "printable": 0,  # study text made safe to show: dashboard, export and the CLI's errors
    "progress": 0,  # rate, ETA and a rich bar (plain lines off a terminal): bench, search, CLI
    "attention": 1,
    "data": 1,
    "timing": 1,
    "kernels": 2,
    "registry": 3,
    "layer": 4,
    "testing": 4,
    "model": 5,
    "analytics": 6,
    "train": 6,
    "throughput": 6.5,  # times train's TrainStep; the search and experiments read it
    "checkpoint": 6.5,  # a stopped run's file: stores train's TrainState; the search reads it
    "bench": 7,
    "search": 7,
    "dashboard": 8,
    "export": 8,
    "convert": 8.5,  # rewrites trained models' heads; writes them through export
    "cli": 9,
    "__main__": 10,  # `python -m sqa_nas`: the entry script, like cli.py
}
MAX_LINES = 450


def library_files() -> list[tuple[Path, list[str]]]:
    out = []
    for top in ("sqa_nas", "kernels"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[0] == "kernels":
                parts = ["sqa_nas", *parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append((path, parts))
    return out


def room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "sqa_nas":
        return None
    return parts[1] if len(parts) > 1 else "sqa_nas"


def imported_rooms(path: Path, parts: list[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside the file's own package
                package = parts if path.name == "__init__.py" else parts[:-1]
                names = [".".join(package[: len(package) - node.level + 1])]
            else:
                names = [node.module or ""]
        else:
            continue
        found |= {r for r in map(room, names) if r}
    return found


FILES = library_files()


@pytest.mark.parametrize("path,parts", FILES, ids=[str(p.relative_to(ROOT)) for p, _ in FILES])
def test_imports_go_down_only(path, parts):
    me = room(".".join(parts))
    assert me in FLOORS, f"{path}: room {me!r} has no floor in FLOORS (add it, with a reason)"
    upward = sorted(
        r for r in imported_rooms(path, parts) - {me} if FLOORS.get(r, 99) >= FLOORS[me]
    )
    assert not upward, f"{path} (floor {FLOORS[me]}) imports {upward}: not below it"


def test_the_rule_reads_real_imports():
    """The checker sees what a file imports (a checker that found nothing would pass all)."""
    layer = next((p, parts) for p, parts in FILES if parts == ["sqa_nas", "layer"])
    assert {"attention", "kernels", "registry"} <= imported_rooms(*layer)
    cli = next((p, parts) for p, parts in FILES if parts == ["sqa_nas", "cli", "search"])
    assert "search" in imported_rooms(*cli)


@pytest.mark.parametrize("path", [p for p, _ in FILES], ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_short(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path} has {n} lines (at most {MAX_LINES}): split it by concept"
