"""sqa_nas.search.study_attrs: a study's user attrs stay small (what `optuna studies` prints
in one row) while its space, units, corpus summary, runs and confirm results are Optuna
artifacts beside the storage; `read_study_attrs` reads those and studies written the old way
(format 1: everything a user attr) alike; a record whose file is not there is counted, not
fatal, and `confirm` says where it belongs."""

from __future__ import annotations

import io
import json
import shutil

import optuna
import pytest
from rich.console import Console

from sqa_nas.cli import main
from sqa_nas.dashboard.view import StorageSource
from sqa_nas.errors import UserError
from sqa_nas.search.confirm import Confirmation, confirm
from sqa_nas.search.driver import Driver
from sqa_nas.search.noise import Noise
from sqa_nas.search.space import load_space, parse_space
from sqa_nas.search.study_attrs import (
    USER_ATTRS_BOUND,
    artifact_folder,
    read_study_attrs,
    write_record,
)
from sqa_nas.search.trial import TrialOutcome
from tests.search.test_driver import InProcess
from tests.search.test_search import ROOT, TINY

NOISE = {  # as a real noise trial reports it: full-precision floats
    "n": 3,
    "val_loss_std": 0.0458623039413719,
    "throughput_rel_std": 0.7498680732191817,
    "speedup_rel_std": 0.02467254825366087,
    "device": "NVIDIA H200",
    "trial": 0,
    "reason": None,
}


def _outcome(job):
    loss = 3.0 - 0.1 * job.number
    return TrialOutcome(
        job.number,
        "COMPLETE",
        {"val_loss": loss, "speedup_vs_mha": 1.0 + 0.1 * job.number},
        {"allocation": f"a{job.number}", "metrics": {"val_loss": loss}},
        compile_choice={"NVIDIA H200": True},
        noise=NOISE if job.noise_seeds else None,
    )


def _retrained(job):
    m = {"val_loss": 2.0, "val_loss_seeds": [1.9, 2.1]}
    return TrialOutcome(job.number, "COMPLETE", {}, {"metrics": m})


@pytest.fixture
def finished(tmp_path):
    """The quickstart space (4 layers, 5 seed variants) searched in two runs and confirmed,
    on a SQLite file: (study, storage URL, spec)."""
    spec = load_space(ROOT / "search_spaces" / "quickstart.yaml")
    url = f"sqlite:///{tmp_path}/runs/quickstart/study.db"
    for n_trials in (6, 8):  # two runs
        quiet = Console(file=io.StringIO())
        driver = Driver(spec, InProcess(_outcome), storage_url=url, console=quiet)
        driver.run(n_trials)
    confirm(driver.study, spec, InProcess(_retrained), top=2, seeds=2, url=url)
    return driver.study, url, spec


def test_a_finished_studys_user_attrs_stay_under_the_bound(finished):
    study, _, _ = finished
    row = json.dumps(study.user_attrs)  # what `optuna studies` prints in the study's row
    assert len(row.encode()) <= USER_ATTRS_BOUND, row
    assert set(study.user_attrs) == {
        "sqa_nas",
        "objectives",
        "space_hash",
        "corpus",
        "method",
        "noise",
        "compile_choice",
    }


def test_the_records_read_back_from_the_artifacts(finished, tmp_path):
    study, url, spec = finished
    attrs = read_study_attrs(study, url)
    assert attrs.folder == tmp_path / "runs" / "quickstart" / "study.db.artifacts"
    assert attrs.space == spec.model_dump(mode="json")
    assert attrs.units == dict(spec.units())
    assert attrs.corpus["kind"] == "embedded" and attrs.corpus["tokens"]["train"] > 0
    assert attrs.corpus["fingerprint"] == study.user_attrs["corpus"]["fingerprint"]
    assert len(attrs.runs) == 2 and attrs.runs[0]["ended"] <= attrs.runs[1]["ended"]
    assert attrs.runs[-1]["in_trial_fraction"] == 0.5
    assert attrs.confirm is not None and attrs.confirm["survivors"]
    assert attrs.missing == 0
    # The readers: noise, confirm and the dashboard's source take the one mapping.
    assert Noise.read(attrs.as_attrs()).val_loss_std == NOISE["val_loss_std"]
    assert Confirmation.read(attrs.as_attrs()) is not None
    source = StorageSource("quickstart", url)
    assert len(source.runs()) == 2 and source.study_attrs()["space"] == attrs.space
    # A later confirm is the one read.
    write_record(study, url, "confirm", {**attrs.confirm, "summary": "again"})
    assert read_study_attrs(study, url).confirm["summary"] == "again"


