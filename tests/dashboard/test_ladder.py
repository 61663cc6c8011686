"""The multi-fidelity rung ladder in the dashboard (`sqa_nas.dashboard.ladder`): the counts
per rung from hand-made records, the ladder the stored search space plans, the trials table's
rung marks, `--json`'s ``rungs``, the `--once` text, the app's ladder panel (and its one line
on an 80x24 screen), a promotion redrawn live, and none of it for a study without rungs."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
from pathlib import Path

import optuna
import pytest

from sqa_nas.cli import main
from sqa_nas.dashboard.app import Dashboard
from sqa_nas.dashboard.ladder import RungRow, ladder, last_rung, planned, state_label
from sqa_nas.dashboard.table import TrialTable
from sqa_nas.dashboard.view import MemorySource, StorageSource, StudyView
from sqa_nas.search.records import FORMAT, OBJECTIVES, TrialRecord
from sqa_nas.search.space import parse_space
from sqa_nas.search.storage import open_storage
from tests.dashboard.test_dashboard import screen_text
from tests.fakestudy import make_study

OBJ = ["val_loss", "throughput_tokens_per_s"]
LADDER = [1_000_000, 3_000_000, 9_000_000]
SPACE = {
    "search": {"n_q_heads": ["H", "H/2", "H/4"], "n_kv_heads": ["H/2", 1]},
    "model": {"d_model": 64, "n_layers": 4, "n_heads": 8, "ffn_dim": 128, "seq_len": 128},
    "budget": {
        "train": {"tokens": LADDER[-1]},
        "early_stopping": {"scheduler": "mo_asha", "eta": 3, "min_tokens": LADDER[0]},
    },
}
# number -> (Optuna state, its decision at rung 0, 1, ...): what a mo_asha search leaves
PLAN = [
    ("COMPLETE", "baseline", "baseline", "complete"),  # 0 MHA: baselines train through
    ("COMPLETE", "baseline", "baseline", "complete"),  # 1 GQA
    ("COMPLETE", "promoted", "promoted", "complete"),  # 2
    ("COMPLETE", "promoted", "promoted", "complete"),  # 3
    ("PRUNED", "stopped"),  # 4
    ("PRUNED", "stopped"),  # 5
    ("PRUNED", "stopped"),  # 6
    ("PRUNED", "promoted", "stopped"),  # 7
    ("RUNNING", "paused"),  # 8
    ("RUNNING", "promoted", "paused"),  # 9
    ("RUNNING", "promoted", "promoted"),  # 10: training on to the full budget
    ("RUNNING",),  # 11: its first segment in flight, no rung yet
    ("FAIL",),  # 12: repeats trial 4's layout (no rungs of its own)
]
# (rung, tokens, trials, promoted, stopped, paused, top) for PLAN
EXPECTED = [
    RungRow(0, LADDER[0], tuple(range(11)), 7, 3, 1, False),
    RungRow(1, LADDER[1], (0, 1, 2, 3, 7, 9, 10), 5, 1, 1, False),
    RungRow(2, LADDER[2], (0, 1, 2, 3), 0, 0, 0, True),
]
TRAINED = 9_000_448  # a full-budget trial's tokens: whole steps, a little off the plan


def rung_entries(decisions, tokens=LADDER, loss: float = 2.5) -> list[dict]:
    """A trial's stored rungs (`records.Rung` fields) with these decisions; the last rung's
    tokens are what it trained (`TRAINED` at the full budget)."""
    out = []
    for k, decision in enumerate(decisions):
        seen = TRAINED if k == len(tokens) - 1 else tokens[k]
        values = {"val_loss": loss + 0.5 / (k + 1), "throughput_tokens_per_s": 1e5}
        out.append({"rung": k, "tokens": seen, "values": values, "decision": decision})
    return out


def planned_records() -> list[TrialRecord]:
    """`PLAN` as hand-made records."""
    out = []
    for number, (state, *decisions) in enumerate(PLAN):
        attrs: dict = {"rungs": rung_entries(decisions)} if decisions else {}
        if number == 12:
            attrs["duplicate_of"] = 4
        if state == "PRUNED":
            attrs["fail_reason"] = f"stopped at rung {len(decisions) - 1}: not in the top 1/3"
        values = {"val_loss": 2.5 - number / 100, "throughput_tokens_per_s": 1e5 + number}
        out.append(TrialRecord(number, state, values if state == "COMPLETE" else None, {}, attrs))
    return out


# ------------------------------------------------------------------------ pure functions
def test_the_ladder_counts_who_reached_each_rung_and_what_was_decided_there():
    assert ladder(planned_records(), LADDER) == EXPECTED


def test_without_a_plan_the_rungs_and_their_tokens_come_from_the_records():
    rows = ladder(planned_records())
    # the top rung's tokens are what the trials trained; it is the top: trials completed there
    assert [(x.rung, x.tokens, x.top) for x in rows] == [
        (0, LADDER[0], False),
        (1, LADDER[1], False),
        (2, TRAINED, True),
    ]
    assert [x.trials for x in rows] == [x.trials for x in EXPECTED]
    # only rung 0 reached so far: no rung is known to be the full budget
    early = ladder([TrialRecord(0, "RUNNING", None, {}, {"rungs": rung_entries(["paused"])})])
    assert [(x.reached, x.paused, x.top) for x in early] == [(1, 1, False)]


def test_a_planned_ladder_lists_rungs_no_trial_reached_yet():
    rows = ladder(planned_records()[8:9], LADDER)  # one trial, paused at rung 0
    assert [(x.rung, x.tokens, x.reached, x.paused, x.top) for x in rows] == [
        (0, LADDER[0], 1, 1, False),
        (1, LADDER[1], 0, 0, False),
        (2, LADDER[2], 0, 0, True),
    ]
    assert ladder([], LADDER)[0].trials == () and ladder([]) == []


def test_a_trial_paused_then_failed_waits_no_more():
    failed = TrialRecord(0, "FAIL", None, {}, {"rungs": rung_entries(["paused"])})
    (row,) = ladder([failed])
    assert (row.reached, row.paused, row.promoted, row.stopped) == (1, 0, 0, 0)


def test_a_repeat_of_a_layout_is_left_out_even_with_rungs():
    original = TrialRecord(0, "PRUNED", None, {}, {"rungs": rung_entries(["stopped"])})
    attrs = {"duplicate_of": 0, "rungs": rung_entries(["stopped"])}
    repeat = TrialRecord(1, "PRUNED", None, {}, attrs)
    assert last_rung(repeat) is None and state_label(repeat) == "PRUNED"
    assert [(x.trials, x.stopped) for x in ladder([original, repeat])] == [((0,), 1)]


def test_the_plan_is_read_from_the_stored_search_space():
    space = parse_space(SPACE).model_dump(mode="json")  # as `search` stores it
    got = planned(space)
    assert got is not None and got[1] == LADDER and got[0].eta == 3
    off = parse_space({**SPACE, "budget": {"train": {"tokens": LADDER[-1]}}})
    assert planned(off.model_dump(mode="json")) is None  # scheduler: none
    # a space this version cannot read (another version wrote it), or none at all
    odd = {"budget": {"train": {"tokens": 9}, "early_stopping": {"scheduler": "mo_asha", "x": 1}}}
    assert planned(odd) is None and planned(None) is None and planned({"budget": 3}) is None


def test_rung_reached_and_the_state_label_of_each_trial():
    records = planned_records()
    reached = [(x.rung, x.decision) if (x := last_rung(r)) else None for r in records]
    assert reached == [(2, "complete")] * 4 + [(0, "stopped")] * 3 + [
        (1, "stopped"),
        (0, "paused"),
        (1, "paused"),
        (1, "promoted"),
        None,  # no rung yet
        None,  # a repeat of trial 4's layout
    ]
    labels = [state_label(r) for r in records]
    assert labels[4] == "PRUNED r0" and labels[7] == "PRUNED r1"
    assert labels[8] == "PAUSED r0" and labels[9] == "PAUSED r1"
    assert labels[:4] == ["COMPLETE"] * 4 and labels[10:] == ["RUNNING", "RUNNING", "FAIL"]
    # a trial pruned without rungs (another pruner) keeps its plain state
    assert state_label(TrialRecord(0, "PRUNED", None, {}, {})) == "PRUNED"


def test_the_view_and_table_cells_carry_the_ladder():
    attrs = {"space": parse_space(SPACE).model_dump(mode="json")}
    view = StudyView(planned_records(), OBJ, ["minimize", "maximize"], study_attrs=attrs)
    assert view.ladder == EXPECTED and view.schedule is not None
    assert view.cells(view.by_number[7])[1][1] == "PRUNED r1"
    assert [r.number for r in view.sorted_records("state")][5:7] == [8, 9]  # PAUSED r0, r1
    plain = StudyView(planned_records()[:4], OBJ, ["minimize", "maximize"])
    assert plain.ladder[-1].trials == (0, 1, 2, 3) and plain.schedule is None


# ----------------------------------------------------------------- a study in a storage
@pytest.fixture(scope="module")
def ladder_db(tmp_path_factory):
    """Two studies in one SQLite file: ``asha``, laid out as `PLAN` with the search space
    stored, its trials' layouts and costs taken from ``plain`` (the fake study of
    `make_study`, which used no scheduler)."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("db")
    url = f"sqlite:///{folder / 'study.db'}"
    source = make_study(url, name="plain", n=len(PLAN), failed=0, running=0)
    study = optuna.create_study(
        study_name="asha", storage=open_storage(url), directions=[OBJECTIVES[o] for o in OBJ]
    )
    study.set_metric_names(OBJ)
    study.set_user_attr("sqa_nas", {"format": FORMAT, "version": "test"})
    study.set_user_attr("objectives", OBJ)
    study.set_user_attr("space", parse_space(SPACE).model_dump(mode="json"))
    for number, ((state, *decisions), like) in enumerate(zip(PLAN, source.trials)):
        attrs = dict(like.user_attrs)
        if number > 1:
            attrs["seed_variant"] = None  # the first two are the baselines (MHA, GQA)
        if decisions:
            attrs["rungs"] = rung_entries(decisions, loss=like.values[0])
        if state == "PRUNED":
            attrs["fail_reason"] = (
                f"stopped at rung {len(decisions) - 1} ({LADDER[len(decisions) - 1]:,} tokens): "
                "not in the top 1/3 of its rung"
            )
        if number == 12:
            attrs["duplicate_of"] = 4
        study.add_trial(
            optuna.trial.create_trial(
                state=getattr(optuna.trial.TrialState, state),
                params=like.params,
                distributions=like.distributions,
                values=like.values if state == "COMPLETE" else None,
                user_attrs=attrs,
            )
        )
    yield url
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def writable(ladder_db, tmp_path):
    copy = tmp_path / "study.db"
    shutil.copy(ladder_db.removeprefix("sqlite:///"), copy)
    return f"sqlite:///{copy}"


