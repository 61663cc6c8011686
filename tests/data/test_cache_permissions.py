"""The token cache is private to its user: a build that reads a file only its owner may read
(0640 here) writes its bytes, and its path in meta.json, only into 0600 files under 0700
folders, whatever the umask; the tokens kind's scan memo too. An error about a data folder
names the folder and a count, never its contents.

The tests run as root, who reads any file: they check the mode bits of what is created, not
who can open it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from sqa_nas.data import load_dataset
from sqa_nas.errors import UserError

SECRET = "the root-only text: " + "a line of it\n" * 200


def modes(root: Path) -> dict[str, int]:
    """Permission bits of `root` and of everything under it, by relative path."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


@pytest.fixture
def open_umask():
    """A umask that lets everything be world-readable (the default 022 would too)."""
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_a_text_corpus_of_a_private_file_is_cached_privately(tmp_path, open_umask):
    source = tmp_path / "secret.txt"
    source.write_text(SECRET)
    source.chmod(0o640)
    cache = tmp_path / "cache"  # does not exist yet: the build creates it
    data = load_dataset({"kind": "text", "paths": [str(source)]}, cache_dir=cache)
    assert data.meta["tokens"]["train"] > 0
    written = modes(cache)
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"train.bin", "val.bin", "meta.json"}
    for name, mode in written.items():
        path = cache / name
        wanted = 0o700 if path.is_dir() else 0o600
        assert mode == wanted, f"{name}: {oct(mode)}"
        assert mode & 0o077 == 0 and mode & ~0o777 == 0  # nothing for group or others


def test_an_existing_cache_folder_keeps_its_mode_and_gets_private_entries(tmp_path, open_umask):
    source = tmp_path / "a.txt"
    source.write_text(SECRET)
    cache = tmp_path / "shared"
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)
    load_dataset({"kind": "text", "paths": [str(source)]}, cache_dir=cache)
    written = modes(cache)
    assert written.pop(".") == 0o755  # the user's folder, as the user made it
    assert written and all(mode & 0o077 == 0 for mode in written.values()), written


def test_the_tokens_kinds_scan_memo_is_private(tmp_path, open_umask):
    folder = tmp_path / "tokens"
    folder.mkdir()
    for split in ("train", "val"):
        np.arange(300, dtype=np.uint16).tofile(folder / f"{split}.bin")
        (folder / f"{split}.bin").chmod(0o600)
    cache = tmp_path / "cache"
    spec = {"kind": "tokens", "path": str(folder), "dtype": "uint16", "vocab_size": 300}
    load_dataset(spec, cache_dir=cache)
    written = modes(cache)
    assert any(name.startswith("scans/") for name in written)
    assert all(mode & 0o077 == 0 for mode in written.values()), written


def test_a_tokens_folder_without_its_files_is_named_with_a_count(tmp_path):
    folder = tmp_path / "tokens"
    folder.mkdir()
    for i in range(40):
        (folder / f"private-name-{i}.txt").write_text("x")
    with pytest.raises(UserError) as exc:
        load_dataset({"kind": "tokens", "path": str(folder)}, cache_dir=tmp_path / "cache")
    message = str(exc.value)
    assert "private-name" not in message
    assert str(folder) in message and "no train.npy (40 entries)" in message