def test_a_study_written_the_old_way_still_reads(tmp_path, capsys):
    """Format 1: space, units, corpus, executor_stats and confirm as user attrs."""
    spec = parse_space({**TINY, "study": "old"})
    url = f"sqlite:///{tmp_path}/old.db"
    study = optuna.create_study(
        study_name="old", storage=url, directions=spec.directions, load_if_exists=True
    )
    old = {
        "objectives": list(spec.objectives),
        "space": spec.model_dump(mode="json"),
        "space_hash": spec.space_hash(),
        "units": dict(spec.units()),
        "corpus": {"kind": "embedded", "tokens": {"train": 10}, "fingerprint": "f" * 64},
        "method": 2,
        "executor_stats": [{"ended": "2025-01-01T00:00:00+00:00", "wall_s": 3.0}],
        "confirm": {"summary": "1 of 1 front members", "survivors": [0]},
        "sqa_nas": {"format": 1, "version": "0.1.0"},
    }
    for key, value in old.items():
        study.set_user_attr(key, value)
    attrs = read_study_attrs(study, url)
    assert (attrs.space, attrs.units, attrs.corpus) == (old["space"], old["units"], old["corpus"])
    assert attrs.runs == old["executor_stats"] and attrs.confirm == old["confirm"]
    assert not (tmp_path / "old.db.artifacts").exists()  # reading creates nothing
    study.add_trial(
        optuna.trial.create_trial(values=[1.0, 2.0], user_attrs={"allocation": "4/4 x2"})
    )
    assert main(["dashboard", "old", "--storage", url, "--once"]) == 0
    assert "1 of 1 front members" in capsys.readouterr().out


def test_records_whose_files_are_gone_are_counted_and_confirm_says_where(finished, capsys):
    study, url, _ = finished
    folder = read_study_attrs(study, url).folder
    assert folder is not None
    shutil.rmtree(folder)  # the database copied without its folder
    attrs = read_study_attrs(study, url)
    assert attrs.space is None and attrs.runs == [] and attrs.missing == 4
    assert main(["confirm", "quickstart", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no search space to retrain from" in err
    assert f"its records belong in {folder}" in err


def test_where_records_go():
    assert str(artifact_folder("sqlite:///runs/x/study.db", "x")) == "runs/x/study.db.artifacts"
    assert str(artifact_folder("journal:a/b.journal", "x")) == "a/b.journal.artifacts"
    assert str(artifact_folder("postgresql://u@h/db", "x")) == "runs/x/artifacts"
    assert artifact_folder("sqlite://", "x") is None and artifact_folder(None, "x") is None


def test_a_storage_without_files_keeps_the_records_as_user_attrs():
    study = optuna.create_study()
    for i in range(2):
        write_record(study, None, "run", {"n": i})
    write_record(study, "sqlite://", "confirm", {"summary": "s"})
    runs = [{"n": 0}, {"n": 1}]
    assert study.user_attrs == {"executor_stats": runs, "confirm": {"summary": "s"}}
    assert read_study_attrs(study, None).runs == runs


def test_a_folder_that_cannot_be_written_is_one_user_error(tmp_path):
    (tmp_path / "s.db.artifacts").write_text("a file where the folder goes")
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(UserError, match="cannot store the study's run record in .*s.db.artifacts"):
        write_record(study, f"sqlite:///{tmp_path}/s.db", "run", {"n": 0})
