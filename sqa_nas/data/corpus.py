"""Byte-level corpora (vocab 256) from files: the embedded one and the ``text`` kind.

**Embedded**: the ``.py`` files of the standard library (``sysconfig`` path ``stdlib``,
which includes ``pydoc_data/topics.py``, the long prose of ``help()``), and with
``include_site_packages`` every ``.py`` under ``purelib`` / ``platlib``. It skips:

- files that are not valid UTF-8 (the stdlib's encoding tests ship some on purpose);
- files over `MAX_FILE_BYTES` (2 MiB): generated tables, not code anyone writes;
- ``__pycache__``, and ``site-packages`` / ``dist-packages`` inside the stdlib (they come in
  only with ``include_site_packages``, under their own root);
- ``_sysconfigdata*.py``: generated at build time with the install's paths, so it would make
  two identical Pythons installed in different places disagree.

Skipped names are listed in ``meta["skipped"]``. **Text**: the files, globs and directories
given. A file named or matched by a glob must be UTF-8 (a binary one is an error, not a silent
skip). A directory brings every file under it (recursively, symbolic links followed, each
directory once, so a link loop ends; names starting with ``.`` left out, as ``.git``), and
there a *binary* file (a NUL byte in its first 8 KiB, or bytes that are not UTF-8: images,
archives, Latin-1 text) is skipped and counted (``meta["skipped"]["binary"]``, which the
search's data line shows). A file reached twice (a link and its target) counts once.

Split (`split.plan_split`, sizes in bytes of the files kept, skipped ones not counted): a
file goes to validation when the first 8 bytes of sha256(name), read as a fraction of 2^64,
fall below ``val_fraction``, where ``name`` is the path relative to its root
(``stdlib/json/decoder.py``; for text files, relative to their common parent); should the hash
leave a split empty, the file with the smallest hash goes to validation (largest to
training). That split (``split: by_file`` in the meta) is kept when validation holds
``val_fraction`` of the bytes to within 1 percentage point. Otherwise (few or unequal files,
and always for a single file) files in hash order go whole to validation while they fit, and
the next one is cut: its tail is validation, to the byte (``split: fill``; exact rule in
`split`). Either way the split is the same on every machine with the same files, and
``val_fraction_actual`` in the meta is the share of tokens validation got.

Within a split, files are joined in name order with byte 0xFF between them: 0xFF never occurs
in UTF-8 (RFC 3629), so it marks file boundaries without colliding with any text.
"""

from __future__ import annotations

import glob
import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sqa_nas.data.cache import CorpusWriter, cache_key, cached_corpus, progress
from sqa_nas.data.spec import EmbeddedSpec, TextSpec
from sqa_nas.data.split import SPLIT_RULE, plan_split
from sqa_nas.data.stream import TokenStream
from sqa_nas.errors import UserError

MAX_FILE_BYTES = 2 * 2**20
SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB marks a binary file (as git decides)
SEPARATOR = 0xFF
_SKIPPED_DIRS = {"__pycache__", "site-packages", "dist-packages"}


@dataclass(frozen=True)
class SourceFile:
    """One file of a file corpus, with the size and mtime that key its cached tokens."""

    name: str  # relative to its root; decides the split and enters the fingerprint
    path: Path
    size: int
    mtime_ns: int
    found: bool = False  # found in a directory: skipped when binary, not an error


def load_embedded(spec: EmbeddedSpec, root: Path) -> TokenStream:
    """The embedded corpus, built into ``root/corpus`` on first use."""
    roots = {"stdlib": Path(sysconfig.get_paths()["stdlib"])}
    if spec.include_site_packages:
        for label in ("purelib", "platlib"):
            path = Path(sysconfig.get_paths()[label])
            if path.resolve() not in {p.resolve() for p in roots.values()}:
                roots[label] = path
    meta = {
        "kind": "embedded",
        "python": platform.python_version(),
        "sources": {label: str(path) for label, path in roots.items()},
    }
    return load_files(
        python_files(roots), val_fraction=spec.val_fraction, root=root, meta=meta, strict=False
    )


def load_text(spec: TextSpec, root: Path) -> TokenStream:
    """Local text files as bytes, built into ``root/corpus`` on first use."""
    files = text_files(spec.paths)
    meta = {"kind": "text", "sources": sorted(str(f.path) for f in files)}
    return load_files(files, val_fraction=spec.val_fraction, root=root, meta=meta, strict=True)


def python_files(roots: dict[str, Path]) -> list[SourceFile]:
    """Every ``.py`` file under ``roots`` (label -> directory), named ``label/relative/path``
    and sorted by name, minus the directories and files the module docstring lists."""
    files = []
    for label, top in roots.items():
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if d not in _SKIPPED_DIRS]
            for filename in filenames:
                if filename.endswith(".py") and not filename.startswith("_sysconfigdata"):
                    path = Path(dirpath, filename)
                    files.append(_source(f"{label}/{path.relative_to(top).as_posix()}", path))
    return sorted(files, key=lambda f: f.name)


