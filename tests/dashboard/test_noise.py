"""The dashboard read against the study's noise floor: the verdict in the search panel, the
error bars of the text scatter and the PNG, the marks of noisy timings, trials within noise
of the front and repeated layouts, the `sqa-nas confirm` results, `--json`, and a usable
80x24 screen."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import optuna
import pytest
from rich.console import Console

from sqa_nas.cli import main
from sqa_nas.dashboard.app import Dashboard
from sqa_nas.dashboard.plots import _BAR, pareto_figure, text_scatter
from sqa_nas.dashboard.render import detail, summary
from sqa_nas.dashboard.spread import error_bar
from sqa_nas.dashboard.table import TrialTable
from sqa_nas.dashboard.view import MemorySource, StorageSource, StudyView
from sqa_nas.search.noise import Noise
from sqa_nas.search.records import TrialRecord
from tests.dashboard.test_dashboard import screen_text
from tests.fakestudy import make_study

OBJ = ["val_loss", "throughput_tokens_per_s"]
DIRECTIONS = ["minimize", "maximize"]
NOISE = {
    "n": 3,
    "val_loss_std": 0.05,
    "throughput_rel_std": 0.02,
    "speedup_rel_std": 0.02,
    "device": "NVIDIA H200",
    "trial": 0,
}
DUPLICATED = 6  # the fake study's trial whose layout the extra trial repeats
CONFIRM = {
    "seeds": [101, 102, 103],
    "ended": "2026-12-01T10:00:00+00:00",
    "summary": "1 of 2 front trials survives on the front with 3 fresh seeds.",
    "survivors": [0],
    "trials": {
        "0": {
            "val_loss_mean": 2.301,
            "val_loss_std": 0.012,
            "val_loss_seeds": [2.29, 2.30, 2.313],
            "throughput_mean": 1.0e5,
            "throughput_rel_ci95": 0.01,
            "speedup_mean": 1.0,
            "on_front": True,
        },
        "1": {
            "val_loss_mean": 2.41,
            "val_loss_std": 0.02,
            "val_loss_seeds": [2.39, 2.41, 2.43],
            "throughput_mean": None,
            "throughput_rel_ci95": None,
            "speedup_mean": None,
            "on_front": False,
        },
    },
}


@pytest.fixture(scope="module")
def noisy_db(tmp_path_factory):
    """The fake study with a measured noise floor, paired-timing intervals (trials 4 and 9
    noisy, +-7%), trial 0 as the noise trial, and one more trial repeating trial 6's layout
    (number 15, after the 12 completed, 2 failed and 1 running)."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("db")
    url = f"sqlite:///{folder / 'study.db'}"
    study = make_study(url, name="noisy", n=12, noise=NOISE, measured=True)
    base = study.trials[DUPLICATED]
    study.add_trial(
        optuna.trial.create_trial(
            params=base.params,
            distributions=base.distributions,
            values=base.values,
            user_attrs=base.user_attrs | {"duplicate_of": DUPLICATED},
        )
    )
    yield url
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def confirmed(noisy_db, tmp_path):
    """A copy of the noisy study with a `sqa-nas confirm` result stored."""
    copy = tmp_path / "study.db"
    shutil.copy(noisy_db.removeprefix("sqlite:///"), copy)
    url = f"sqlite:///{copy}"
    optuna.load_study(study_name="noisy", storage=url).set_user_attr("confirm", CONFIRM)
    return url


def record(number: int, loss: float, speed: float, **attrs) -> TrialRecord:
    return TrialRecord(
        number, "COMPLETE", {"val_loss": loss, "throughput_tokens_per_s": speed}, {}, attrs
    )


def plain(renderable, width: int = 300) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def run_app(source, size, keys=()):
    async def go():
        app = Dashboard(source, refresh_s=3600)
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            for key in keys:
                await pilot.press(key)
            await pilot.pause()
            table = app.query_one(TrialTable)
            rows = {r.number: table.row_text(i) for i, r in enumerate(table.records)}
            return app, screen_text(app), rows

    return asyncio.run(go())


