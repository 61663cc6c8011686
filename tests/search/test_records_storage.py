"""sqa_nas.search.records and .storage around the trial record: storages opened with
heartbeats only when asked, studies of another format refused by name, objective names read
from the metric names or the study attr, and records filtered to one GPU type."""

from __future__ import annotations

import optuna
import pytest

from sqa_nas.errors import UserError
from sqa_nas.search.records import (
    FORMAT,
    TrialRecord,
    check_format,
    objective_names,
    of_gpu_type,
)
from sqa_nas.search.storage import open_storage


@pytest.mark.parametrize("heartbeat", [True, False])
def test_database_storages_beat_only_when_asked(tmp_path, heartbeat):
    storage = open_storage(f"sqlite:///{tmp_path}/a/s.db", heartbeat=heartbeat)
    assert (storage.get_heartbeat_interval() is not None) is heartbeat
    assert (tmp_path / "a").is_dir()


def test_a_study_of_another_format_or_writer_is_refused():
    study = optuna.create_study()
    with pytest.raises(UserError, match="was left half-created .*: rerun the search command"):
        check_format(study, "here")  # no mark, no trial: a driver stopped creating it
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    with pytest.raises(UserError, match="was not written by sqa-nas"):
        check_format(study, "here")
    study.set_user_attr("sqa_nas", {"format": FORMAT + 1, "version": "9"})
    with pytest.raises(UserError, match=f"has format {FORMAT + 1} \\(sqa-nas 9\\)"):
        check_format(study, "here")
    study.set_user_attr("sqa_nas", {"format": FORMAT, "version": "9"})
    check_format(study, "here")


def test_objective_names_come_from_metric_names_else_the_attr():
    study = optuna.create_study(directions=["minimize", "maximize"])
    study.set_user_attr("objectives", ["old_a", "old_b"])
    assert objective_names(study) == ["old_a", "old_b"]
    study.set_metric_names(["val_loss", "speedup_vs_mha"])
    assert objective_names(study) == ["val_loss", "speedup_vs_mha"]


def test_records_of_one_gpu_type():
    def on(number, name):
        return TrialRecord(number, "COMPLETE", {}, {}, {"device": {"name": name}})

    records = [on(0, "H200"), on(1, "A100"), on(2, "H200"), TrialRecord(3, "FAIL", None, {})]
    assert [r.number for r in of_gpu_type(records, "H200")[0]] == [0, 2]
    assert of_gpu_type(records, None) == (records, ["A100", "H200"])
    with pytest.raises(UserError, match="GPU types in this study: 'A100', 'H200'"):
        of_gpu_type(records, "V100")


def test_a_schema_created_at_the_same_moment_by_another_process_is_retried(tmp_path, monkeypatch):
    """Two processes creating one SQLite file's schema race for Optuna's version row; the
    loser sees IntegrityError, and the schema is whole a moment later: open it again."""
    from sqlalchemy.exc import IntegrityError

    from sqa_nas.search import storage as records

    url = f"sqlite:///{tmp_path}/s.db"
    real, calls = records.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            real(*args, **kwargs)  # the other process wins: the schema is there now
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE"))
        return real(*args, **kwargs)

    monkeypatch.setattr(records, "RDBStorage", racing)
    monkeypatch.setattr(records.time, "sleep", lambda s: None)
    storage = open_storage(url)
    assert len(calls) == 2 and optuna.create_study(storage=storage).study_name

    def always(*args, **kwargs):
        raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE"))

    monkeypatch.setattr(records, "RDBStorage", always)
    with pytest.raises(UserError, match="schema kept changing"):
        open_storage(url)
