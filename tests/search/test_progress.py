"""sqa_nas.search.progress: the live panel's header counts, repeats told included only when
there are some."""

from __future__ import annotations

import io

from rich.console import Console

from sqa_nas.search.executors.base import Executor
from sqa_nas.search.progress import progress_panel
from sqa_nas.search.space import parse_space
from tests.search.test_search import TINY


class Idle(Executor):
    def start(self): ...

    def free_slots(self):
        return 0

    def submit(self, job): ...

    def poll(self, timeout):
        return []

    def shutdown(self, *, cancel=False):
        return []


def _text(counts) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(
        progress_panel(parse_space(TINY), Idle(), "sqlite:///x.db", 4, counts)
    )
    return out.getvalue()


def test_the_header_counts_repeats_told_only_when_there_are_some():
    counts = {"counted": 2, "complete": 2, "running": 1, "duplicates": 3}
    text = _text(counts)
    assert "2/4 evaluated" in text and "repeats told 3" in text
    assert "repeats told" not in _text({**counts, "duplicates": 0})
