"""The ``tokens`` kind: pre-tokenized memmaps in nanoGPT's layout, used in place.

A directory with ``train.bin`` and ``val.bin`` (raw tokens of the spec's ``dtype``, what
nanoGPT's ``prepare.py`` scripts write) or ``train.npy`` and ``val.npy`` (1-D integer arrays).

On first use each file is read once to hash it and find its largest token, so a token id at
or above ``vocab_size`` is refused here rather than surfacing as a CUDA device-side assert in
the embedding. The result is remembered in ``<cache root>/scans/`` by path, size and mtime,
so later loads only map the files. Fingerprint: `cache.Fingerprint` with one piece per split,
named ``train`` / ``val``, over the token bytes (so a ``.bin`` and an ``.npy`` holding the same
tokens in the same dtype share it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from sqa_nas.data.cache import (
    Fingerprint,
    Split,
    cache_key,
    memmap,
    private_dir,
    private_open,
    progress,
)
from sqa_nas.data.spec import TokensSpec
from sqa_nas.data.stream import TokenStream
from sqa_nas.errors import UserError

_CHUNK = 2**24  # tokens per read while scanning


def load_tokens(spec: TokensSpec, root: Path) -> TokenStream:
    """A `TokenStream` over the ``train`` / ``val`` files in `spec.path`, mapped in place.

    Each file is scanned once (sha256, token range; the scan is cached under `root`); a
    token id outside [0, vocab_size) is a `UserError`, as is a missing directory. vocab_size
    is the spec's, else the ``vocab_size`` of the directory's ``meta.json`` (``meta.pkl`` is
    never unpickled).
    """
    directory = Path(spec.path).expanduser()
    if not directory.is_dir():
        raise UserError(f"tokens data: no such directory {spec.path!r}")
    splits: tuple[Split, Split] = ("train", "val")
    arrays = {split: _open(directory, split, spec.dtype) for split in splits}
    vocab_size = spec.vocab_size or _meta_vocab_size(directory)
    fingerprint = Fingerprint(f"dtype={arrays['train'].dtype.name} separator=None")
    for split, array in arrays.items():
        scan = _scan(directory / f"{split}{_suffix(directory)}", array, root)
        if not 0 <= scan["min"] <= scan["max"] < vocab_size:
            raise UserError(
                f"tokens data: {split} holds token ids {scan['min']} .. "
                f"{scan['max']}; with vocab_size {vocab_size} they must lie in "
                f"0 .. {vocab_size - 1}"
            )
        fingerprint.add(split, split, scan["sha256"])
    meta = {
        "kind": "tokens",
        "path": str(directory.resolve()),
        "vocab_size": vocab_size,
        "dtype": arrays["train"].dtype.name,
        "tokens": {split: len(a) for split, a in arrays.items()},
        "fingerprint": fingerprint.hexdigest(),
    }
    return TokenStream(train=arrays["train"], val=arrays["val"], vocab_size=vocab_size, meta=meta)


def _suffix(directory: Path) -> str:
    return ".bin" if (directory / "train.bin").exists() else ".npy"


def _open(directory: Path, split: str, dtype: str) -> np.ndarray:
    """``split`` of the token directory as a read-only 1-D integer array."""
    path = directory / f"{split}{_suffix(directory)}"
    if not path.exists():  # the folder's count, not its names: they may not be ours to show
        found = sum(1 for _ in directory.iterdir())
        raise UserError(
            f"tokens data: expected train.bin and val.bin (or train.npy and val.npy) in "
            f"{directory}; it has no {path.name} ({found} entr{'y' if found == 1 else 'ies'})"
        )
    if path.suffix == ".bin":
        itemsize = np.dtype(dtype).itemsize
        if path.stat().st_size % itemsize:
            raise UserError(
                f"tokens data: {path} holds {path.stat().st_size} bytes, not a "
                f"whole number of {dtype} tokens; is dtype right?"
            )
        return memmap(path, dtype)
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.ndim != 1 or array.dtype.kind not in "ui":
        raise UserError(
            f"tokens data: {path} holds a {array.dtype} array of shape "
            f"{array.shape}; expected a 1-D array of integer token ids"
        )
    return array


def _meta_vocab_size(directory: Path) -> int:
    meta = directory / "meta.json"
    if meta.exists():
        vocab_size = json.loads(meta.read_text()).get("vocab_size")
        if isinstance(vocab_size, int) and vocab_size > 0:
            return vocab_size
        raise UserError(f"tokens data: {meta} has no positive integer 'vocab_size'")
    hint = (
        " (meta.pkl is not read: unpickling a file runs its code)"
        if (directory / "meta.pkl").exists()
        else ""
    )
    raise UserError(
        f'tokens data: set vocab_size in the spec or write {{"vocab_size": N}} to {meta}{hint}'
    )


def _scan(path: Path, array: np.ndarray, root: Path) -> dict[str, Any]:
    """sha256 of the token bytes and the smallest and largest token of ``array`` (read from
    ``path``), remembered in ``root/scans`` while the file's size and mtime stay the same."""
    stat = path.stat()
    key = cache_key([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    memo = root / "scans" / f"{key}.json"
    if memo.exists():
        return json.loads(memo.read_text())
    digest, smallest, largest = hashlib.sha256(), None, -1
    with progress(f"scanning {path.name}", array.nbytes) as advance:
        for start in range(0, len(array), _CHUNK):
            chunk = np.ascontiguousarray(array[start : start + _CHUNK])
            digest.update(chunk.tobytes())
            low = int(chunk.min())
            smallest = low if smallest is None else min(smallest, low)
            largest = max(largest, int(chunk.max()))
            advance(chunk.nbytes)
    # An empty file reads as min 0, max -1 (no id fits any vocabulary).
    scan = {
        "sha256": digest.hexdigest(),
        "min": 0 if smallest is None else smallest,
        "max": largest,
    }
    try:
        private_dir(memo.parent)
        tmp = memo.with_name(f"{memo.name}.{os.getpid()}")
        with open(tmp, "w", opener=private_open) as f:
            f.write(json.dumps(scan))
        os.replace(tmp, memo)  # atomic: concurrent loaders never read half a memo
    except OSError:  # a read-only cache: the files are read where they are, scanned again
        pass
    return scan
