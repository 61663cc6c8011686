"""How a corpus is divided into training and validation, and the line that reports it.

The pieces divided are the files of a file corpus (``embedded``, ``text``; sized in bytes) or
the documents of an ``hf`` dataset whose validation is carved out of ``train_split`` (sized in
tokens). Each piece has a name (a file's relative path; ``<train_split>/<index>`` for a
document) and a hash, `unit_hash`: the first 8 bytes of sha256(name) read as a fraction of
2^64. `plan_split` applies the first of two rules that holds:

1. **By name** (``split: by_file``, or ``by_document``): a piece goes to validation when its
   hash is below ``val_fraction``; should that leave a split empty, the piece with the
   smallest hash goes to validation (the largest to training). Kept when there are two pieces
   or more, each split holds at least one unit, and validation holds ``val_fraction`` of all
   units to within `TOLERANCE` (1 percentage point). While it holds, a piece's split depends
   on its own name alone: adding a file moves no other.
2. **Fill** (``split: fill``) otherwise: validation gets ``V = total - train`` units, where
   ``train = floor(total * (1 - val_fraction))``, clamped to ``[1, total - 1]`` when
   ``total >= 2`` (a unit at least on each side). Pieces in hash order (ties by name) go
   whole to validation while the running sum stays <= V; the first that does not fit is cut:
   its last ``V - sum`` units are validation and its head training (pieces ``name[:cut]`` and
   ``name[cut:]`` in the fingerprint; it trains whole when ``V - sum`` is 0); every later
   piece is training. Validation then holds V units, within ``1 / total`` of
   ``val_fraction``. A single piece always takes this rule: its last ``val_fraction`` is
   validation. The pieces wholly in validation are, as under rule 1, those of lowest hash.

Both rules read only names and sizes, so the split is the same on every machine with the same
data. The units counted leave out the separators between pieces (byte 0xFF, ``eos_token``);
``val_fraction_actual`` in a corpus's meta (`CorpusWriter.finish`) counts every token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# Part of every cache key whose build follows `plan_split`: bump when the rules change.
SPLIT_RULE = 2  # 1: by name only, however far from val_fraction
TOLERANCE = 0.01

Split = Literal["train", "val"]


def unit_hash(name: str) -> float:
    """The first 8 bytes of sha256(``name``) as a fraction of 2^64, in [0, 1)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def in_val(name: str, val_fraction: float) -> bool:
    """Whether piece ``name`` is validation under the by-name rule (before its fix-ups)."""
    return unit_hash(name) < val_fraction


@dataclass(frozen=True)
class SplitPlan:
    """Where each piece goes. ``where[name]``: ``"train"``, ``"val"``, or an int ``cut``: units
    ``[:cut]`` are training and ``[cut:]`` validation. ``rule``: ``by_file`` /
    ``by_document`` (rule 1 of the module docstring) or ``fill`` (rule 2)."""

    rule: str
    where: dict[str, Split | int]


def plan_split(
    sizes: Mapping[str, int], val_fraction: float, *, piece: Literal["file", "document"] = "file"
) -> SplitPlan:
    """The split of pieces ``sizes`` (name -> size in units) at ``val_fraction`` in (0, 1),
    by the rules of the module docstring; ``piece`` names rule 1 (``by_<piece>``)."""
    total = sum(sizes.values())
    hashes = {n: unit_hash(n) for n in sizes}
    order = sorted(sizes, key=lambda n: (hashes[n], n))  # ascending hash, ties by name
    by_name: dict[str, Split] = {n: "val" if hashes[n] < val_fraction else "train" for n in order}
    if len(order) > 1 and "val" not in by_name.values():
        by_name[order[0]] = "val"
    if len(order) > 1 and "train" not in by_name.values():
        by_name[order[-1]] = "train"
    val = sum(sizes[n] for n, s in by_name.items() if s == "val")
    if len(order) > 1 and 0 < val < total and abs(val / total - val_fraction) <= TOLERANCE:
        return SplitPlan(f"by_{piece}", dict(by_name))
    train = int(total * (1 - val_fraction))
    if total >= 2:
        train = min(max(train, 1), total - 1)
    room = total - train  # validation units still to place; -1 once a piece did not fit
    where: dict[str, Split | int] = {}
    for name in order:
        size = sizes[name]
        if 0 <= room and size <= room:
            where[name] = "val"
            room -= size
        elif 0 < room:  # the first piece that does not fit: its tail fills validation
            where[name] = size - room
            room = -1
        else:
            where[name] = "train"
            room = -1
    return SplitPlan("fill", where)


def actual_fraction(tokens: Mapping[str, int]) -> float:
    """Validation tokens / all tokens, rounded to 4 places (0.0 for an empty corpus).
    ``tokens``: ``{"train": n, "val": m}``, as in a corpus's meta."""
    total = tokens["train"] + tokens["val"]
    return round(tokens["val"] / total, 4) if total else 0.0


def describe_split(meta: Mapping[str, Any]) -> str:
    """One line on a dataset's split from its ``meta`` (`Dataset.meta`): kind, tokens, the
    validation share made and the one asked, how it was made, and the binary files a
    directory held, e.g. ``data: text, 1,234,567 tokens, validation 5.0% (asked 5.0%), split
    by file, one file cut, 2 binary files skipped``."""
    kind = meta["kind"]
    tokens = meta.get("tokens")
    if tokens is None:  # mqar: sequences are generated, validation from its own seed
        return f"data: {kind}, generated sequences, validation batches from a fixed seed"
    total = tokens["train"] + tokens["val"]
    actual = meta.get("val_fraction_actual", actual_fraction(tokens))
    line = f"data: {kind}, {total:,} tokens, validation {actual:.1%}"
    if "val_fraction" in meta:
        line += f" (asked {meta['val_fraction']:.1%})"
    piece = "document" if kind == "hf" else "file"
    how = {
        "by_file": "split by file",
        "by_document": "split by document",
        "fill": f"split by {piece}, one {piece} cut",
        "named": f"the {meta.get('spec', {}).get('val_split')!r} split",
    }.get(meta.get("split", ""), f"from the {kind} data's own validation split")
    binary = len((meta.get("skipped") or {}).get("binary") or [])
    skipped = f", {binary} binary file{'s' * (binary != 1)} skipped" if binary else ""
    return f"{line}, {how}{skipped}"