def text_files(patterns: list[str]) -> list[SourceFile]:
    """The files that ``patterns`` (paths, globs or directories) name, each named relative to
    the common parent of them all (just the file name for a single file), in name order.
    Files found under a directory are marked ``found`` (skipped when binary)."""
    paths: set[Path] = set()  # named, or matched by a glob
    found: set[Path] = set()  # under a directory given
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if any(c in expanded for c in "*?["):  # a glob pattern
            matched = [Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file()]
            if not matched:
                raise UserError(f"text data: pattern {pattern!r} matches no file")
            paths.update(p.resolve() for p in matched)
        elif Path(expanded).is_dir():
            inside = directory_files(Path(expanded))
            if not inside:
                raise UserError(f"text data: directory {pattern!r} holds no file")
            found.update(inside)
        elif Path(expanded).is_file():
            paths.add(Path(expanded).resolve())
        else:
            raise UserError(f"text data: no such file {pattern!r}")
    found -= paths  # a file also named is held to the named files' rule
    everything = paths | found
    parent = (
        Path(os.path.commonpath(everything))
        if len(everything) > 1
        else next(iter(everything)).parent
    )
    return sorted(
        (_source(p.relative_to(parent).as_posix(), p, found=p in found) for p in everything),
        key=lambda f: f.name,
    )


def directory_files(top: Path) -> set[Path]:
    """Every regular file under ``top``, resolved: recursively, following symbolic links to
    directories but entering each directory once (a link loop, or two links to one place,
    ends there), leaving out names that start with ``.``; an unreadable directory is
    passed over, as ``find`` does after saying so."""
    files: set[Path] = set()
    seen: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        here = Path(dirpath).resolve()
        if here in seen:
            dirnames[:] = []
            continue
        seen.add(here)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            path = Path(dirpath, filename)
            if not filename.startswith(".") and path.is_file():  # not a dangling link
                files.add(path.resolve())
    return files


def _source(name: str, path: Path, *, found: bool = False) -> SourceFile:
    stat = path.stat()
    return SourceFile(
        name=name, path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns, found=found
    )


def load_files(
    files: list[SourceFile], *, val_fraction: float, root: Path, meta: dict[str, Any], strict: bool
) -> TokenStream:
    """Build (once) and open the byte corpus of ``files``. ``strict``: a file that is not
    UTF-8 is an error (text kind) instead of a skip (embedded kind, which also skips files
    over `MAX_FILE_BYTES`)."""
    key = cache_key(
        {
            "kind": meta["kind"],
            "val_fraction": val_fraction,
            "split_rule": SPLIT_RULE,
            "strict": strict,
            # ("found",) only where it is: the keys of corpora built before stay as they were
            "files": [
                (f.name, str(f.path), f.size, f.mtime_ns) + (("found",) if f.found else ())
                for f in files
            ],
        }
    )
    meta = {**meta, "vocab_size": 256, "val_fraction": val_fraction}

    def build(directory: Path) -> None:
        skipped: dict[str, list[str]] = {"not_utf8": [], "over_2MiB": []}  # and "binary"
        sizes: dict[str, int] = {}  # the files kept, by name
        # Every file is read twice (page cache helps): the split needs the sizes of the files
        # kept, and which are kept is known only once each has been decoded.
        total = 2 * sum(f.size for f in files)
        with progress(f"building the {meta['kind']} corpus", total) as advance:
            for f in files:
                advance(f.size)
                reason = _skip_reason(f, strict)
                if reason:
                    skipped.setdefault(reason, []).append(f.name)
                else:
                    sizes[f.name] = f.size
            if files and not sizes:
                why = ", ".join(f"{len(v)} {k}" for k, v in skipped.items() if v)
                raise UserError(f"{meta['kind']} data: none of its files is text ({why})")
            plan = plan_split(sizes, val_fraction)
            with CorpusWriter(directory, dtype="uint8", separator=SEPARATOR) as writer:
                for f in files:
                    advance(f.size)
                    if f.name not in sizes:
                        continue
                    data = np.frombuffer(_read(f), np.uint8)
                    where = plan.where[f.name]
                    if isinstance(where, int):  # cut: the head trains, the tail validates
                        writer.add("train", f"{f.name}[:{where}]", data[:where])
                        writer.add("val", f"{f.name}[{where}:]", data[where:])
                    else:
                        writer.add(where, f.name, data)
        writer.finish({**meta, "split": plan.rule, "skipped": skipped})

    return cached_corpus(root / "corpus" / f"{meta['kind']}-{key}", build)


def _skip_reason(f: SourceFile, strict: bool) -> str | None:
    """Why the build leaves ``f`` out (``over_2MiB``, ``not_utf8``, ``binary``: a file found
    in a directory with a NUL byte in its first `SNIFF_BYTES` or not UTF-8), or None to keep
    it; ``strict``: a file that is not UTF-8 raises `UserError` instead, unless ``found``."""
    if not strict and f.size > MAX_FILE_BYTES:
        return "over_2MiB"
    data = _read(f)
    if f.found and 0 in data[:SNIFF_BYTES]:
        return "binary"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if f.found:
            return "binary"
        if strict:
            raise UserError(
                f"text data: {f.path} is not UTF-8 text (byte {exc.start}: {exc.reason})"
            ) from None
        return "not_utf8"
    return None


def _read(f: SourceFile) -> bytes:
    """The bytes of ``f``, which must still have the size the cache key and the split saw."""
    data = f.path.read_bytes()
    if len(data) != f.size:
        raise UserError(f"{f.path} changed while the corpus was being built; run again")
    return data
