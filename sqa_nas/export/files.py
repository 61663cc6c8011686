"""Writing an export's files: each one whole or not at all, into a folder created if needed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sqa_nas.errors import UserError


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) beside `path` and rename it onto `path`, so a failure never
    leaves half a file and a symlink in its place is replaced, never followed. `OSError` when
    the folder cannot be written; the partial file is removed."""
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        part.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def write_files(out_dir: Path, files: dict[str, str | bytes], *, force: bool = False) -> None:
    """Write `files` (name -> text or bytes) into `out_dir`, created if needed. `UserError`,
    with nothing written, when the folder already holds one of them and not `force`;
    `UserError` when the folder cannot be written (read-only, under a file), removing what
    this call created. Each file is written by `write_atomically`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder")
    taken = [name for name in files if os.path.lexists(out_dir / name)]
    if taken and not force:
        raise UserError(
            f"--out {out_dir} already holds {', '.join(taken)}: pass --force to replace "
            f"{'it' if len(taken) == 1 else 'them'}"
        )
    created = out_dir  # the topmost folder this call creates, removed again on failure
    while not created.parent.exists() and created.parent != created:
        created = created.parent
    made = not created.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            write_atomically(out_dir / name, data)
    except OSError as exc:
        if made:
            shutil.rmtree(created, ignore_errors=True)
        raise UserError(f"--out {out_dir}: cannot write there ({exc.strerror or exc})") from None
