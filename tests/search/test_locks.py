"""sqa_nas.search.locks without a database server: `reap_reason` decided case by case (this
driver's own trial, a live or ended driver on this host, a reused pid, a stale heartbeat, an
unsigned trial with and without the study lock, another machine), `driver_alive`,
`proc_start` against /proc's clock, `uses_heartbeat`, the file lock of SQLite storages, and
`stale_trial_ids` on a SQLite storage with heartbeats (Optuna's private interface it uses is
checked against the installed Optuna: a change fails loudly, never silently)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from sqa_nas.search.locks import (
    SETUP_GRACE_S,
    driver_alive,
    proc_start,
    reap_reason,
    stale_trial_ids,
    study_lock,
    uses_heartbeat,
)
from sqa_nas.search.storage import open_storage

HOST = socket.gethostname()
NOW = datetime(2025, 1, 1, 12, 0, 0)
ME = {"host": HOST, "pid": os.getpid(), "id": "me", "proc_start": proc_start(os.getpid())}


@pytest.fixture(scope="module")
def ended_pid() -> int:
    """The pid of a process on this host that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _running(
    driver: dict | None, *, age_s: float = 3600, number: int = 3, trial_id: int = 17
) -> FrozenTrial:
    """A RUNNING trial whose storage id differs from its number (as in a storage holding
    several studies)."""
    return FrozenTrial(
        number=number,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=NOW - timedelta(seconds=age_s),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={} if driver is None else {"driver": driver},
        system_attrs={},
        intermediate_values={},
        trial_id=trial_id,
    )


def _reason(trial, *, stale=(), locked=True, heartbeat=False):
    return reap_reason(trial, ME, stale=set(stale), locked=locked, heartbeat=heartbeat, now=NOW)


def test_this_drivers_own_trial_is_never_reaped(ended_pid):
    mine = _running({**ME, "pid": ended_pid})  # even if its pid looks gone
    assert _reason(mine, stale=[17]) is None


def test_on_this_host_the_process_decides(ended_pid):
    live = {"host": HOST, "pid": os.getpid(), "id": "other", "proc_start": ME["proc_start"]}
    assert _reason(_running(live), stale=[17], heartbeat=True) is None  # alive beats stale
    assert (
        _reason(_running({**live, "pid": ended_pid}))
        == f"reaped: its driver ({HOST} pid {ended_pid}) is gone"
    )
    reused = {**live, "proc_start": ME["proc_start"] + 1}  # the pid now runs another process
    assert _reason(_running(reused)) == f"reaped: its driver ({HOST} pid {os.getpid()}) is gone"


def test_on_another_host_the_heartbeat_decides():
    there = {"host": "elsewhere", "pid": os.getpid(), "id": "other"}  # a pid alive here
    assert _reason(_running(there), heartbeat=True) is None
    assert (
        _reason(_running(there), stale=[17], heartbeat=True)
        == f"reaped: its driver (elsewhere pid {os.getpid()}) stopped sending heartbeats"
    )
    assert _reason(_running(there), stale=[3], heartbeat=True) is None  # ids, not numbers
    # Without heartbeats (a journal file) nothing tells it lives: another host's is gone.
    assert _reason(_running(there)) == f"reaped: its driver (elsewhere pid {os.getpid()}) is gone"


def test_an_unsigned_trial_gets_a_grace_period_only_without_the_lock():
    young, old = _running(None, age_s=10), _running(None, age_s=SETUP_GRACE_S + 10)
    assert _reason(young, locked=False) is None
    assert _reason(old, locked=False) == "reaped: its driver (unknown) is gone"
    assert _reason(young, locked=True) == "reaped: its driver (unknown) is gone"
    assert _reason(young, locked=True, heartbeat=True) == "reaped: its driver (unknown) is gone"