def test_json_writes_the_rungs_and_an_empty_list_without_a_scheduler(ladder_db, tmp_path):
    out = tmp_path / "front.json"
    assert main(["dashboard", "asha", "--storage", ladder_db, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["rungs"] == [x.as_json() for x in EXPECTED]
    assert doc["rungs"][0] == {
        "rung": 0,
        "tokens": LADDER[0],
        "reached": 11,
        "promoted": 7,
        "stopped": 3,
        "paused": 1,
        "trials": list(range(11)),
    }
    assert {t["number"] for t in doc["front"]} <= {0, 1, 2, 3}  # full-budget trials only
    plain = tmp_path / "plain.json"
    assert main(["dashboard", "plain", "--storage", ladder_db, "--json", str(plain)]) == 0
    assert json.loads(plain.read_text())["rungs"] == []


def test_once_prints_the_ladder_under_the_front(ladder_db, capsys):
    assert main(["dashboard", "asha", "--storage", ladder_db, "--once"]) == 0
    out = capsys.readouterr().out
    ladder_part = out.split("Rung ladder · eta 3: the top 1/3 of a rung go on")[1]
    lines = [line.split() for line in ladder_part.splitlines() if line.startswith("rung ")]
    assert lines == [
        "rung 0 1M tok 11 reached 7 on 3 stopped 1 paused".split(),
        "rung 1 3M tok 7 reached 5 on 1 stopped 1 paused".split(),
        "rung 2 9M tok 4 reached full budget: #0 #1 #2 #3".split(),
    ]
    assert out.index("Pareto front (") < out.index("Rung ladder")
    assert main(["dashboard", "plain", "--storage", ladder_db, "--once"]) == 0
    assert "ladder" not in capsys.readouterr().out.lower()


def run_app(source, size: tuple[int, int], select: int | None = None):
    """(whether the ladder panel shows, the screen's text, the table's rows)."""

    async def go():
        app = Dashboard(source, refresh_s=60)
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            if select is not None:
                app.select(select)
                await pilot.pause()
            table = app.query_one(TrialTable)
            rows = [table.row_text(i) for i in range(len(table.records))]
            return app.query_one("#ladder").display, screen_text(app), rows

    return asyncio.run(go())


def test_the_app_shows_the_ladder_panel_and_the_rungs_in_the_table(ladder_db):
    shown, text, rows = run_app(StorageSource("asha", ladder_db), (160, 48), select=7)
    assert shown and "rung ladder · eta 3" in text
    for line in ("rung 0  1M tok  11 reached  7 on  3 stopped  1 paused",
                 "rung 2  9M tok   4 reached  full budget: #0 #1 #2 #3"):  # fmt: skip
        assert line in text
    assert rows[7].split()[:2] == ["7", "PRUNED"] and rows[7].split()[2] == "r1"
    assert rows[8].split()[1:3] == ["PAUSED", "r0"] and rows[10].split()[1] == "RUNNING"
    # the detail of trial 7: pruned (not failed), and its rungs
    assert "pruned: stopped at rung 1 (3,000,000 tokens)" in text
    assert "rungs 0: 1M tok promoted → 1: 3M tok stopped" in text


def test_a_study_without_rungs_has_no_ladder_panel(ladder_db):
    shown, text, rows = run_app(StorageSource("plain", ladder_db), (160, 48))
    assert not shown and "rung ladder" not in text
    assert not any("PRUNED" in row or "PAUSED" in row for row in rows)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_on_a_smaller_screen_the_ladder_is_one_line_of_the_search_panel(ladder_db, size):
    shown, text, _ = run_app(StorageSource("asha", ladder_db), size)
    lines = text.splitlines()
    assert len(lines) == size[1] and all(len(line) <= size[0] for line in lines)
    assert not shown and "rung ladder" not in text
    line = "11 → 7 → 4 reached (1M → 9M tok), 4 stopped, 2 paused"
    if size[0] < 100:  # the narrow panel beside the scatter: cut at its edge
        line = "11 → 7 → 4 reached"
    assert re.search(rf"│ rungs +{re.escape(line)}", text)
    # the scatter keeps its axes and 10 plot rows; the table shows 5 trials (test_screens)
    assert sum(1 for line in lines if "┤" in line) >= 3
    assert sum(1 for line in lines if "COMPLETE" in line or "PRUNED" in line) >= 5


def test_a_promotion_is_redrawn_though_no_state_changed(writable):
    async def go():
        app = Dashboard(StorageSource("asha", writable), refresh_s=0.2)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            before = app.view.ladder[0].paused
            # another driver promotes paused trial 8: it stays RUNNING, its rung 0 changes
            storage = open_storage(writable)
            study_id = storage.get_study_id_from_name("asha")
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, 8)
            storage.set_trial_user_attr(trial_id, "rungs", rung_entries(["promoted"]))
            for _ in range(50):  # up to 10 s; one refresh interval is 0.2 s
                await pilot.pause(0.2)
                if app.reloads:
                    break
            await pilot.pause()
            return before, app.view.ladder[0], screen_text(app)

    before, row, text = asyncio.run(go())
    assert before == 1 and (row.paused, row.promoted) == (0, 8)
    assert "rung 0  1M tok  11 reached  8 on  3 stopped  0 paused" in text


def test_memory_source_with_rungs_and_no_space_shows_the_recorded_ladder():
    shown, text, _ = run_app(MemorySource("mem", OBJ, planned_records()), (160, 48))
    assert shown and "rung ladder ─" in text and "rung ladder · eta" not in text  # no plan: no eta
    assert "rung 2  9M tok   4 reached  full budget: #0 #1 #2 #3" in text
