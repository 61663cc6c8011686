"""Training never reads the validation split, end to end: datasets are built from sources
whose every token says where it came from, then the windows that `train_batches` and
`val_batches` serve are traced back to their source positions."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch

from sqa_nas.data import load_dataset
from sqa_nas.data.split import plan_split
from sqa_nas.errors import UserError

SEQ = 12


def windows(batches) -> list[list[int]]:
    """Every served window as its seq_len + 1 tokens: x, then y's last token."""
    out = []
    for x, y in batches:
        assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
        out += [row + [last] for row, last in zip(x.tolist(), y[:, -1].tolist())]
    return out


def train_windows(ds, n_batches=300, batch=8, seed=0):
    it = ds.train_batches(batch, SEQ, seed=seed)
    return windows(next(it) for _ in range(n_batches))


# ------------------------------------------------------------------------------ tokens
@pytest.mark.parametrize("suffix", [".bin", ".npy"])
def test_token_files_train_and_val_windows_come_from_their_own_split(tmp_path, suffix):
    # token value = position: train holds 0..199, val 1000..1079; nothing else exists
    train = np.arange(200, dtype=np.uint16)
    val = np.arange(1000, 1080, dtype=np.uint16)
    folder = tmp_path / "tok"
    folder.mkdir()
    for name, tokens in (("train", train), ("val", val)):
        if suffix == ".bin":
            tokens.tofile(folder / f"{name}.bin")
        else:
            np.save(folder / f"{name}.npy", tokens)
    ds = load_dataset(
        {"kind": "tokens", "path": str(folder), "vocab_size": 1080}, cache_dir=tmp_path / "cache"
    )
    seen = train_windows(ds)
    for w in seen:  # a contiguous run of training positions
        assert w == list(range(w[0], w[0] + SEQ + 1)) and w[-1] < 200
    # 2400 draws over 188 possible starts: every start, from the first to the last, is used
    assert {w[0] for w in seen} == set(range(200 - SEQ))
    val_w = windows(ds.val_batches(4, SEQ, 5))
    for w in val_w:
        assert w == list(range(w[0], w[0] + SEQ + 1)) and 1000 <= w[0] and w[-1] < 1080
    starts = [w[0] - 1000 for w in val_w]  # evenly spaced over 0 .. 80 - 13 = 67
    assert starts[0] == 0 and starts[-1] == 67 and starts == sorted(starts)
    assert all(abs((b - a) - 67 / 19) < 1 for a, b in zip(starts, starts[1:]))
    # a different seed draws different windows from the same split
    assert train_windows(ds, 4, seed=1) != train_windows(ds, 4, seed=0)


# -------------------------------------------------------------------------------- text
def numbered_text(first: int, count: int) -> str:
    """Lines '000123\\n': any 13 consecutive bytes contain a whole, unique number."""
    return "".join(f"{i:06d}\n" for i in range(first, first + count))


def occurrences(haystack: bytes, needle: bytes) -> list[int]:
    out, at = [], haystack.find(needle)
    while at >= 0:
        out.append(at)
        at = haystack.find(needle, at + 1)
    return out


def test_single_text_file_train_and_val_windows_never_cross_the_cut(tmp_path):
    text = numbered_text(0, 60).encode()  # 420 bytes
    (tmp_path / "book.txt").write_bytes(text)
    ds = load_dataset(
        {"kind": "text", "paths": [str(tmp_path / "book.txt")], "val_fraction": 0.25},
        cache_dir=tmp_path / "cache",
    )
    cut = int(420 * 0.75)  # 315: the last quarter of the bytes is validation
    assert cut == 315 and len(ds.train) == 315 and len(ds.val) == 105
    starts = set()
    for w in train_windows(ds):
        (at,) = occurrences(text, bytes(w))  # found exactly once in the file
        assert at + SEQ + 1 <= cut, f"a training window reads bytes {at}..{at + SEQ}"
        starts.add(at)
    assert starts == set(range(cut - SEQ))  # from the first byte up to the cut, not beyond
    for w in windows(ds.val_batches(3, SEQ, 4)):
        (at,) = occurrences(text, bytes(w))
        assert at >= cut, f"a validation window starts at byte {at}, before the cut {cut}"


