"""The on-disk token cache shared by the embedded, text and hf kinds.

Layout, under `cache_root()` (``$SQA_NAS_CACHE``, else ``~/.cache/sqa_nas``)::

    corpus/<kind>-<key>/train.bin    raw tokens, dtype from meta.json (uint8 for bytes)
    corpus/<kind>-<key>/val.bin
    corpus/<kind>-<key>/meta.json    kind, vocab_size, dtype, fingerprint, sizes, sources

``<key>`` hashes what the build read (options, and for files their paths, sizes and mtimes),
so it is cheap to compute and changes when a source changes; it is local to the machine.
The fingerprint hashes what the build wrote and is equal on every machine that has the same
data (see `Fingerprint`). A build writes into a temporary sibling directory and renames it
into place, so a reader never sees half a cache and two processes building the same key at
once (Ray workers) both end up with one complete copy.

The cache is private to its user: every folder it creates is 0700 and every file 0600
(`private_dir`, `private_open`), so a build that reads a file only its owner (or root) may
read never leaves a copy of its bytes, or of its path in ``meta.json``, that others can read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TimeRemainingColumn,
)

from sqa_nas.data.split import Split, actual_fraction, describe_split
from sqa_nas.data.stream import TokenStream
from sqa_nas.errors import UserError

# Bump when the layout or the fingerprint definition changes; it is part of every key.
FORMAT = 1

__all__ = ["Split"]  # re-exported: the builders import it from here


def cache_root(explicit: str | Path | None = None) -> Path:
    """``explicit``, else ``$SQA_NAS_CACHE``, else ``~/.cache/sqa_nas``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("SQA_NAS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sqa_nas"


def private_dir(path: Path) -> None:
    """Create `path` and any missing parent as 0700 folders (`os.makedirs` would give the
    parents the umask's mode, typically 0755); folders already there are left as they are."""
    missing = []
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # another process (a Ray worker) made it meanwhile
            pass


def private_open(path: str, flags: int) -> int:
    """`open`'s opener for cache files: created 0600 (``open(p, "wb", opener=...)``)."""
    return os.open(path, flags, 0o600)


def cache_key(payload: Any) -> str:
    """16 hex digits of sha256 over ``payload`` as canonical JSON, with `FORMAT` mixed in."""
    text = json.dumps({"format": FORMAT, "payload": payload}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Fingerprint:
    """sha256 over a header line and one line per piece of data,
    ``"<split>\\t<name>\\t<sha256 of the piece's token bytes>\\n"``, in the order the pieces
    were added (sorted by name for file corpora). Names are relative (to the stdlib root, to
    the common parent of text files), so the fingerprint does not depend on where the files
    live, only on what they hold and which split they fell into."""

    def __init__(self, header: str) -> None:
        self._hash = hashlib.sha256(f"sqa-nas data v{FORMAT} {header}\n".encode())

    def add(self, split: Split, name: str, digest: str) -> None:
        """Mix in one piece: its split, its relative name and the sha256 of its token bytes."""
        self._hash.update(f"{split}\t{name}\t{digest}\n".encode())

    def hexdigest(self) -> str:
        """The fingerprint so far, as 64 hex digits."""
        return self._hash.hexdigest()


class CorpusWriter:
    """Appends pieces (files, documents) of tokens to ``train.bin`` / ``val.bin`` in
    ``directory``, with ``separator`` between consecutive pieces of a split, and fingerprints
    them. Use as a context manager (it closes the files); `finish` writes ``meta.json``."""

    def __init__(self, directory: Path, *, dtype: str, separator: int | None) -> None:
        self.directory = directory
        self.dtype = np.dtype(dtype)
        self.separator = separator
        self.fingerprint = Fingerprint(f"dtype={self.dtype.name} separator={separator}")
        self.tokens = {"train": 0, "val": 0}
        self.documents = {"train": 0, "val": 0}
        self._files: dict[str, BinaryIO] = {}

    def __enter__(self) -> CorpusWriter:
        self._files = {
            s: open(self.directory / f"{s}.bin", "wb", opener=private_open)
            for s in ("train", "val")
        }
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self._files.values():
            f.close()

    def add(self, split: Split, name: str, tokens: np.ndarray | list[int]) -> None:
        """Append `tokens` as one piece of `split` (after a separator when the split already has
        a piece and a separator is set) and add the piece to the fingerprint."""
        data = np.ascontiguousarray(tokens, dtype=self.dtype).tobytes()
        if self.documents[split] and self.separator is not None:
            self._files[split].write(np.array([self.separator], self.dtype).tobytes())
            self.tokens[split] += 1
        self._files[split].write(data)
        self.tokens[split] += len(data) // self.dtype.itemsize
        self.documents[split] += 1
        self.fingerprint.add(split, name, hashlib.sha256(data).hexdigest())

    def finish(self, meta: dict[str, Any]) -> None:
        """Write ``meta.json``: ``meta`` plus dtype, separator, sizes (``tokens`` and
        ``documents`` per split, ``val_fraction_actual``: validation's share of all tokens,
        separators included, to 4 places) and the fingerprint."""
        meta = {
            **meta,
            "dtype": self.dtype.name,
            "separator": self.separator,
            "tokens": self.tokens,
            "documents": self.documents,
            "val_fraction_actual": actual_fraction(self.tokens),
            "fingerprint": self.fingerprint.hexdigest(),
        }
        with open(self.directory / "meta.json", "w", opener=private_open) as f:
            f.write(json.dumps(meta, indent=2) + "\n")


def cached_corpus(directory: Path, build: Callable[[Path], None]) -> TokenStream:
    """The corpus in ``directory``, first built by ``build(tmp_dir)`` if it is not there.
    ``build`` must fill ``tmp_dir`` with a `CorpusWriter`."""
    if not (directory / "meta.json").exists():
        writable_folder(directory)
        tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        private_dir(tmp.parent)
        tmp.mkdir(mode=0o700)
        try:
            build(tmp)
            try:
                os.replace(tmp, directory)
            except OSError:
                if not (directory / "meta.json").exists():  # not another process's win
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        corpus = open_corpus(directory)
        Console(stderr=True, soft_wrap=True, highlight=False).print(
            f"{describe_split(corpus.meta)}; built in {directory}", style="dim", markup=False
        )
        return corpus
    return open_corpus(directory)


def writable_folder(directory: Path) -> None:
    """`UserError` naming the folder when `directory` cannot be created in the cache: the
    nearest part of it that exists must be a folder this process may write in."""
    there = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if there is not None and not (there.is_dir() and os.access(there, os.W_OK | os.X_OK)):
        raise UserError(
            f"cannot build the data cache in {there}: it is not a writable folder (make it "
            "writable, or set SQA_NAS_CACHE to a writable folder)"
        )


def open_corpus(directory: Path) -> TokenStream:
    """A built cache directory as memmaps; instant whatever the size."""
    meta = json.loads((directory / "meta.json").read_text())
    meta["cache_dir"] = str(directory)
    return TokenStream(
        train=memmap(directory / "train.bin", meta["dtype"]),
        val=memmap(directory / "val.bin", meta["dtype"]),
        vocab_size=meta["vocab_size"],
        meta=meta,
    )


def memmap(path: Path, dtype: str | np.dtype) -> np.ndarray:
    """``path`` as a read-only 1-D array of ``dtype``."""
    # numpy refuses to map an empty file; an empty split then fails later with a clear error.
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


@contextmanager
def progress(
    description: str, total: int, *, unit: Literal["bytes", "documents"] = "bytes"
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``. Hidden for byte jobs under
    4 MiB, which finish before a bar could be read."""
    counter = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        counter,
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=unit == "bytes" and total < 4 * 2**20,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
