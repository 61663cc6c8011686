"""sqa_nas.progress.Bar and the experiments' `tracked`: a rich bar (done / total, rate, ETA)
on a terminal, plain lines without control characters elsewhere, few of them."""

from __future__ import annotations

import io

from rich.console import Console

from experiments.common import tracked
from sqa_nas.progress import Bar


class Clock:
    def __init__(self):
        self.now = 50.0

    def __call__(self):
        return self.now


def test_off_a_terminal_a_bar_prints_few_plain_lines():
    out, clock = io.StringIO(), Clock()
    with Bar(5, "rows", console=Console(file=out, width=60), clock=clock) as bar:
        bar.begin("MHA @ 1024")  # the first: a line
        clock.now += 1.0
        bar.begin("GQA @ 1024")  # 1 done, a second after the last line: none
        clock.now += 11.0
        bar.begin("SQA @ 1024")  # 2 done, 12 s after: a line
        clock.now += 12.0
        bar.finish()
    lines = out.getvalue().splitlines()
    assert lines == [
        "rows 0/5 (0%), 0:00:00 elapsed, - rows/h, ETA -: MHA @ 1024",
        "rows 2/5 (40%), 0:00:12 elapsed, 10 rows/min, ETA 0:00:18: SQA @ 1024",
        "rows 5/5 (100%), 0:00:24 elapsed, 12.5 rows/min, done",
    ]  # one line each, however wide: a log is not wrapped


def test_a_bar_that_stops_early_says_where():
    out, clock = io.StringIO(), Clock()
    with Bar(3, "runs", console=Console(file=out), clock=clock) as bar:
        bar.advance("a")
        clock.now += 30.0
        bar.advance("b")
    assert out.getvalue().splitlines()[-1].startswith("runs 2/3 (67%), 0:00:30 elapsed")


def test_on_a_terminal_a_bar_is_rich_progress_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, width=100, force_terminal=True)
    with Bar(4, "rows", console=console, clock=clock) as bar:
        bar.begin("first")
        clock.now += 60.0
        bar.begin("second")
        bar._progress.refresh()
        text = out.getvalue()
    assert "━" in text and "1/4" in text and "1 rows/min" in text and "ETA 0:03:00" in text


def test_tracked_yields_every_item_under_a_bar(capsys):
    assert [x * 2 for x in tracked([1, 2, 3], "variants")] == [2, 4, 6]
    err = capsys.readouterr().err
    assert "variants 3/3 (100%)" in err and "\x1b" not in err
