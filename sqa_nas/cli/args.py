"""Argument types shared by the commands: each parses one string or raises
`argparse.ArgumentTypeError`, which argparse prints as a one-line usage error (exit 2).
Paths are checked here too, before any work and without creating anything: an output file
that could not be written (`output_file`, `unwritable`) and a study storage that does not
exist (`existing_storage`, a `UserError`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqa_nas.errors import UserError

T = TypeVar("T")


def csv(kind: Callable[[str], T]) -> Callable[[str], list[T]]:
    """A comma-separated list of `kind` values (at least one), e.g. ``csv(int)("1, 2")``."""

    def parse(text: str) -> list[T]:
        try:
            items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}"
            ) from None
        if not items:
            raise argparse.ArgumentTypeError("expected at least one value")
        return items

    return parse


def whole(minimum: int, what: str = "a whole number") -> Callable[[str], int]:
    """A whole number >= `minimum`; `what` names it in the message (e.g. "a trial number")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive = whole(1)  # a whole number >= 1


def seconds(text: str) -> float:
    """A duration in seconds, finite and >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def unwritable(path: str | Path) -> str | None:
    """Why a file could not be written at `path` (its missing folders created), or None.
    Nothing is created: the nearest existing folder above it must be a writable folder."""
    path = Path(path)
    if path.is_dir():
        return "is a directory: give a file name"
    folder = path.parent
    while not folder.exists():  # a path under a regular file does not exist either
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write into {folder} (permission denied)"
    if path.exists() and not os.access(path, os.W_OK):
        return "permission denied"
    return None


def output_file(text: str) -> Path:
    """A file to write results to, checked before the work that makes them (`unwritable`)."""
    why = unwritable(text)
    if why is not None:
        raise argparse.ArgumentTypeError(f"{text}: {why}")
    return Path(text)


def existing_storage(url: str | None) -> None:
    """`UserError` unless the storage a command reads a study from (dashboard, export,
    confirm: `--storage`, None for the default) exists: a journal (``journal:PATH`` or a
    ``.log`` / ``.journal`` path) or ``sqlite:///PATH`` must be an existing file, so that
    reading creates no folder and no empty storage. Server URLs (``postgresql://``) are
    left to the storage to refuse; the default sqlite file is checked by `load_study`."""
    if url is None:
        return
    # Here, not at the top: bench and the GPU scripts import this module without Optuna.
    from sqa_nas.search.storage import check_storage

    check_storage(url)  # a malformed storage is named as such first
    path = None
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        path = Path(url.removeprefix("journal:"))
    elif url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
    if path is not None and not path.is_file():
        why = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(
            f"storage {url}: {path} {why} (a study is read from an existing storage; "
            "`sqa-nas search` creates one)"
        )
