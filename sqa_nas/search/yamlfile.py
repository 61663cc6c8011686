"""Reading a YAML file a user wrote, defensively: what `yaml.safe_load` accepts silently or
fails on with a traceback is refused here in one line naming the file and the line.

Refused: a duplicate key (YAML 1.2 forbids it; PyYAML keeps the last one), nesting deeper
than `MAX_DEPTH` levels (PyYAML recurses per level and ends in a RecursionError), anchors
and aliases that expand to more than `MAX_VALUES` values (the "billion laughs": a few
lines that would make validation walk 9^9 values) or that contain themselves, a file
larger than `MAX_BYTES`, a binary or non-UTF-8 file, a directory or anything but a regular
file (a FIFO would block the read), and a scalar a Python constructor rejects (an integer
of 5,000 digits, the date 2024-13-45). Tags that would construct Python objects are refused
as `yaml.safe_load` refuses them.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from sqa_nas.errors import UserError

MAX_BYTES = 1 << 20  # a search space is a few kB
MAX_DEPTH = 32  # levels of nesting; a search space has 4
MAX_VALUES = 100_000  # nodes (keys, values, items) once aliases are expanded


class _Refused(yaml.MarkedYAMLError):
    """A document PyYAML would load that we do not (its mark names the line)."""

    def __init__(self, problem: str, mark: Any) -> None:  # Any: yaml's or libyaml's Mark
        super().__init__(problem=problem, problem_mark=mark)


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses duplicate keys, deep nesting and alias bombs while it
    composes the document (before anything is constructed), and turns a constructor's
    ValueError into a marked error."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0  # nodes enclosing the one being composed
        # (values once expanded, height) of each node composed so far; an alias's node is
        # found here, so its expansion is counted without expanding it.
        self._extent: dict[yaml.Node, tuple[int, int]] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            assert node is not None  # an alias composes to its anchor's node, or raises
            if node not in self._extent:  # its anchor's node is still being composed
                raise _Refused(
                    f"alias *{event.anchor} refers to a node that contains it "
                    "(a recursive structure)",
                    event.start_mark,
                )
            if self._depth + self._extent[node][1] > MAX_DEPTH:
                raise _Refused(
                    f"alias *{event.anchor} nests deeper than {MAX_DEPTH} levels",
                    event.start_mark,
                )
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nesting deeper than {MAX_DEPTH} levels", event.start_mark)
        node = super().compose_node(parent, index)
        assert node is not None  # a scalar, sequence or mapping event composes a node
        self._depth -= 1
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        values = 1 + sum(self._extent[c][0] for c in children)
        if values > MAX_VALUES:
            raise _Refused(
                f"this value holds more than {MAX_VALUES:,} values once its aliases are "
                "expanded (anchors repeated inside anchors)",
                node.start_mark,
            )
        self._extent[node] = (values, 1 + max((self._extent[c][1] for c in children), default=0))
        return node

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], yaml.Node] = {}  # (tag, text) of a scalar key -> it
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            earlier = first.setdefault((key.tag, key.value), key)
            if earlier is not key:
                raise _Refused(
                    f"duplicate key {key.value!r} (first at line {earlier.start_mark.line + 1})",
                    key.start_mark,
                )
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # int('9' * 5000), date(2024, 13, 45)
            raise _Refused(
                f"cannot read {_short(str(node.value))} as {node.tag.rsplit(':', 1)[-1]}: "
                f"{str(exc).split(';')[0]}",
                node.start_mark,
            ) from None


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """The document in the YAML file at `path` (None when it holds none); anything wrong
    with the file or its text is a `UserError` starting with the path (`what` names the
    file when it cannot be read, e.g. "search space")."""
    path = Path(path)
    text = _read_text(path, what)
    try:
        loader = _StrictLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _Refused as exc:  # our limits
        raise UserError(f"{path}: {_where(exc)}") from None
    except yaml.MarkedYAMLError as exc:  # PyYAML's own: syntax, tags, aliases
        raise UserError(f"{path} is not valid YAML: {_where(exc)}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, e.g. \x07
        line = text.count("\n", 0, exc.position) + 1
        raise UserError(
            f"{path} is not valid YAML: line {line}: character {chr(exc.character)!r} is not "
            "allowed"
        ) from None
    except yaml.YAMLError as exc:  # other YAML errors carry no mark: one line anyway
        raise UserError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None


def _read_text(path: Path, what: str) -> str:
    """The UTF-8 text of the regular file `path`, at most `MAX_BYTES`."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise UserError(f"cannot read {what} {path}: it is a directory")
        if not stat.S_ISREG(info.st_mode):  # a FIFO or a device: reading it may block
            raise UserError(f"cannot read {what} {path}: not a regular file")
        if info.st_size > MAX_BYTES:
            raise UserError(
                f"{path} is {info.st_size:,} bytes: a {what} larger than "
                f"{MAX_BYTES:,} bytes is refused"
            )
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:  # grew since stat
        raise UserError(f"{path}: a {what} larger than {MAX_BYTES:,} bytes is refused")
    if b"\0" in data:
        raise UserError(f"{path} is not UTF-8 text: it holds NUL bytes (a binary file?)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not UTF-8 text (byte {exc.start:,} is {data[exc.start]:#04x})"
        ) from None


def _where(exc: yaml.MarkedYAMLError) -> str:
    """'line L, column C: problem (context)' from a marked error."""
    mark = exc.problem_mark or exc.context_mark
    text = (exc.problem or exc.context or "invalid YAML").removeprefix("but ")
    if "'\\t'" in text:
        text = "a tab character: YAML indents with spaces, not tabs"
    elif exc.problem and exc.context:
        at = "" if exc.context_mark is None else f" at {_line_column(exc.context_mark)}"
        text += f" ({exc.context}{at})"
    return f"{_line_column(mark)}: {text}" if mark is not None else text


def _line_column(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _short(text: str) -> str:
    """`text` quoted, cut to its first 20 characters when longer than 40."""
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text):,} characters)"
