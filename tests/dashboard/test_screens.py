"""The dashboard at 80x24 and 120x40, read from the screen Textual's pilot draws: the scatter
keeps 10 plot rows, its y ticks and an x axis with tick labels, the table 5 trials, every
line fits; on a short screen the search panel sits beside the scatter. Baseline names on
the scatter never cover a mark or run into each other: one that would is left out."""

from __future__ import annotations

import asyncio
import re

import pytest

from sqa_nas.dashboard.app import Dashboard
from sqa_nas.dashboard.plots import text_scatter
from sqa_nas.dashboard.table import TrialTable
from sqa_nas.dashboard.view import StorageSource, StudyView
from sqa_nas.search.records import TrialRecord
from tests.dashboard.test_dashboard import demo_db, screen_text, storage  # noqa: F401
from tests.dashboard.test_ladder import ladder_db  # noqa: F401
from tests.dashboard.test_noise import noisy_db  # noqa: F401

OBJ = ["val_loss", "throughput_tokens_per_s"]
NUMBER = re.compile(r"^-?\d[\d.,]*[kMGT]?$")  # a tick label: 2.5375, 103.1k


def run_app(source, size):
    async def go():
        app = Dashboard(source, refresh_s=3600)
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            return app, screen_text(app), len(app.query_one(TrialTable).records)

    return asyncio.run(go())


def plot_rows(lines: list[str]) -> list[str]:
    """The scatter's plot rows: its left border, a 9-wide y tick label (or blanks), then the
    y axis (┤ at a tick, │ between)."""
    return [
        line
        for line in lines
        if line[:1] == "│"
        and line[10:11] in ("┤", "│")
        and (not line[1:10].strip() or NUMBER.match(line[1:10].strip()))
    ]


def x_axis(lines: list[str]) -> list[str]:
    """The x axis's tick labels: the line under the scatter's └──── line."""
    i = next(i for i, line in enumerate(lines) if re.match(r"^│ {9}└─{10}", line))
    return lines[i + 1][1:].split("│")[0].split()


@pytest.fixture(params=["demo", "noisy", "asha"])
def source(request):
    name = request.param
    url = request.getfixturevalue(
        {"demo": "storage", "noisy": "noisy_db", "asha": "ladder_db"}[name]
    )
    return StorageSource(name, url)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_a_small_screen_keeps_ten_plot_rows_both_axes_and_five_trials(source, size):
    app, text, n_trials = run_app(source, size)
    lines = text.splitlines()
    assert len(lines) == size[1] and all(len(line) <= size[0] for line in lines)
    rows = plot_rows(lines)
    assert len(rows) >= 10, text
    assert sum("┤" in row for row in rows) == 3  # y ticks: top, middle, bottom
    ticks = x_axis(lines)
    assert len(ticks) == 3 and all(NUMBER.match(t) for t in ticks), ticks
    states = r"COMPLETE|PRUNED|FAIL|RUNNING|PAUSED"
    table = [line for line in lines if re.match(rf"^│ *\d+ +({states})", line)]
    assert len(table) >= min(5, n_trials), text
    compact = size[1] < 40  # the search panel beside the scatter, the legend in its border
    assert ("╭─ search" in lines[1]) is compact
    legend = next(line for line in lines if "● Pareto" in line)  # in the plot or its border
    assert legend.startswith("╰─ ● Pareto") is compact


def test_baseline_names_never_cover_a_mark_nor_each_other():
    # six baselines side by side on one row, two or three cells apart, one dominated trial
    # far off: not every name fits
    names = ["MHA", "GQA", "sSQA", "SQA", "xSQA", "MQA"]
    records = [
        TrialRecord(
            i,
            "COMPLETE",
            {"val_loss": 2.0, "throughput_tokens_per_s": 100.0 + 5.0 * i},
            {},
            {"seed_variant": name},
        )
        for i, name in enumerate(names)
    ]
    records.append(
        TrialRecord(9, "COMPLETE", {"val_loss": 3.0, "throughput_tokens_per_s": 90.0}, {}, {})
    )
    view = StudyView(records, OBJ, ["minimize", "maximize"])
    for header in (True, False):
        text = text_scatter(view, "throughput_tokens_per_s", "val_loss", 50, 14, header=header)
        plot = [line[10:] for line in text.plain.splitlines() if line[9:10] in ("┤", "│")]
        row = next(line for line in plot if "◆" in line)
        assert row.count("◆") == len(names)  # every mark kept
        for m in re.finditer(r"[A-Za-z]+", row):
            assert m.group() in names, row  # whole names only: none cut or run together
            before, after = row[m.start() - 1 : m.start()], row[m.end() : m.end() + 1]
            assert "◆" in (before + after), row  # next to a mark
        shown = re.findall(r"[A-Za-z]+", row)
        assert 0 < len(shown) < len(names)  # some left out, and the rest readable


def test_a_baseline_keeps_its_mark_when_a_later_trial_shares_its_cell():
    records = [
        TrialRecord(
            0,
            "COMPLETE",
            {"val_loss": 2.0, "throughput_tokens_per_s": 100.0},
            {},
            {"seed_variant": "GQA"},
        ),
        TrialRecord(1, "COMPLETE", {"val_loss": 1.9999, "throughput_tokens_per_s": 100.0}, {}, {}),
        TrialRecord(2, "COMPLETE", {"val_loss": 3.0, "throughput_tokens_per_s": 300.0}, {}, {}),
    ]
    view = StudyView(records, OBJ, ["minimize", "maximize"])
    assert view.on_front(records[1])  # on the front, drawn in the baseline's cell
    text = text_scatter(view, "throughput_tokens_per_s", "val_loss", 50, 14).plain
    assert "◆GQA" in text and "●GQA" not in text