def test_driver_alive_checks_pid_and_start_time(ended_pid):
    assert driver_alive({"pid": os.getpid()})  # no start time recorded: the pid decides
    assert driver_alive({"pid": os.getpid(), "proc_start": ME["proc_start"]})
    assert not driver_alive({"pid": os.getpid(), "proc_start": ME["proc_start"] + 1})
    assert not driver_alive({"pid": ended_pid})
    assert not driver_alive({}) and not driver_alive({"pid": None})


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_proc_start_is_the_start_time_in_clock_ticks_since_boot(ended_pid):
    uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    mine = proc_start(os.getpid())
    assert 0 < mine <= (uptime_s + 1) * ticks
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert mine <= proc_start(child.pid) <= (uptime_s + 60) * ticks
    finally:
        child.kill()
        child.wait()
    assert proc_start(ended_pid) is None


def test_only_database_urls_use_heartbeats():
    assert uses_heartbeat("sqlite:///runs/x/study.db")
    assert uses_heartbeat("postgresql://u@h/db")
    assert not uses_heartbeat("journal:runs/x.journal") and not uses_heartbeat("runs/x.log")
    assert not uses_heartbeat("journal:///tmp/x.journal")


def test_sqlite_and_journal_storages_lock_a_file_next_to_them(tmp_path):
    with study_lock(None, f"sqlite:///{tmp_path}/a/s.db", "study") as locked:
        assert locked and (tmp_path / "a" / "s.db.sqa-nas.lock").exists()
    with study_lock(None, f"journal:{tmp_path}/j.journal", "study") as locked:
        assert locked and (tmp_path / "j.journal.sqa-nas.lock").exists()
    with study_lock(None, "sqlite://", "study") as locked:  # in memory: nothing to share
        assert not locked


def _study_with_heartbeats(tmp_path, *, heartbeat=True):
    """A SQLite study (opened as the driver opens it) with two RUNNING trials that beat once;
    the first one's heartbeat is then moved 5 minutes back, past the 60 s grace period."""
    url = f"sqlite:///{tmp_path}/s.db"
    storage = open_storage(url, heartbeat=heartbeat)
    optuna.create_study(study_name="other", storage=storage).ask()  # storage ids != numbers
    study = optuna.create_study(study_name="s", storage=storage)
    stale, fresh = study.ask(), study.ask()
    if heartbeat:
        for trial in (stale, fresh):
            storage.record_heartbeat(trial._trial_id)
        with storage.engine.begin() as con:
            con.execute(
                sqlalchemy.text(
                    "UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-5 minutes') "
                    "WHERE trial_id = :t"
                ),
                {"t": stale._trial_id},
            )
    return url, storage, study, stale


def test_stale_trials_are_those_whose_heartbeat_is_past_the_grace_period(tmp_path):
    url, storage, study, stale = _study_with_heartbeats(tmp_path)
    assert stale_trial_ids(storage, study, url) == [stale._trial_id]
    assert study.get_trials()[stale.number].state == TrialState.RUNNING  # found, not failed
    assert stale_trial_ids(storage, study, f"journal:{tmp_path}/j.journal") == []


def test_without_heartbeats_no_trial_is_stale(tmp_path):
    url, storage, study, _ = _study_with_heartbeats(tmp_path, heartbeat=False)
    assert stale_trial_ids(storage, study, url) == []


@pytest.mark.parametrize("change", ["removed", "new arguments"])
def test_a_changed_optuna_heartbeat_interface_fails_loudly(tmp_path, monkeypatch, change):
    """Were Optuna to rename or change the private call, reaping must stop with an error that
    names it, not go on without cross-host reaping."""
    url, storage, study, _ = _study_with_heartbeats(tmp_path)
    if change == "removed":
        monkeypatch.delattr(RDBStorage, "_get_stale_trial_ids")
    else:
        monkeypatch.setattr(RDBStorage, "_get_stale_trial_ids", lambda self, study_id, now: [])
    with pytest.raises(RuntimeError, match="changed RDBStorage._get_stale_trial_ids"):
        stale_trial_ids(storage, study, url)
