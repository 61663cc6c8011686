"""``data: {kind: text, paths: [DIR]}``: a directory brings every file under it (extensionless
ones too, nested ones, through symbolic links, each once, a link loop harmless, hidden names
left out), binary files skipped and counted in the data line the search prints and in the
corpus summary the study stores; the order is the files' names, wherever the folder lies."""

from __future__ import annotations

import io
import os
import shutil

import pytest
from rich.console import Console

from sqa_nas.data import describe_split, load_dataset
from sqa_nas.data.corpus import SNIFF_BYTES, text_files
from sqa_nas.errors import UserError
from sqa_nas.search.driver import Driver
from sqa_nas.search.space import parse_space
from sqa_nas.search.study_attrs import read_study_attrs
from tests.search.test_driver import InProcess
from tests.search.test_search import TINY

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(60))


@pytest.fixture
def licenses(tmp_path):
    """A folder as /usr/share/common-licenses is: extensionless text files, one a link to
    another, plus a nested folder, binaries, a hidden file and a link loop."""
    top = tmp_path / "licenses"
    (top / "nested" / "deeper").mkdir(parents=True)
    (top / "GPL-3").write_text(TEXT)
    os.symlink("GPL-3", top / "GPL")  # the same file twice: counted once
    (top / "Apache-2.0").write_text(TEXT.upper())
    (top / "notes.txt").write_text("ünïcode is text too\n" * 40)
    (top / "nested" / "deeper" / "README").write_text(TEXT[::-1])
    (top / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200))
    (top / "nested" / "latin1").write_bytes("caf\xe9 na\xefve\n".encode("latin-1") * 30)
    (top / "late-nul").write_bytes(TEXT.encode() * 3 + b"\x00" + b"x" * 10)  # NUL after 8 KiB?
    (top / ".hidden").write_text("left out\n")
    (top / ".git").mkdir()
    (top / ".git" / "config").write_text("left out\n")
    os.symlink("..", top / "nested" / "loop")  # nested/loop/nested/loop/... ends
    os.symlink("missing", top / "dangling")
    return top


def test_a_directory_brings_its_text_files_in_name_order(licenses):
    names = [f.name for f in text_files([str(licenses)])]
    assert names == sorted(names)
    assert names == [
        "Apache-2.0",
        "GPL-3",
        "late-nul",
        "logo.png",
        "nested/deeper/README",
        "nested/latin1",
        "notes.txt",
    ]
    assert all(f.found for f in text_files([str(licenses)]))
    # Named (or matched by a glob) as well, a file is held to the named files' rule.
    named = {f.name: f.found for f in text_files([str(licenses), str(licenses / "GPL-3")])}
    assert named["GPL-3"] is False and named["notes.txt"] is True


def test_binary_files_are_skipped_counted_and_shown(licenses, tmp_path):
    assert len(TEXT.encode()) * 3 > SNIFF_BYTES  # so late-nul's NUL lies past the sniff
    ds = load_dataset({"kind": "text", "paths": [str(licenses)]}, cache_dir=tmp_path / "c")
    assert sorted(ds.meta["skipped"]["binary"]) == ["logo.png", "nested/latin1"]
    assert ds.meta["documents"]["train"] + ds.meta["documents"]["val"] >= 5
    kept = bytes(ds.train) + bytes(ds.val)
    assert b"PNG" not in kept and b"left out" not in kept and "ünïcode".encode() in kept
    assert describe_split(ds.meta).endswith(", 2 binary files skipped")
    # The same files elsewhere: the same corpus.
    moved = tmp_path / "moved"
    shutil.copytree(licenses, moved, symlinks=True)
    again = load_dataset({"kind": "text", "paths": [str(moved)]}, cache_dir=tmp_path / "c")
    assert again.fingerprint == ds.fingerprint


def test_the_search_stores_the_skipped_count(licenses, tmp_path):
    data = {"kind": "text", "paths": [str(licenses)], "val_fraction": 0.3}
    spec = parse_space({**TINY, "study": "lic", "data": data})
    url = f"sqlite:///{tmp_path}/s.db"
    Driver(spec, InProcess(), storage_url=url, console=Console(file=io.StringIO())).open_study()
    study = Driver(spec, InProcess(), storage_url=url).open_study()
    assert read_study_attrs(study, url).corpus["skipped"] == {"binary": 2}


def test_a_named_binary_file_is_still_an_error(licenses, tmp_path):
    with pytest.raises(UserError, match="latin1 is not UTF-8"):
        load_dataset(
            {"kind": "text", "paths": [str(licenses), str(licenses / "nested" / "latin1")]},
            cache_dir=tmp_path / "c",
        )


@pytest.mark.parametrize("content", ["nothing", "hidden only", "binary only"])
def test_a_directory_without_text_is_one_user_error(tmp_path, content):
    top = tmp_path / "d"
    top.mkdir()
    if content == "hidden only":
        (top / ".notes").write_text(TEXT)
    elif content == "binary only":
        (top / "a.bin").write_bytes(bytes(100))
    match = (
        "holds no file" if content != "binary only" else r"none of its files is text \(1 binary\)"
    )
    with pytest.raises(UserError, match=match):
        load_dataset({"kind": "text", "paths": [str(top)]}, cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").glob("corpus/*")), "a refused build leaves nothing behind"
