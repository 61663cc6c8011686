"""`sqa-nas` / `python cli.py` / `python -m sqa_nas`: the command line, the top floor of the
package. One module per command (``sqa_nas/cli/<command>.py``) parses its arguments and calls
the library; nothing outside this package imports it.

Every command reports user errors (`UserError`) as one line on stderr and exits with code 2;
argparse does the same for malformed arguments. User-given text (a path, a name, an error
message) goes to the terminal through `shown`: verbatim, never read as rich markup, and with
control characters made visible, so no file name can style, break or drive the terminal.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from sqa_nas import __version__
from sqa_nas.errors import UserError
from sqa_nas.printable import printable

# (command, help). The module sqa_nas.cli.<command> defines add_<command>_arguments(parser)
# and run_<command>_command(args) -> exit code. Only the chosen command's module is imported
# (most import torch), so `sqa-nas --help` and a mistyped command answer at once.
COMMANDS = [
    ("variants", "list attention variants and kernel backends on this machine"),
    ("bench", "time attention variants (correctness check first)"),
    ("dashboard", "Pareto fronts of a study: live terminal app, or --once / --png / --json"),
    ("export", "write a trial as standalone PyTorch (or HF) model code"),
    ("space", "validate a search space YAML and describe what it holds"),
    ("search", "search per-layer attention allocations (Optuna)"),
    ("confirm", "retrain a study's Pareto front with fresh seeds: which members stay on it"),
    ("convert", "rewrite a trained MHA/GQA model (HF Llama, export, checkpoint) as SQA"),
    ("finetune", "continue training an exported (converted) model; loss curve recorded"),
]

# Logs and pipes get wide tables; terminals use their own width. No emoji codes: a path
# such as a:smile:b.yaml prints as itself.
console = Console(
    highlight=False, log_path=False, emoji=False, width=None if sys.stdout.isatty() else 120
)
err_console = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)  # one line


def shown(text: object) -> str:
    """User-given text (a path, a study name) to put into a rich markup string: `printable`,
    and with its markup escaped, so ``[/b]x.yaml`` prints as itself wherever it is put."""
    body = printable(text)
    head = body.rstrip("\\")
    if head == body:
        return escape(body)
    # Rich halves backslashes just before a tag and keeps them elsewhere: end trailing
    # backslashes with an empty tag of our own, so they read the same in any context.
    return escape(head) + "\\" * 2 * (len(body) - len(head)) + "[dim][/dim]"


def guarded(run: Callable[[], int | None]) -> int:
    """Run a command (`run()` -> exit status or None): a UserError is printed without a
    traceback, verbatim on one line (`printable`), and gives 2; Ctrl-C gives 130. Every
    command and experiment script uses it."""
    try:
        return run() or 0
    except UserError as exc:
        err_console.print(Text.assemble(("error:", "red"), " ", printable(exc)))
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block), control characters in the
    arguments made visible (exit code 2). A missing or unknown argument points to --help;
    a bad value ("argument --x: ...") says what is wrong with it."""

    def error(self, message: str) -> NoReturn:
        usage = "" if message.startswith("argument ") else f" (see {self.prog} --help)"
        self.exit(2, f"{self.prog}: error: {printable(message)}{usage}\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: only the chosen command's module is imported. Without `argv`,
    every command is complete (for documentation and tests)."""
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    parser = _Parser(
        prog="sqa-nas", description="Search and benchmark Sparse Query Attention architectures."
    )
    parser.add_argument("--version", action="version", version=f"sqa-nas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if chosen is not None and name != chosen:
            continue
        mod = importlib.import_module(f"{__name__}.{name}")
        getattr(mod, f"add_{name}_arguments")(p)
        p.set_defaults(run=getattr(mod, f"run_{name}_command"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: the process's arguments) and run the command; returns the exit
    status (0, 2 for a user error, 130 for Ctrl-C)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return guarded(lambda: args.run(args))
