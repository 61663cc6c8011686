"""A stopped run in one file: the model's weights, its `TrainState` and what it was.

`save` writes ``{"format": 1, "model": state_dict, "state": {...}, "meta": {...}}`` with
`torch.save` to a temporary file beside the target, fsyncs it and renames it over the
target, so a reader sees the old file or the new one, never half of one, and a crash after
`save` returns loses nothing. `load` reads it back onto any device (a file written on a GPU
loads on the CPU and the other way round) with ``weights_only=True``: the file holds only
tensors, dicts, lists, tuples, numbers, strings and None, and torch's restricted unpickler
refuses anything else, so loading a file from elsewhere executes no code from it. What
continuing needs is in `sqa_nas.train.TrainState`; ``meta`` is the caller's (trial number,
rung, seed, model config ...), any JSON-able dict. A stop and a resume, in outline:

    result = train(model, data, cfg, device, seed, stop_step=k)
    save(path, model, result.state, {"trial": 3, "rung": 0})
    weights, state, meta = load(path, device)  # later, on any worker
    fresh = build_model(config)
    fresh.load_state_dict(weights)
    train(fresh, data, cfg, device, seed, resume=state)  # as if it had never stopped
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sqa_nas.train import TrainState

FORMAT = 1  # bump when the layout of the file changes


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or not one this version writes; the message
    names the file and what is wrong with it."""


def save(
    path: str | Path, model: torch.nn.Module, state: TrainState, meta: dict[str, Any]
) -> Path:
    """Write `model`'s weights (each in its own dtype), `state` and `meta` (JSON-able) to
    `path` atomically, creating its folder; replaces an older file there. Returns the
    path. `TypeError` when `meta` is not JSON-able."""
    path = Path(path)
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint meta must be JSON-able: {exc}") from None
    payload = {
        "format": FORMAT,
        "model": model.state_dict(),
        "state": {
            "step": state.step,
            "tokens": state.tokens,
            "curve": [list(point) for point in state.curve],
            "optimizer": state.optimizer,
            "seed": state.seed,
            "planned_steps": state.planned_steps,
        },
        "meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)  # the rename itself survives a crash
    return path


def load(
    path: str | Path, device: str | torch.device
) -> tuple[dict[str, torch.Tensor], TrainState, dict[str, Any]]:
    """(model state_dict, `TrainState`, meta) from a file `save` wrote, every tensor on
    `device`. `CheckpointError` when the file is missing, truncated, not a torch file,
    holds anything but plain data and tensors, or is another format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path}: unreadable (truncated, not written by torch.save, or "
            f"holding objects other than tensors and plain data): {first}"
        ) from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"checkpoint {path}: not an sqa-nas checkpoint (no 'format')")
    if payload["format"] != FORMAT:
        raise CheckpointError(
            f"checkpoint {path}: format {payload['format']!r}; this version reads {FORMAT}"
        )
    try:
        s = payload["state"]
        state = TrainState(
            step=int(s["step"]),
            tokens=int(s["tokens"]),
            curve=[(int(a), int(b), float(c)) for a, b, c in s["curve"]],
            optimizer=s["optimizer"],
            seed=int(s["seed"]),
            planned_steps=int(s["planned_steps"]),
        )
        return payload["model"], state, payload["meta"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: its state is incomplete or malformed "
            f"({type(exc).__name__}: {exc})"
        ) from None


def delete(path: str | Path) -> None:
    """Remove the checkpoint at `path`; nothing happens when it is already gone."""
    Path(path).unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    # POSIX only: a folder cannot be opened for fsync on Windows, where rename is durable
    # enough for a checkpoint that can be retrained.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
