"""The prose corpus builder (`experiments.corpora`) on a Debian package made here: what it
keeps of a page, what it drops, that the same packages give the same bytes, and that the
archive unpacks to the fingerprint its manifest records."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from experiments import corpora
from sqa_nas.cli import guarded
from sqa_nas.errors import UserError

SOURCE = corpora.Source("pkg-doc", "1.0-1", ("usr/share/doc/pkg/*.html",), ("*/skip/*",))
MENU = "<nav><p>Home of the project documentation pages</p></nav>"
FOOTER = "<p>Please report any error you find in these pages to the authors.</p>"


def _page(title: str, *paragraphs: str) -> bytes:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f"<html><head><title>{title}</title><script>var x = 1;</script></head><body>"
        f"{MENU}<h1>{title} explained in full</h1>{body}"
        "<pre>for i in range(10):\n    print(i)</pre>"
        "<table><tr><td>a cell of a table that is not prose at all</td></tr></table>"
        f"<div class='para'>A Publican paragraph about {title} that reads as prose.</div>"
        f"{FOOTER}</body></html>"
    ).encode()


def _prose(i: int) -> str:
    return (
        f"Chapter {i} tells how the <em>system</em> starts, what it reads first and why the "
        "order matters to anyone who has to change it later on a busy machine."
    )


def _deb(path: Path, files: dict[str, bytes]) -> Path:
    """A .deb: an ar archive with debian-binary and data.tar.xz holding `files`."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    members = [(b"debian-binary", b"2.0\n"), (b"data.tar.xz", data.getvalue())]
    out = b"!<arch>\n"
    for name, blob in members:
        header = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) * 2 + b"100644".ljust(8)
        out += header + str(len(blob)).encode().ljust(10) + b"`\n" + blob
        out += b"\n" if len(blob) % 2 else b""
    path.write_bytes(out)
    return path


@pytest.fixture
def deb(tmp_path) -> Path:
    root = "usr/share/doc/pkg/"
    pages = {f"{root}p{i}.html": _page(f"Page {i}", _prose(i), _prose(i + 10)) for i in range(5)}
    pages[f"{root}copy.html"] = pages[f"{root}p1.html"]  # the same page twice
    pages[f"{root}ru.html"] = _page(
        "Страница", "Это страница на русском языке, не английском " * 3
    )
    pages[f"{root}skip/x.html"] = _page("Skipped", _prose(99))
    pages[f"{root}style.css"] = b"p { color: red }"
    return _deb(tmp_path / "pkg-doc_1.0-1_all.deb", pages)


def test_a_page_keeps_its_running_text_only():
    paragraphs = corpora.prose_of(_page("Boot", _prose(1)).decode())
    assert paragraphs[-1] == FOOTER[3:-4]  # kept on a page; the build drops it as boilerplate
    assert "Boot explained in full" in paragraphs
    assert _prose(1).replace("<em>", "").replace("</em>", "") in paragraphs
    assert "A Publican paragraph about Boot that reads as prose." in paragraphs
    text = " ".join(paragraphs)
    assert "documentation pages" not in text  # in a <nav>
    assert "print(i)" not in text and "a cell of a table" not in text and "var x" not in text
    assert corpora.prose_of(_page("Страница", "Это страница на русском языке " * 3).decode()) == []


def test_build_is_reproducible_and_unpacks_to_its_fingerprint(deb, tmp_path, capsys):
    manifest = corpora.build({"pkg-doc": deb}, tmp_path / "a", (SOURCE,))
    (source,) = manifest["sources"]
    assert source["pages"] == 7 and source["documents"] == 5  # copy and Russian dropped
    assert source["deb_sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    text = (tmp_path / "a/prose/pkg-doc/usr/share/doc/pkg/p3.txt").read_text()
    assert _prose(3).replace("<em>", "").replace("</em>", "") in text
    assert "documentation pages" not in text and "report any error" not in text  # on 5 pages
    again = corpora.build({"pkg-doc": deb}, tmp_path / "b", (SOURCE,))
    assert again["archive"]["sha256"] == manifest["archive"]["sha256"]
    assert (
        manifest["fingerprint"]
        == json.loads((tmp_path / "a/manifest.json").read_text())["fingerprint"]
    )
    found = corpora.unpack(tmp_path / "a/prose.tar.xz", tmp_path / "gpu")
    assert found["fingerprint"] == manifest["fingerprint"]
    assert found["tokens"] == manifest["tokens"]
    with pytest.raises(UserError, match="exists; give an empty --out"):
        corpora.build({"pkg-doc": deb}, tmp_path / "a", (SOURCE,))


def test_unpack_refuses_what_it_cannot_trust(deb, tmp_path, capsys):
    corpora.build({"pkg-doc": deb}, tmp_path / "a", (SOURCE,))
    manifest = tmp_path / "a/manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"fingerprint": "0" * 64}))
    broken = tmp_path / "broken.tar.xz"
    broken.write_bytes(b"not an archive at all")
    cases = [
        (tmp_path / "missing.tar.xz", "no such archive"),
        (broken, "not a readable tar.xz"),
        (tmp_path / "a/prose.tar.xz", "the manifest beside it says 00000000"),
    ]
    for archive, message in cases:
        capsys.readouterr()
        args = ["unpack", str(archive), "--out", str(tmp_path / "gpu")]
        assert guarded(lambda args=args: corpora.main(args)) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "gpu").exists()  # nothing left behind


def test_prose_refuses_a_missing_package_or_a_file_that_is_no_package(tmp_path, capsys):
    empty = tmp_path / "debs"
    empty.mkdir()
    args = ["prose", "--out", str(tmp_path / "out"), "--debs", str(empty)]
    assert guarded(lambda: corpora.main(args)) == 2
    assert "no linux-doc-6.1_6.1.192-3_all.deb in" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    fake = tmp_path / "fake.deb"
    fake.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(UserError, match="is not a Debian package"):
        list(corpora.deb_members(fake))
