"""An English prose corpus from Debian's documentation packages, built reproducibly.

The paper trained on English Wikipedia. No Debian or PyPI package ships Wikipedia, or any
other English prose of ~100M bytes, as text (the largest found: the Linux kernel's
documentation, ~20 MB; Wikipedia's vital-article summaries on PyPI, 6.5 MB; Jane Austen and
the King James Bible, 4 MB each). So the prose corpus is the largest body of real English
prose written by people that Debian's main archive does ship: the manuals, guides and
handbooks of `SOURCES`, each package pinned to a version and recorded with its sha256. Only
the running text of their HTML is kept: the paragraphs, list items, definitions, quotations
and headings, without code listings, tables, navigation or markup (`prose_of`); pages not in
English, and pages seen before (a help page repeated in a guide), are left out.

    python -m experiments.corpora prose --out DIR       # downloads with apt-get download
    python -m experiments.corpora prose --out DIR --debs DEBS    # .deb files already there
    python -m experiments.corpora unpack DIR/prose.tar.xz --out DEST   # on the GPU machine

``DIR/prose/<package>/<page>.txt`` are the documents; train on them with
``data: {kind: text, paths: ["DIR/prose/**/*.txt"]}`` (bytes, vocab 256; the text kind
splits validation off by document). ``DIR/prose.tar.xz`` holds the same files (sorted, no
dates: the same bytes on every build) to carry where there is no network, and
``DIR/manifest.json`` the packages, their sha256, the sizes and the corpus fingerprint as the
data loader computes it, which `unpack` checks.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import html.parser
import io
import json
import lzma
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqa_nas.cli import guarded
from sqa_nas.data import load_dataset
from sqa_nas.errors import UserError


@dataclass(frozen=True)
class Source:
    """One Debian package: its pinned version and which of its files are English pages."""

    package: str
    version: str
    include: tuple[str, ...]  # fnmatch patterns on the path inside the package
    exclude: tuple[str, ...] = ()


_SKIP = ("*/genindex*", "*/search.html", "*/py-modindex.html", "*/_static/*", "*/_sources/*")
SOURCES = (
    Source(
        "linux-doc-6.1",
        "6.1.192-3",
        ("usr/share/doc/linux-doc-6.1/html/*.html",),
        ("*/translations/*", *_SKIP),
    ),
    Source("python3.11-doc", "3.11.2-6+deb12u9", ("usr/share/doc/python3.11/html/*.html",), _SKIP),
    Source("postgresql-doc-15", "15.20-0+deb12u1", ("usr/share/doc/postgresql-doc-15/*.html",)),
    Source("gimp-help-en", "2.10.34-2", ("usr/share/gimp/2.0/help/en/*.html",)),
    Source("debian-handbook", "11.20220922", ("usr/share/doc/debian-handbook/html/en-US/*.html",)),
    Source("gnucash-docs", "4.13-1", ("usr/share/doc/gnucash-docs/gnucash-*-en/*.html",)),
    Source("kicad-doc-en", "6.0.11+dfsg-1", ("usr/share/doc/kicad/help/en/*.html",)),
    Source(
        "lilypond-doc-html",
        "2.24.1-2",
        ("usr/share/doc/lilypond/html/Documentation/*.html",),
        ("*/internals/*", "*-big-page.html"),  # big pages: the other pages again
    ),
    Source("octave-doc", "7.3.0-2", ("usr/share/doc/octave/*.html",)),
    Source("gnome-user-docs", "43.0-2", ("usr/share/help/C/*.page",)),
    Source("git-doc", "1:2.39.5-0+deb12u3", ("usr/share/doc/git-doc/*.html",)),
    Source("debian-reference-en", "2.100", ("usr/share/debian-reference/*.en.html",)),
    Source(
        "rust-doc",
        "1.63.0+dfsg1-2",
        tuple(
            f"usr/share/doc/rust-doc/html/{book}/*.html"
            for book in ("book", "nomicon", "reference", "rust-by-example", "edition-guide")
            + ("embedded-book", "rustc", "rustdoc")
        ),
        ("*/print.html", "*/searchindex*"),  # print.html: the whole book again, on one page
    ),
    Source(
        "python-django-doc",
        "3:3.2.25-0+deb12u7",
        ("usr/share/doc/python-django-doc/html/*.html",),
        ("*/_modules/*", *_SKIP),
    ),
    Source("apache2-doc", "2.4.71-1~deb12u1", ("usr/share/doc/apache2-doc/manual/en/*.html",)),
)

# Blocks whose text is running prose; everything else (pre, table cells, scripts, menus) is
# dropped. A block nested in another (a <p> inside an <li>) starts a paragraph of its own.
_PROSE = {
    "p",
    "paragraph",
    "li",
    "dd",
    "dt",
    "blockquote",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "caption",
}
_DROP = {"pre", "script", "style", "table", "nav", "head", "title", "code-block", "svg"}
_BREAK = _PROSE | {"div", "section", "br", "ul", "ol", "dl", "tr", "td", "th", "body"}


class _Paragraphs(html.parser.HTMLParser):
    """Collects the text of prose blocks, one string per paragraph."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._buf: list[str] = []
        # Open prose, drop and div tags, innermost last, with their role ("" for a div).
        self._stack: list[tuple[str, str]] = []

    def flush(self) -> None:
        """End the paragraph being collected (kept when it has text)."""
        text = " ".join("".join(self._buf).replace("\N{PILCROW SIGN}", "").split())
        self._buf = []
        if text:
            self.out.append(text)

    def handle_starttag(self, tag, attrs):
        if tag in _BREAK:
            self.flush()
        role = "prose" if tag in _PROSE else "drop" if tag in _DROP else ""
        if tag == "div" and ("class", "para") in attrs:  # Publican's paragraphs
            role = "prose"
        if role or tag == "div":
            self._stack.append((tag, role))

    def handle_endtag(self, tag):
        if tag in _BREAK:
            self.flush()
        tags = [t for t, _ in self._stack]
        if tag in tags:  # close it and anything left open inside it
            del self._stack[len(tags) - 1 - tags[::-1].index(tag) :]

    def handle_data(self, data):
        roles = [r for _, r in self._stack if r]
        if roles and roles[-1] == "prose" and "drop" not in roles:
            self._buf.append(data)