def unit_hash(name: str) -> float:
    """The first 8 bytes of sha256(name) as a fraction of 2^64 (corpus.py's split rule)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def in_val_by_definition(name: str, fraction: float) -> bool:
    return unit_hash(name) < fraction


def test_text_files_split_by_file_and_windows_stay_in_their_split(tmp_path):
    # file i holds only letter i: a window's letters name the files it read
    letters = "abcdefghijklmnopqrst"
    names = [f"n{i}.txt" for i in range(len(letters))]
    for name, letter in zip(names, letters):
        (tmp_path / name).write_text(letter * 40)
    ds = load_dataset(
        {"kind": "text", "paths": [str(tmp_path / "*.txt")], "val_fraction": 0.25},
        cache_dir=tmp_path / "cache",
    )
    val_letters = {c for n, c in zip(names, letters) if in_val_by_definition(n, 0.25)}
    train_letters = set(letters) - val_letters
    # the seed of this test: 5 of the 20 equal files hash into validation, 25% as asked, so
    # the split by file is kept
    assert len(val_letters) == 5 and ds.meta["split"] == "by_file"
    assert ds.meta["documents"] == {"train": len(train_letters), "val": len(val_letters)}
    assert ds.meta["tokens"] == {"train": len(ds.train), "val": len(ds.val)}  # separators too

    def read(ws):
        return {chr(b) for w in ws for b in w if b != 0xFF}

    assert read(train_windows(ds)) == train_letters  # every train file, no val file
    assert read(windows(ds.val_batches(8, SEQ, 10))) == val_letters
    # the splits hold exactly their files' bytes and one 0xFF between consecutive files
    assert bytes(ds.train) == b"\xff".join(
        c.encode() * 40 for c in sorted(train_letters, key=lambda c: names[letters.index(c)])
    )
    assert bytes(ds.val) == b"\xff".join(
        c.encode() * 40 for c in sorted(val_letters, key=lambda c: names[letters.index(c)])
    )


def test_token_files_boundaries_of_vocab_and_length(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    np.arange(13, dtype=np.uint16).tofile(folder / "train.bin")  # exactly one window of 12
    np.arange(13, 25, dtype=np.uint16).tofile(folder / "val.bin")  # 12 tokens: none
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"val holds token ids 13 \.\. 24; with vocab_size 24"):
        load_dataset({"kind": "tokens", "path": str(folder), "vocab_size": 24}, cache_dir=cache)
    ds = load_dataset(
        {"kind": "tokens", "path": str(folder), "vocab_size": 25}, cache_dir=cache
    )  # the largest id is vocab_size - 1: fine
    assert train_windows(ds, 3) == [list(range(13))] * 24  # the only window there is
    with pytest.raises(UserError, match=r"validation split .* holds 12 tokens; seq_len=12"):
        ds.val_batches(1, SEQ, 1)
    assert windows(ds.val_batches(2, SEQ - 1, 1)) == [list(range(13, 25))] * 2
    with pytest.raises(UserError, match=r"train split .* holds 13 tokens; seq_len=13"):
        next(ds.train_batches(1, SEQ + 1))


def test_files_filled_and_cut_keep_train_and_val_windows_apart(tmp_path):
    # Unequal files of numbered lines (file k holds numbers k*100000 ...): a window's numbers
    # say which file and which line it read. 30% by name misses (one file per side), so
    # files fill validation in hash order and one is cut.
    lines = {"a.txt": 300, "b.txt": 40, "c.txt": 900, "d.txt": 120}
    for k, (name, count) in enumerate(lines.items()):
        (tmp_path / name).write_text(numbered_text(k * 100000, count))
    ds = load_dataset(
        {"kind": "text", "paths": [str(tmp_path / "*.txt")], "val_fraction": 0.3},
        cache_dir=tmp_path / "cache",
    )
    assert ds.meta["split"] == "fill"
    plan = plan_split({n: 7 * c for n, c in lines.items()}, 0.3)
    is_val = set()  # the numbers whose line lies (wholly) in validation
    for k, (name, count) in enumerate(lines.items()):
        where = plan.where[name]
        first_val = 0 if where == "val" else count if where == "train" else -(-where // 7)
        is_val |= {k * 100000 + i for i in range(first_val, count)}
    assert 0 < len(is_val) < sum(lines.values())

    def numbers(window: list[int]) -> set[int]:
        # every number has 6 digits, so a run of 6 is a whole one; 13 bytes hold one at least
        found = {int(m) for m in re.findall(rb"\d{6}", bytes(window))}
        assert found
        return found

    for w in train_windows(ds):
        assert not numbers(w) & is_val, "a training window reads a validation line"
    for w in windows(ds.val_batches(8, SEQ, 20)):
        assert numbers(w) <= is_val, "a validation window reads a training line"


@pytest.mark.parametrize("fraction, lone", [(1e-9, "val"), (1 - 1e-9, "train")])
def test_a_split_rounded_to_nothing_keeps_a_byte_of_the_extreme_file(tmp_path, fraction, lone):
    # 5 files of 30 bytes: validation's share rounds to no byte (or to all of them), so the
    # split keeps one byte on that side: the last byte of the file of smallest hash in
    # validation, or the first byte of the file of largest hash in training.
    names = [f"doc{i}.txt" for i in range(5)]
    for i, name in enumerate(names):
        (tmp_path / name).write_text(chr(ord("a") + i) * 30)
    ds = load_dataset(
        {"kind": "text", "paths": [str(tmp_path / "*.txt")], "val_fraction": fraction},
        cache_dir=tmp_path / "cache",
    )
    pick = min(names, key=unit_hash) if lone == "val" else max(names, key=unit_hash)
    alone = bytes(ds.val if lone == "val" else ds.train)
    assert alone == chr(ord("a") + names.index(pick)).encode()
    assert ds.meta["documents"][lone] == 1 and ds.meta["split"] == "fill"
