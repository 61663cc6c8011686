"""The dashboard: the Textual app driven by its test pilot, the static outputs (--once, --png,
--json), errors, live refresh from a storage being written, and speed on 5,000 trials."""

from __future__ import annotations

import asyncio
import io
import json
import random
import shutil
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from rich.console import Console

from sqa_nas.cli import main
from sqa_nas.dashboard import app as app_module
from sqa_nas.dashboard.app import Dashboard
from sqa_nas.dashboard.plots import text_scatter
from sqa_nas.dashboard.snapshot import snapshot
from sqa_nas.dashboard.table import TrialTable
from sqa_nas.dashboard.view import MemorySource, StorageSource, StudyView
from sqa_nas.search.records import TrialRecord, load_study, trial_records
from tests import brute
from tests.fakestudy import make_study

OBJ = ["val_loss", "throughput_tokens_per_s"]
SIZE = (160, 48)


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    """A synthetic study: 12 completed trials (the 5 seed baselines first), 2 failed and 1
    running. Built once, in memory-backed /dev/shm where there is one, as every sqlite write
    commits to disk; tests that write copy it first."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("db")
    make_study(f"sqlite:///{folder / 'study.db'}", name="demo", n=12)
    yield folder / "study.db"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def storage(demo_db):
    return f"sqlite:///{demo_db}"


@pytest.fixture()
def writable(demo_db, tmp_path):
    copy = tmp_path / "study.db"
    shutil.copy(demo_db, copy)
    return f"sqlite:///{copy}"


def screen_text(app) -> str:
    """The whole screen as plain text, drawn the way `App.export_screenshot` draws it."""
    console = Console(width=app.size.width, file=io.StringIO(), record=True, color_system=None)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


def run(coro):
    return asyncio.run(coro)


def append_trial(storage: str, name: str, values: dict[str, float], like: int = 0) -> int:
    """Add a completed trial to the study from a separate connection, the way a search
    writing the same storage would; returns its number."""
    study = optuna.load_study(study_name=name, storage=storage)
    base = study.trials[like]
    study.add_trial(
        optuna.trial.create_trial(
            params=base.params,
            distributions=base.distributions,
            values=[values[m] for m in study.metric_names],
            user_attrs=base.user_attrs | {"seed_variant": None},
        )
    )
    return len(study.trials) - 1


# ----------------------------------------------------------------------------------- app
def test_app_shows_scatter_table_detail_and_progress(storage):
    async def go():
        app = Dashboard(StorageSource("demo", storage), refresh_s=60)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            text = screen_text(app)
            table = app.query_one(TrialTable)
            return text, [r.number for r in table.records], app.view

    text, rows, view = run(go())
    assert rows == list(range(15))  # every trial, failed and running included
    assert "Pareto front · val_loss ↓ vs throughput_tokens_per_s ↑" in text
    scatter = "\n".join(line.split("││")[0] for line in text.splitlines()[1:24])
    assert "● Pareto  ⠂ dominated  ◆ baseline  ◉ selected" in scatter
    # The fake study's trials come from optuna's sampler (seeded, but they may change with
    # optuna's version) and marks may share a cell, so the exact layout is checked on fixed
    # data in test_text_scatter_marks_and_labels.
    assert "◉" in scatter and "◆" in scatter
    assert "12 done" in text and "1 running" in text and "2 failed" in text
    assert "trial #0 COMPLETE" in text and "baseline MHA" in text  # first row selected
    assert f"{len(view.front)} Pareto-optimal of 12 done" in text
    assert "GPU" in text and "n/a (no search run has recorded its figures yet)" in text


def test_navigate_select_and_switch_axes(storage):
    async def go():
        app = Dashboard(StorageSource("demo", storage), refresh_s=60)
        out = {}
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press("down", "down", "down")
            await pilot.pause()
            out["selected"], out["detail"] = app.selected, screen_text(app)
            await pilot.press("x")
            await pilot.pause()
            out["axes_x"], out["screen_x"] = app.axes, screen_text(app)
            await pilot.press("y")
            await pilot.pause()
            out["axes_y"] = app.axes
            await pilot.press("end")
            await pilot.pause()
            out["last"], out["screen_last"] = app.selected, screen_text(app)
        return out

    out = run(go())
    assert out["selected"] == 3
    detail = out["detail"]
    assert "trial #3 COMPLETE" in detail and "baseline sSQA" in detail
    # the per-layer strip: sSQA is 4 query / 4 key-value heads in every one of the 4 layers
    hq = next(line for line in detail.splitlines() if "H_q " in line)
    assert hq.split("H_q")[1].split()[:4] == ["4", "4", "4", "4"]
    assert "backend  sdpa   sdpa   sdpa   sdpa" in detail
    assert "train loss" in detail
    assert out["axes_x"] == ("speedup_vs_mha", "val_loss")  # x moved on to the next metric
    assert "Pareto front · val_loss ↓ vs speedup_vs_mha ↑" in out["screen_x"]
    assert out["axes_y"] == ("speedup_vs_mha", "throughput_tokens_per_s")
    assert out["last"] == 14 and "trial #14 RUNNING" in out["screen_last"]


def test_pareto_filter_sort_pickers_and_gpu_filter(storage):
    async def go():
        app = Dashboard(StorageSource("demo", storage), refresh_s=60)
        out = {}
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            table = app.query_one(TrialTable)
            await pilot.press("p")
            out["front_rows"] = [r.number for r in table.records]
            await pilot.press("k")
            out["knee"] = app.selected
            await pilot.press("b")
            out["best_loss"] = app.selected
            await pilot.press("p", "s")
            out["sort"] = (app.sort_key, table.labels[1])
            await pilot.press("S")
            out["reversed"] = (app.sort_reverse, table.labels[1])
            app.on_trial_table_header_selected(TrialTable.HeaderSelected("val_loss"))
            app.on_trial_table_header_selected(TrialTable.HeaderSelected("val_loss"))
            out["by_loss_desc"] = [r.number for r in table.records]
            await pilot.press("g")
            out["gpu"] = (app.gpu_type, {r.gpu_type for r in table.records})
            records = app.records
        return out, records

    out, records = run(go())
    assert set(out["front_rows"]) == brute.front(records, OBJ)
    assert out["knee"] in brute.knee(records, OBJ)
    assert {out["best_loss"]} == brute.best(records, OBJ, "val_loss")
    assert out["sort"] == ("state", "state ▲")
    assert out["reversed"] == (True, "state ▼")
    losses = [
        r.values["val_loss"]
        for n in out["by_loss_desc"]
        for r in records
        if r.number == n and r.values
    ]
    assert losses == sorted(losses, reverse=True) and len(losses) == 12
    assert out["by_loss_desc"][-3:] == [12, 13, 14]  # no loss: last, whatever the order
    gpu, shown = out["gpu"]
    assert gpu == "NVIDIA A100" and shown == {"NVIDIA A100"}


def test_table_header_click_sorts(storage):
    async def go():
        app = Dashboard(StorageSource("demo", storage), refresh_s=60)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            table = app.query_one(TrialTable)
            x = sum(w + 2 for w in table.widths[:4]) + 1  # inside the val_loss header
            await pilot.click(TrialTable, offset=(x + 1, 1))  # + the border
            await pilot.pause()
            return app.sort_key, table.row_text(0)

    key, first = run(go())
    assert key == "val_loss"
    records = trial_records(load_study("demo", storage))
    assert {int(first.split()[0])} == brute.best(records, OBJ, "val_loss")


def test_live_refresh_shows_trials_written_while_running(writable):
    async def go():
        app = Dashboard(StorageSource("demo", writable), refresh_s=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            before = len(app.query_one(TrialTable).records)
            number = append_trial(
                writable, "demo", {"val_loss": 1.0, "throughput_tokens_per_s": 1e7}
            )
            for _ in range(50):  # up to 10 s; one refresh interval is 0.2 s
                await pilot.pause(0.2)
                if len(app.query_one(TrialTable).records) > before:
                    break
            await pilot.pause()
            return before, number, app, screen_text(app), len(app.query_one(TrialTable).records)

    before, number, app, text, after = run(go())
    assert after == before + 1
    assert app.reloads >= 1
    assert [r.number for r in app.view.front] == [number]  # it dominates every other trial
    assert "13 done" in text and "1 Pareto-optimal of 13 done" in text


RUN = {
    "driver": "d2",
    "host": "gpu-7",
    "ended": "2026-11-30T12:00:00+00:00",
    "in_trial_fraction": 0.997,
    "nvml_util_mean": 0.87,
    "nvml_util_by_gpu": {"GPU 0 (NVIDIA H200)": 0.87},
    "nvml_note": None,
    "train_step_share": 0.91,
    "train_step_share_by_gpu": {"gpu-7 GPU 0 (NVIDIA H200)": 0.91},
}
OLD_RUN = {"driver": "d1", "host": "gpu-7", "busy_fraction": 0.998}  # before the rename


def test_the_search_panel_shows_the_last_runs_figures_once_a_run_stores_them(writable):
    async def go():
        app = Dashboard(StorageSource("demo", writable), refresh_s=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            before = screen_text(app)
            # A search ends: its figures arrive with no trial changing state.
            study = optuna.load_study(study_name="demo", storage=writable)
            study.set_user_attr("executor_stats", [OLD_RUN, RUN])
            for _ in range(50):  # up to 10 s; one refresh interval is 0.2 s
                await pilot.pause(0.2)
                if app.view.run is not None:
                    break
            await pilot.pause()
            return before, screen_text(app)

    before, after = run(go())
    assert "n/a (no search run has recorded its figures yet)" in before
    assert "NVML utilisation 87.0%  training steps 91.0%  in trials 99.7%" in after
    assert "last run: gpu-7, 2026-11-30 12:00 UTC" in after


def test_once_shows_an_old_runs_in_trial_fraction_and_na_for_what_it_lacks(writable, capsys):
    study = optuna.load_study(study_name="demo", storage=writable)
    study.set_user_attr("executor_stats", [OLD_RUN])
    assert main(["dashboard", "demo", "--storage", writable, "--once"]) == 0
    out = capsys.readouterr().out
    assert "NVML utilisation n/a  training steps n/a  in trials 99.8%" in out


def test_a_reload_builds_its_view_off_the_ui_thread(writable, monkeypatch):
    import threading

    from sqa_nas.dashboard import view as view_module

    built_on = []
    real_init = view_module.StudyView.__init__

    def init(self, *args, **kwargs):
        built_on.append(threading.current_thread() is threading.main_thread())
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(view_module.StudyView, "__init__", init)

    async def go():
        app = Dashboard(StorageSource("demo", writable), refresh_s=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            built_on.clear()  # the first view is built before the app runs
            append_trial(writable, "demo", {"val_loss": 1.0, "throughput_tokens_per_s": 1e7})
            for _ in range(50):
                await pilot.pause(0.2)
                if app.reloads:
                    break
            return app.reloads

    assert run(go()) >= 1
    assert built_on and not any(built_on)


def test_export_key_calls_export_trial(storage, monkeypatch, tmp_path):
    calls = []

    def fake_export(study, record, out_dir, fmt="torch"):
        calls.append((study.study_name, record.number, out_dir))
        return out_dir

    monkeypatch.setattr(app_module, "_export_function", lambda: fake_export)

    async def go():
        app = Dashboard(StorageSource("demo", storage), refresh_s=60, export_dir=tmp_path)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await pilot.pause()
            await pilot.press("down", "e")
            await app.workers.wait_for_complete()
            await pilot.pause()
            return screen_text(app)

    text = run(go())
    assert calls == [("demo", 1, tmp_path / "demo-trial1")]
    assert "exported trial #1" in text


def test_export_key_without_export_package_says_so(storage, monkeypatch):
    monkeypatch.setattr(app_module, "_export_function", lambda: None)

    async def go():
        app = Dashboard(StorageSource("demo", storage), refresh_s=60)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await pilot.pause()
            await pilot.press("e")
            await pilot.pause()
            return screen_text(app)

    assert "export is not available" in run(go())


# ------------------------------------------------------------------------------ CLI
def test_once_prints_summary_and_pareto_table(storage, capsys):
    assert main(["dashboard", "demo", "--storage", storage, "--once"]) == 0
    out = capsys.readouterr().out
    records = trial_records(load_study("demo", storage))
    assert "Pareto front (" in out and "12 done" in out and "hypervolume" in out
    rows = [
        line.split("│")[1].strip()
        for line in out.splitlines()
        if line.startswith("│") and line.split("│")[1].strip().isdigit()
    ]
    assert {int(n) for n in rows} == brute.front(records, OBJ)


def test_once_with_a_picker(storage, capsys):
    spec = "best:throughput_tokens_per_s:within=val_loss+1%"
    assert main(["dashboard", "demo", "--storage", storage, "--once", "--pick", spec]) == 0
    out = capsys.readouterr().out
    records = trial_records(load_study("demo", storage))
    chosen = int(out.split(f"picked by {spec}: trial #")[1].split()[0].rstrip(".,;:"))
    assert chosen in brute.best(
        records, OBJ, "throughput_tokens_per_s", within=("val_loss", 1.0, True)
    )


def test_png_is_a_png(storage, tmp_path):
    from PIL import Image

    out = tmp_path / "front.png"
    assert main(["dashboard", "demo", "--storage", storage, "--png", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        assert image.size[0] > 400 and image.size[1] > 300


def test_png_without_a_suffix_gets_one_and_says_so(storage, tmp_path, capsys):
    assert main(["dashboard", "demo", "--storage", storage, "--png", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {tmp_path / 'f.png'}" in capsys.readouterr().err.replace("\n", "")


def test_json_lists_the_front_with_values_params_and_layers(storage, tmp_path):
    out = tmp_path / "front.json"
    assert main(["dashboard", "demo", "--storage", storage, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    front = doc["front"]
    # the fake study has no noise trial: the front is not known to be resolved
    assert doc["noise"]["n"] == 0 and doc["resolved"] is False
    assert doc["verdict"].startswith("Not known whether the front is resolved")
    assert doc["indistinguishable"] == [] and doc["confirm"] is None
    records = {r.number: r for r in trial_records(load_study("demo", storage))}
    assert {item["number"] for item in front} == brute.front(records.values(), OBJ)
    for item in front:
        r = records[item["number"]]
        assert item["values"] == r.values and set(item["values"]) == set(OBJ)
        assert item["params"] == r.params and "layer0.heads" in item["params"]
        assert item["allocation"] == r.allocation
        assert len(item["layers"]) == 4
        assert {"n_q_heads", "n_kv_heads", "backend"} <= set(item["layers"][0])


def test_not_a_terminal_prints_the_snapshot(storage, capsys):
    assert main(["dashboard", "demo", "--storage", storage]) == 0
    captured = capsys.readouterr()
    assert "Pareto front (" in captured.out and "not a terminal" in captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nope"], "no study 'nope'"),
        (["demo", "--storage", "sqlite:////no/such/dir/study.db"], "does not exist"),
        (["demo", "--x", "speed"], "--x 'speed': not a metric of this study"),
        (["demo", "--pick", "fastest"], "expected 'knee'"),
        (["demo", "--gpu-type", "TPU"], "no trial ran on GPU type 'TPU'"),
        (["demo", "--pick", "best:val_loss:within=throughput_tokens_per_s+1.2.3%"], "expected"),
        (["demo", "--json", "-"], "--once and --json - both write to stdout"),
        (["demo", "--json", "/proc/no/such.json"], "--json /proc/no/such.json: cannot write it"),
        (["demo", "--png", "/proc/no/such.png"], "--png /proc/no/such.png: cannot write it"),
    ],
)
def test_user_errors_exit_2_with_a_message(storage, capsys, argv, message):
    if "--storage" not in argv:
        argv = argv + ["--storage", storage]
    assert main(["dashboard", *argv, "--once"]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert message in err


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_refresh_must_be_a_finite_positive_number(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["dashboard", "demo", "--refresh", value])
    assert exc.value.code == 2 and "--refresh" in capsys.readouterr().err


def test_gpu_type_option_restricts_the_front(storage, capsys):
    assert (
        main(["dashboard", "demo", "--storage", storage, "--once", "--gpu-type", "NVIDIA H200"])
        == 0
    )
    out = capsys.readouterr().out
    assert "GPU NVIDIA H200 only" in out
    assert "NVIDIA A100" not in out.split("Pareto front (")[1]


def test_screenshot_script_writes_an_svg(storage, tmp_path):
    from sqa_nas.dashboard.screenshot import main as screenshot

    out = tmp_path / "shot.svg"
    assert screenshot(["demo", "--storage", storage, "--out", str(out), "--size", "120x40"]) == 0
    svg = out.read_text()
    assert svg.startswith("<svg") and "Pareto" in svg


def test_text_scatter_marks_and_labels():
    # loss down, speed up: #0-#2 form the front, #3 is dominated, #1 is the GQA baseline
    points = [
        (2.0, 100.0, None),
        (2.2, 300.0, "GQA"),
        (2.6, 500.0, None),
        (2.7, 150.0, None),
        (2.5, 120.0, "MHA"),
    ]
    records = [
        TrialRecord(
            i,
            "COMPLETE",
            {"val_loss": v, "throughput_tokens_per_s": t},
            {},
            {"seed_variant": seed},
        )
        for i, (v, t, seed) in enumerate(points)
    ]
    records.append(TrialRecord(9, "FAIL", None, {}))
    view = StudyView(records, OBJ, ["minimize", "maximize"])
    text = text_scatter(view, "throughput_tokens_per_s", "val_loss", 70, 20, selected=2).plain
    lines = text.splitlines()
    assert lines[0].startswith("val_loss (lower is better)  vs  throughput_tokens_per_s")
    assert len(lines) == 20 and all(len(line) <= 70 for line in lines)
    plot = "\n".join(lines[2:])
    assert "◆GQA" in plot and "◆MHA" in plot  # labelled baselines
    assert plot.count("●") == 1 and plot.count("◉") == 1  # #0 on the front, #2 selected
    assert any("\u2800" < ch <= "\u28ff" for ch in plot)  # #3 and the staircase, in braille
    assert "2.7" in lines[2] and lines[-1].split()[0] == "84"  # axis ticks, 4% padding
    assert view.front_numbers == {0, 1, 2}


# ----------------------------------------------------------------------- view, speed
def test_progress_counts_and_hypervolume(storage):
    source = StorageSource("demo", storage)
    view = StudyView(source.records(), source.objectives, source.directions)
    progress = view.progress()
    assert (progress.counts["COMPLETE"], progress.counts["FAIL"], progress.counts["RUNNING"]) == (
        12,
        2,
        1,
    )
    hv = progress.hypervolume
    assert len(hv) == 12 and hv == sorted(hv) and 0 < hv[-1] <= 1
    assert progress.per_hour and progress.per_hour > 0


def synthetic_records(n: int, seed: int = 0) -> list[TrialRecord]:
    rnd = random.Random(seed)
    t0 = datetime(2026, 1, 1)
    out = []
    for i in range(n):
        hq, hkv = rnd.choice([1, 2, 4, 8]), rnd.choice([1, 2, 4, 8])
        layers = [
            {"n_q_heads": hq, "n_kv_heads": hkv, "pattern": "dense", "backend": "sdpa"}
            for _ in range(8)
        ]
        state = "COMPLETE" if i % 40 else rnd.choice(["FAIL", "RUNNING", "PRUNED"])
        values = None
        if state == "COMPLETE":
            values = {
                "val_loss": 2 + rnd.random() + 1 / hq,
                "throughput_tokens_per_s": 1e5 * (8 / hq) * rnd.uniform(0.8, 1.2),
            }
        attrs = {
            "layers": layers,
            "allocation": f"{hq}/{hkv} x8",
            "seed_variant": ["MHA", "GQA", "SQA", "sSQA", "xSQA"][i] if i < 5 else None,
            "device": {"name": rnd.choice(["NVIDIA H200", "NVIDIA A100"])},
            "analytics": {
                "params": 10_000_000 + hq,
                "kv_cache_bytes_per_token": 64 * hkv,
                "analytic_speedup_vs_mha": 8 / hq,
            },
            "curve": [[s, s * 1024, 5 - s / 10] for s in range(20)],
        }
        out.append(
            TrialRecord(
                i,
                state,
                values,
                {"all.heads": f"{hq}/{hkv}"},
                attrs,
                t0 + timedelta(seconds=10 * i),
                t0 + timedelta(seconds=10 * i + 9),
            )
        )
    return out


def test_5000_trials_render_in_the_snapshot_and_the_app():
    """A large study renders whole: every completed trial reaches the view, the snapshot and
    the app's table (how long it takes is a benchmark's business, not a unit test's)."""
    records = synthetic_records(5000)
    view = StudyView(records, OBJ, ["minimize", "maximize"])
    console = Console(file=io.StringIO(), width=160)
    console.print(snapshot(view, title="perf", axes=view.default_axes()))
    console.print(text_scatter(view, *view.default_axes(), 100, 30))
    completed = [r for r in records if r.state == "COMPLETE"]
    assert len(view.records) == 5000 and view.front
    assert {r.number for r in view.front} <= {r.number for r in completed}

    async def go():
        app = Dashboard(MemorySource("perf", OBJ, records), refresh_s=3600)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            app.view = app._make_view()  # what a refresh that found a new trial does
            app.redraw()
            await pilot.pause()
            return len(app.query_one(TrialTable).records)

    assert run(go()) == 5000