BOILERPLATE = 5  # a paragraph found on this many pages or more is the site's, not prose
MIN_DOCUMENT = 200  # bytes: shorter pages are menus and stubs
_WORD = re.compile(r"[A-Za-z]+")


def prose_of(page: str) -> list[str]:
    """The running English text of an HTML page: its prose paragraphs (see `_PROSE`) that
    look like sentences (three words or more, four fifths of their characters letters or
    spaces); [] for a page mostly not in ASCII letters (a translation)."""
    parser = _Paragraphs()
    parser.feed(page)
    parser.close()
    parser.flush()
    kept = []
    for para in parser.out:
        letters = sum(c.isalpha() or c == " " for c in para)
        if len(_WORD.findall(para)) >= 3 and letters >= 0.8 * len(para):
            kept.append(para)
    alpha = [c for para in kept for c in para if c.isalpha()]
    if sum(c.isascii() for c in alpha) < 0.95 * len(alpha):
        return []
    return kept


def deb_members(deb: Path) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every regular file in a .deb's data archive, in archive order. A .deb
    is an `ar` archive (8-byte magic, then 60-byte headers) holding ``data.tar.xz`` or
    ``.gz``; no dpkg needed."""
    blob = deb.read_bytes()
    if blob[:8] != b"!<arch>\n":
        raise UserError(f"{deb} is not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(blob):
        name = blob[pos : pos + 16].decode().strip().rstrip("/")
        size = int(blob[pos + 48 : pos + 58].decode().strip())
        data = blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise UserError(f"{deb}: {name} is zstd, which Python's tarfile cannot read")
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                for member in tar:
                    f = tar.extractfile(member) if member.isfile() else None
                    if f is not None:
                        yield member.name.removeprefix("./"), f.read()
            return
    raise UserError(f"{deb} has no data.tar member")


def _wanted(path: str, source: Source) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in source.include) and not any(
        fnmatch.fnmatch(path, p) for p in source.exclude
    )


def download(sources: tuple[Source, ...], into: Path) -> dict[str, Path]:
    """``apt-get download package=version`` for each source into ``into``; the .deb files
    by package. A version the archive no longer serves is refused, naming it."""
    debs = {}
    for s in sources:
        done = subprocess.run(
            ["apt-get", "download", f"{s.package}={s.version}"],
            cwd=into,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise UserError(f"apt-get download {s.package}={s.version} failed: {last}")
        debs[s.package] = _find_deb(into, s)
    return debs


def _find_deb(folder: Path, s: Source) -> Path:
    """The .deb of ``s`` in ``folder`` (apt-get writes the epoch's colon as %3a)."""
    name = f"{s.package}_{s.version.replace(':', '%3a')}_all.deb"
    for candidate in (folder / name, folder / name.replace("%3a", ":")):
        if candidate.exists():
            return candidate
    raise UserError(f"no {name} in {folder}")


def build(debs: dict[str, Path], out: Path, sources: tuple[Source, ...] = SOURCES) -> dict:
    """Write the documents of ``sources`` (their .deb files in ``debs``) under
    ``out/prose/``, the archive ``out/prose.tar.xz`` and ``out/manifest.json``; returns the
    manifest."""
    prose = out / "prose"
    if prose.exists():
        raise UserError(f"{prose} exists; give an empty --out")
    pages: dict[str, int] = {}
    documents: list[tuple[str, Path, list[str]]] = []  # package, file, paragraphs
    for s in sources:
        pages[s.package] = 0
        for path, data in deb_members(debs[s.package]):
            if _wanted(path, s):
                pages[s.package] += 1
                paragraphs = prose_of(data.decode("utf-8", errors="replace"))
                name = path.rsplit(".", 1)[0] + ".txt"
                documents.append((s.package, prose / s.package / name, paragraphs))
    # Boilerplate (a site's menu, "View page source", a footer) repeats across pages.
    spread = Counter(p for _, _, paragraphs in documents for p in set(paragraphs))
    seen: set[str] = set()
    kept = {s.package: [0, 0] for s in sources}  # documents, bytes
    for package, target, paragraphs in documents:
        text = "\n\n".join(p for p in paragraphs if spread[p] < BOILERPLATE)
        digest = hashlib.sha256(text.encode()).hexdigest()
        if len(text) < MIN_DOCUMENT or digest in seen:  # a page seen before, or empty
            continue
        seen.add(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n", encoding="utf-8")
        kept[package][0] += 1
        kept[package][1] += len(text.encode()) + 1
    packages: list[dict[str, Any]] = []
    for s in sources:
        n, size = kept[s.package]
        packages.append(
            {
                "package": s.package,
                "version": s.version,
                "deb_sha256": hashlib.sha256(debs[s.package].read_bytes()).hexdigest(),
                "pages": pages[s.package],
                "documents": n,
                "bytes": size,
            }
        )
        print(f"{s.package} {s.version}: {n} of {pages[s.package]} pages, {size / 1e6:.1f} MB")
    archive = out / "prose.tar.xz"
    pack(prose, archive)
    dataset = load_dataset({"kind": "text", "paths": [f"{prose}/**/*.txt"]})
    manifest = {
        "corpus": "prose",
        "spec": {"kind": "text", "paths": ["<DIR>/prose/**/*.txt"]},
        "sources": packages,
        "documents": sum(p["documents"] for p in packages),
        "bytes": sum(p["bytes"] for p in packages),
        "tokens": dataset.meta["tokens"],
        "fingerprint": dataset.fingerprint,
        "archive": {
            "file": archive.name,
            "bytes": archive.stat().st_size,
            "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def pack(folder: Path, archive: Path) -> None:
    """``folder`` as a tar.xz with sorted names, no dates and no owners, so the same files
    give the same bytes; paths inside start with ``folder``'s name."""
    with lzma.open(archive, "wb", preset=9 | lzma.PRESET_EXTREME) as xz:
        with tarfile.open(fileobj=xz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    info = tarfile.TarInfo(path.relative_to(folder.parent).as_posix())
                    info.size, info.mode = path.stat().st_size, 0o644
                    with path.open("rb") as f:
                        tar.addfile(info, f)


def unpack(archive: Path, out: Path) -> dict:
    """Unpack ``archive`` (made by `build`) into ``out`` and check the corpus's fingerprint
    against the manifest beside the archive, when there is one; returns what it found."""
    if not archive.is_file():
        raise UserError(f"no such archive {archive}")
    if (out / "prose").exists():
        raise UserError(f"{out / 'prose'} exists; unpack into an empty folder")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:xz") as tar:
            names = tar.getnames()
            if not names or any(not n.startswith("prose/") for n in names):
                raise UserError(f"{archive} is not a prose archive (files outside prose/)")
            tar.extractall(out, filter="data")
        dataset = load_dataset({"kind": "text", "paths": [f"{out / 'prose'}/**/*.txt"]})
        manifest_path = archive.with_name("manifest.json")
        if manifest_path.exists():
            expected = json.loads(manifest_path.read_text())["fingerprint"]
            if expected != dataset.fingerprint:
                raise UserError(
                    f"{archive} unpacked to fingerprint {dataset.fingerprint[:16]}, the "
                    f"manifest beside it says {expected[:16]}"
                )
    except (tarfile.TarError, lzma.LZMAError, EOFError, UserError) as exc:
        shutil.rmtree(out / "prose", ignore_errors=True)
        if made:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(exc, UserError):
            raise
        raise UserError(f"{archive}: not a readable tar.xz ({exc})") from None
    return {"tokens": dataset.meta["tokens"], "fingerprint": dataset.fingerprint}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("prose", help="download, clean and pack the prose corpus")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--debs", type=Path, help="folder with the .deb files (default: download)")
    u = sub.add_parser("unpack", help="unpack prose.tar.xz and check its fingerprint")
    u.add_argument("archive", type=Path)
    u.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.command == "unpack":
        found = unpack(args.archive, args.out)
        print(
            f"unpacked {sum(found['tokens'].values()):,} bytes into {args.out / 'prose'}; "
            f"fingerprint {found['fingerprint']}"
        )
        print(f"data: {{kind: text, paths: ['{args.out / 'prose'}/**/*.txt']}}")
        return 0
    if args.debs:
        debs = {s.package: _find_deb(args.debs, s) for s in SOURCES}
        args.out.mkdir(parents=True, exist_ok=True)
        manifest = build(debs, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            debs = download(SOURCES, Path(tmp))
            args.out.mkdir(parents=True, exist_ok=True)
            manifest = build(debs, args.out)
    print(
        f"prose corpus: {manifest['documents']:,} documents, {manifest['bytes'] / 1e6:.1f} MB "
        f"(train {manifest['tokens']['train']:,} / val {manifest['tokens']['val']:,} bytes), "
        f"fingerprint {manifest['fingerprint']}; {manifest['archive']['file']} "
        f"{manifest['archive']['bytes'] / 1e6:.1f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
