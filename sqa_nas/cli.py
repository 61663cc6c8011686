"""`sqa-nas` / `python cli.py`: the command line. Parses arguments and calls the library.

Every command reports user errors (`UserError`) as one line on stderr and exits with code 2;
argparse does the same for malformed arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rich.console import Console
from rich.markup import escape

from sqa_nas.errors import UserError

# (command, module defining add_<command>_arguments(parser) and run_<command>_command(args)
# -> exit code, help). Modules import their heavy dependencies inside run_*, so --help is fast.
COMMANDS = [
    ("variants", "sqa_nas.cli", "list attention variants and kernel backends on this machine"),
    ("bench", "sqa_nas.bench", "time attention variants (correctness check first)"),
    ("dashboard", "sqa_nas.dashboard.cli",
     "Pareto fronts of a study: live terminal app, or --once / --png / --json"),
    ("export", "sqa_nas.export.cli", "write a trial as standalone PyTorch (or HF) model code"),
    ("space", "sqa_nas.search.cli", "validate a search space YAML and describe what it holds"),
    ("search", "sqa_nas.search.cli", "search per-layer attention allocations (Optuna)"),
]

# Logs and pipes get wide tables; terminals use their own width.
console = Console(highlight=False, log_path=False,
                  width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)  # one line per error


def csv(kind):
    def parse(text: str):
        try:
            items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}") from None
        if not items:
            raise argparse.ArgumentTypeError("expected at least one value")
        return items
    return parse


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def seconds(text: str) -> float:
    """A duration in seconds, >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


# ---------------------------------------------------------------------------------- variants
def add_variants_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-heads", type=positive, default=16,
                   help="reference head count H used to show head numbers (default 16)")


def run_variants_command(args) -> int:
    from rich.table import Table

    from sqa_nas.registry import list_backends, list_variants

    table = Table(title=f"Attention variants (H = {args.n_heads})")
    for col in ("variant", "H_q", "H_kv", "pattern", "attention FLOPs vs MHA", "what"):
        table.add_column(col)
    for v in list_variants():
        hq, hkv = v.heads(args.n_heads)
        table.add_row(v.name, f"{v.q} = {hq}", f"{v.kv} = {hkv}", v.pattern,
                      f"{max(hq, hkv) / args.n_heads:.2f}x", v.description)
    console.print(table)
    backends = Table(title="Kernel backends on this machine")
    for col in ("backend", "available", "what / why not"):
        backends.add_column(col)
    for b in list_backends():
        why_not = b.availability()
        backends.add_row(b.name, "[green]yes[/]" if why_not is None else "[red]no[/]",
                         b.description if why_not is None else why_not)
    console.print(backends)
    return 0


# -------------------------------------------------------------------------------------- main
def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: only the chosen command's module is imported (the others may
    import torch), so `sqa-nas --help` and a mistyped command answer at once. Without
    `argv`, every command is complete (for documentation and tests)."""
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    parser = argparse.ArgumentParser(
        prog="sqa-nas", description="Search and benchmark Sparse Query Attention architectures.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if chosen is not None and name != chosen:
            continue
        mod = sys.modules[__name__] if module == __name__ else importlib.import_module(module)
        key = name.replace("-", "_")
        getattr(mod, f"add_{key}_arguments")(p)
        p.set_defaults(run=getattr(mod, f"run_{key}_command"))
    return parser


def guarded(run) -> int:
    """Run a command (`run()` -> exit status or None): a UserError is printed without a
    traceback and gives 2, Ctrl-C gives 130. Every command and experiment script uses it."""
    try:
        return run() or 0
    except UserError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return guarded(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