# ------------------------------------------------------------------------- error bars
def test_a_trials_error_bar_uses_its_own_spread_else_the_studys():
    noise = Noise.model_validate(NOISE)
    unmeasured = Noise()
    plain_trial = record(0, 2.0, 1000.0)
    seeded = record(
        1,
        2.0,
        1000.0,
        seeds=[0, 1, 2],
        metrics={"val_loss_std": 0.01, "val_loss_seeds": [1, 2, 3]},
    )
    timed = record(
        2,
        2.0,
        1000.0,
        metrics={"throughput_rel_ci95": 0.05, "speedup_vs_mha": 1.5, "speedup_ci95": [1.2, 1.6]},
    )
    # val_loss: several seeds -> the trial's own std, else the noise trial's; +-2 sigma
    assert error_bar(seeded, "val_loss", 2.0, noise) == pytest.approx((0.02, 0.02))
    assert error_bar(plain_trial, "val_loss", 2.0, noise) == pytest.approx((0.1, 0.1))
    assert error_bar(plain_trial, "val_loss", 2.0, unmeasured) is None
    # throughput: its own 95% half-width, else 2 x the noise's relative std
    assert error_bar(timed, "throughput_tokens_per_s", 1000.0, noise) == pytest.approx((50, 50))
    assert error_bar(plain_trial, "throughput_tokens_per_s", 1000.0, noise) == pytest.approx(
        (40, 40)
    )
    # speedup: its own (asymmetric) interval; the analytic speedup has no bar
    assert error_bar(timed, "speedup_vs_mha", 1.5, noise) == pytest.approx((0.3, 0.1))
    assert error_bar(plain_trial, "speedup_vs_mha", 1.5, noise) is None
    assert error_bar(timed, "params", 1e6, noise) is None


def test_text_scatter_draws_error_bars_behind_the_points():
    # #0, #1, #2 on the front, #3 dominated; #1 sits inside the plot on both axes
    records = [
        record(0, 2.0, 100.0),
        record(1, 2.5, 200.0),
        record(2, 2.9, 300.0),
        record(3, 3.0, 150.0),
    ]

    def plot(attrs):
        view = StudyView(records, OBJ, DIRECTIONS, study_attrs=attrs)
        lines = text_scatter(view, "throughput_tokens_per_s", "val_loss", 40, 16).plain
        return [line[10:] for line in lines.splitlines()[2:-2]]  # the plot area only

    measured = plot({"noise": NOISE | {"throughput_rel_std": 0.03}})
    row = next(i for i, line in enumerate(measured) if "●" in line and "⡏" in line)  # #1
    col = measured[row].index("●")
    # throughput +-6% of 200 = +-12, wider than a cell: a bar right of the point (the
    # staircase's braille, drawn over bars, is on its left); val_loss +-0.1, a cell below
    assert measured[row][col + 1] == _BAR["h"]
    assert measured[row + 1][col] == _BAR["v"]
    assert sum(line.count(_BAR["h"]) for line in measured) >= 3  # every point has one
    assert not any(_BAR["hv"] in line for line in measured)  # no bars cross here
    assert "○" not in "".join(measured)  # resolved: nothing within noise

    unmeasured = plot({})
    assert not any(ch in line for line in unmeasured for ch in _BAR.values())
    assert [line.replace(" ", "") for line in unmeasured if "●" in line] == [
        line.replace(" ", "").replace(_BAR["h"], "").replace(_BAR["v"], "")
        for line in measured
        if "●" in line
    ]  # the same points, marks and staircase


def test_png_has_an_error_bar_per_point_and_marks_trials_within_noise(
    noisy_db, tmp_path, monkeypatch
):
    from matplotlib.container import ErrorbarContainer
    from matplotlib.figure import Figure

    saved = []
    real_savefig = Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    out = tmp_path / "front.png"
    assert main(["dashboard", "noisy", "--storage", noisy_db, "--png", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and len(saved) == 1
    ax = saved[0].axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    # one container per group drawn (dominated, within noise, front), with both axes' bars
    source = StorageSource("noisy", noisy_db)
    view = StudyView(source.records(), OBJ, DIRECTIONS, study_attrs=source.study_attrs())
    groups = [
        [r for r, _, _ in view.points(*OBJ[::-1]) if test(r)]
        for test in (
            lambda r: not view.on_front(r) and not view.within_noise(r),
            view.within_noise,
            view.on_front,
        )
    ]
    assert view.verdict.indistinguishable, "the fake study should have trials within noise"
    assert len(bars) == sum(1 for g in groups if g) == 3
    for container, group in zip(bars, [g for g in groups if g]):
        xbars, ybars = container.lines[2]  # (x bars, y bars): one segment per point
        assert len(xbars.get_segments()) == len(ybars.get_segments()) == len(group)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "within 2σ of the front" in labels and "±2σ where known" in labels
    assert "front NOT resolved" in ax.get_title()


def test_png_without_any_spread_has_no_error_bars():
    from matplotlib.container import ErrorbarContainer

    view = StudyView([record(0, 2.0, 100.0), record(1, 2.5, 200.0)], OBJ, DIRECTIONS)
    fig = pareto_figure(view, "throughput_tokens_per_s", "val_loss")
    ax = fig.axes[0]
    assert not [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert "noise not measured" in ax.get_title()


# ---------------------------------------------------------------------------- verdict
@pytest.mark.parametrize(
    "noise, opening, short",
    [
        (None, "Not known whether the front is resolved: noise not measured", "not measured"),
        (
            NOISE | {"val_loss_std": 0.001, "throughput_rel_std": 0.001},
            "Front resolved",
            "resolved",
        ),
        (NOISE, "Front NOT resolved at this budget: 1 trial(s) (2)", "NOT resolved: 1 within 2σ"),
    ],
)
def test_the_search_panel_says_whether_the_front_is_resolved(noise, opening, short):
    # #2 sits 0.05 in loss and 5% in speed behind #1: within 2 sigma of 0.05 / 2%, not of
    # 0.001 / 0.1%
    records = [record(0, 2.0, 100.0), record(1, 2.5, 200.0), record(2, 2.55, 190.0)]
    attrs = {} if noise is None else {"noise": noise}
    view = StudyView(records, OBJ, DIRECTIONS, study_attrs=attrs)
    text = plain(summary(view, view.progress(), title="t")).replace("\n             ", " ")
    assert f"noise        {opening}" in text
    assert view.verdict.summary() in " ".join(text.split())
    # compact (beside the scatter on a short screen): the verdict in a few words
    compact = plain(summary(view, view.progress(), title="t", compact=True), width=60)
    assert len(compact.splitlines()) == 3 and "study" not in compact  # trials, front, noise
    assert f"noise   {short}" in compact


# ------------------------------------------------------------------------------ marks
def test_table_marks_noisy_timings_trials_within_noise_and_repeats(noisy_db):
    app, text, rows = run_app(StorageSource("noisy", noisy_db), (200, 60))
    view = app.view
    close = {r.number for r in view.verdict.indistinguishable}
    assert close and view.front
    for number, row in rows.items():
        cells = row.split()
        mark = cells[2] if len(cells) > 2 else ""
        assert (mark == "★") == (number in view.front_numbers)
        assert (mark == "≈") == (number in close)
    # trials 4 and 9 were timed noisily (+-7%): their throughput and speedup cells say so
    noisy = {n for n, row in rows.items() if "±7%" in row}
    assert noisy == {4, 9}
    assert rows[4].count("±7%") == 2  # its throughput and its speedup (× MHA)
    assert f"= trial {DUPLICATED}" in rows[15]
    # the repeat is not a point of its own, nor on the front
    assert 15 not in {r.number for r, _, _ in view.points(*OBJ)} and 15 not in view.front_numbers
    assert "○ within noise" in text and "─│ ±2σ" in text


def test_detail_shows_noise_trial_timing_intervals_and_the_noisy_flag(noisy_db):
    source = StorageSource("noisy", noisy_db)
    view = StudyView(source.records(), OBJ, DIRECTIONS, study_attrs=source.study_attrs())
    noise_trial = plain(detail(view, view.by_number[0]))
    assert "over 3 seeds  (the study's noise trial)" in noise_trial
    assert "throughput 95% CI ±" in noise_trial and "12 paired rounds" in noise_trial
    noisy = plain(detail(view, view.by_number[4]))
    assert "noisy throughput: 95% CI ±7%" in noisy
    repeat = plain(detail(view, view.by_number[15]))
    assert f"= trial {DUPLICATED}: the same layout, told its values" in repeat
    close = view.verdict.indistinguishable[0]
    assert "≈ within noise of the front" in plain(detail(view, close))


def test_once_flags_noisy_rows_of_the_front_and_says_the_verdict(noisy_db, capsys):
    assert main(["dashboard", "noisy", "--storage", noisy_db, "--once"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Front NOT resolved at this budget" in out
    assert (
        "val_loss sigma 0.05 [0.026, 0.31], throughput 2.0%, speedup 2.0% (3 seeds of trial 0)"
        in out
    )
    assert "±7%" in out and "±N%: noisy throughput" in out  # trial 4 is on the front


# ---------------------------------------------------------------------------- confirm
def test_confirm_results_show_in_the_panel_the_detail_and_json(confirmed, tmp_path, capsys):
    out = tmp_path / "front.json"
    argv = ["dashboard", "noisy", "--storage", confirmed]
    assert main([*argv, "--once", "--pick", "best:val_loss", "--json", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"confirm {CONFIRM['summary']} (3 seeds, 2026-12-01 10:00)" in text
    picked = int(text.split("picked by best:val_loss: trial #")[1].split()[0])
    assert picked == 0  # the fake study's best loss is its MHA baseline
    assert "confirmed: val_loss 2.301 ± 0.012 over 3 seeds (survives on the front)" in text
    source = StorageSource("noisy", confirmed)
    view = StudyView(source.records(), OBJ, DIRECTIONS, study_attrs=source.study_attrs())
    dropped = plain(detail(view, view.by_number[1]))
    assert "confirmed: val_loss 2.41 ± 0.02 over 3 seeds (drops off the front)" in dropped
    assert "confirmed" not in plain(detail(view, view.by_number[2]))  # not retrained
    doc = json.loads(out.read_text())
    assert doc["confirm"]["survivors"] == [0] and doc["confirm"]["trials"]["0"]["on_front"]


def test_without_confirm_nothing_about_it_shows(noisy_db, capsys):
    assert main(["dashboard", "noisy", "--storage", noisy_db, "--once", "--pick", "knee"]) == 0
    out = capsys.readouterr().out
    assert "confirm " not in out.replace("sqa-nas confirm", "")


def test_a_confirm_written_while_the_app_runs_shows_on_reload(noisy_db, tmp_path):
    copy = tmp_path / "study.db"
    shutil.copy(noisy_db.removeprefix("sqlite:///"), copy)
    url = f"sqlite:///{copy}"

    async def go():
        app = Dashboard(StorageSource("noisy", url), refresh_s=0.2)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            before = app.view.confirmation
            # `sqa-nas confirm` ends: no trial changes state, the study's attr does
            optuna.load_study(study_name="noisy", storage=url).set_user_attr("confirm", CONFIRM)
            for _ in range(50):  # up to 10 s; one refresh interval is 0.2 s
                await pilot.pause(0.2)
                if app.view.confirmation is not None:
                    break
            await pilot.pause()
            return before, screen_text(app)

    before, text = asyncio.run(go())
    assert before is None and CONFIRM["summary"] in text


# ------------------------------------------------------------------------------- json
def test_json_has_the_noise_the_verdict_and_each_trials_spread(noisy_db, tmp_path):
    out = tmp_path / "front.json"
    assert main(["dashboard", "noisy", "--storage", noisy_db, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    source = StorageSource("noisy", noisy_db)
    view = StudyView(source.records(), OBJ, DIRECTIONS, study_attrs=source.study_attrs())
    assert doc["noise"] == Noise.model_validate(NOISE).model_dump(mode="json")
    assert doc["resolved"] is False and doc["verdict"] == view.verdict.summary()
    assert doc["indistinguishable"] == [r.number for r in view.verdict.indistinguishable]
    assert doc["confirm"] is None and doc["objectives"] == OBJ
    assert [t["number"] for t in doc["front"]] == [r.number for r in view.front]
    for item in doc["front"]:
        m = view.by_number[item["number"]].metrics
        assert item["throughput_rel_ci95"] == m.throughput_rel_ci95
        assert item["speedup_ci95"] == list(m.speedup_ci95 or [])
        assert item["noisy_throughput"] is bool(m.noisy_throughput)
        assert item["val_loss_std"] == m.val_loss_std and item["duplicate_of"] is None
    by_number = {t["number"]: t for t in doc["front"]}
    assert by_number[0]["val_loss_std"] == 0.02  # the noise trial's seeds
    assert by_number[4]["noisy_throughput"] is True


# ----------------------------------------------------------------------------- 80x24
def test_the_app_stays_usable_at_80x24(noisy_db):
    app, text, _ = run_app(StorageSource("noisy", noisy_db), (80, 24))
    lines = text.splitlines()
    assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
    # the search panel, beside the scatter, keeps its key rows: the verdict is readable
    n = len(app.view.verdict.indistinguishable)
    assert re.search(rf"│ noise   NOT resolved: {n} +│\n.*│ +within 2σ", text)
    assert "objectives" not in text and "hypervolume" not in text
    # the scatter keeps its axes and 10 plot rows; the table shows 5 trials (test_screens)
    assert sum(1 for line in lines if "┤" in line) >= 3
    table_rows = [line for line in lines if "COMPLETE" in line]
    assert len(table_rows) >= 5


def test_memory_source_passes_its_study_attrs_to_the_app():
    records = [record(0, 2.0, 100.0), record(1, 2.5, 200.0), record(2, 2.55, 190.0)]
    app, text, rows = run_app(
        MemorySource("mem", OBJ, records, attrs={"noise": NOISE, "confirm": CONFIRM}),
        (160, 48),
    )
    assert app.view.close_numbers == {2} and "≈" in rows[2]
    assert CONFIRM["summary"] in text
