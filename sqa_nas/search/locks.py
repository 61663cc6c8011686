"""Drivers sharing one study: the per-study lock, and whether a trial's driver still lives.

Steps that read and then write the study (creating it, enqueueing the seed trials, reaping,
checking the budget before an ask) run under `study_lock`, so drivers started together
neither enqueue a seed twice nor overrun the trial budget.

A RUNNING trial carries its driver's identity (`driver_identity`: host, pid, process start
time). Whether that driver is gone is decided by its process on the same host
(`driver_alive`: the pid runs and started when recorded) or, on a database storage shared
across machines, by Optuna's heartbeat (`stale_trial_ids`, fed by `start_heartbeat`).
`reap_reason` puts these together: a live driver's trial is never reaped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage

from sqa_nas.errors import UserError
from sqa_nas.search.storage import storage_file

try:
    import fcntl
except ImportError:  # Windows: no file lock, one driver per study
    fcntl = None  # type: ignore[assignment]  # the module or None, tested before use

SETUP_GRACE_S = 120.0  # without a study lock, a trial this young may be unsigned yet
HEARTBEAT_EVERY_S = 5.0


@contextlib.contextmanager
def study_lock(storage: Any, url: str, name: str) -> Iterator[bool]:
    """Serialise a read-then-write step on study `name` among drivers sharing it.

    PostgreSQL: a session advisory lock (released if the driver dies with its connection);
    MySQL: GET_LOCK; SQLite and journal files: an flock on a file next to them (drivers on
    one host; neither is shared across machines). Other storages: no lock.

    Args:
        storage: the opened Optuna storage (its engine is reused), or None before it is
            opened (Optuna creating its tables in a fresh database).
        url: the storage URL.
        name: what is locked (the study name, or "schema").
    Yields:
        whether a lock is held.
    """
    key = f"sqa-nas:{name}"
    if url.startswith(("postgresql", "postgres://", "mysql")):
        engine = getattr(storage, "engine", None)
        try:
            if engine is None:
                engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            conn = engine.connect()
        except Exception:  # no server, no driver module: opening the storage says so
            yield False
            return
        if url.startswith("mysql"):
            lock = ("SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)")
            arg: Any = hashlib.sha256(key.encode()).hexdigest()[:60]
        else:
            lock = ("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)")
            arg = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        with conn:
            conn.execute(sqlalchemy.text(lock[0]), {"k": arg})
            try:
                yield True
            finally:
                conn.execute(sqlalchemy.text(lock[1]), {"k": arg})
                conn.commit()
        return
    path = storage_file(url)
    if path is None or fcntl is None:
        yield False
        return
    lock_path = Path(f"{path}.sqa-nas.lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        # Read-only is enough for flock: a lock file that is there need not be writable.
        fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(
            f"cannot take the study lock {lock_path}: {exc.strerror or exc} (its folder "
            "must be writable)"
        ) from None
    with os.fdopen(fd) as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield True  # closing the file releases the lock


def uses_heartbeat(url: str) -> bool:
    """Whether a storage URL is a database whose heartbeats tell live drivers on other
    machines apart (journal files and in-memory storages are one host's)."""
    return "://" in url and not url.startswith("journal:")


def driver_identity() -> dict[str, Any]:
    """Who this driver is, as recorded on the trials it asks (user attr ``driver``): host,
    pid, a random id, the process start time (`proc_start`) and the UTC start."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "id": uuid.uuid4().hex[:10],
        "proc_start": proc_start(os.getpid()),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def proc_start(pid: int) -> int | None:
    """When a process started (clock ticks since boot, Linux), to tell a reused pid apart.
    None where /proc does not say (the process is gone, or another OS)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def driver_alive(d: dict[str, Any]) -> bool:
    """Whether the driver `d` (a `driver_identity` recorded on this host) still runs."""
    pid = d.get("pid")
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    recorded, now = d.get("proc_start"), proc_start(pid)
    return recorded is None or now is None or recorded == now


def stale_trial_ids(storage: Any, study: optuna.Study, url: str) -> list[int]:
    """RUNNING trials (storage ids) whose heartbeat is older than the storage's grace period:
    what Optuna's `fail_stale_trials` would fail, found before failing them so that they can
    still be marked, and so that paused trials (`Scheduler.rescue`) and trials of a live
    driver on this host are spared. Empty unless `url` is a database (`uses_heartbeat`)
    opened with heartbeats.

    Optuna has no public call that names stale trials without failing them, so this is the
    one place that calls its private `RDBStorage._get_stale_trial_ids` (Optuna 4.0-5.x);
    `RuntimeError` names it if Optuna changed it, rather than cross-host reaping silently
    stopping (tests/search/test_locks.py checks it against the installed Optuna)."""
    if not (
        uses_heartbeat(url)
        and isinstance(storage, RDBStorage)
        and storage.get_heartbeat_interval() is not None
    ):
        return []
    study_id = storage.get_study_id_from_name(study.study_name)
    try:
        stale = storage._get_stale_trial_ids(study_id)
    except (AttributeError, NotImplementedError, TypeError) as exc:  # renamed or changed
        raise RuntimeError(
            f"optuna {optuna.__version__} changed RDBStorage._get_stale_trial_ids, which "
            f"sqa-nas uses to find trials of drivers on other machines that stopped ({exc}); "
            "install the optuna version pyproject.toml names"
        ) from exc
    return list(stale)


def reap_reason(
    trial: optuna.trial.FrozenTrial,
    identity: dict[str, Any],
    *,
    stale: set[int],
    locked: bool,
    heartbeat: bool,
    now: datetime,
) -> str | None:
    """Why the RUNNING `trial` is to be failed and re-queued, or None while its driver may
    live.

    Args:
        trial: a RUNNING trial; its user attr ``driver`` names who asked it.
        identity: this driver's `driver_identity` (its own trials are never reaped).
        stale: storage trial ids whose heartbeat is stale (`stale_trial_ids`).
        locked: whether the caller holds the study lock (then an unsigned trial lost its
            driver: drivers ask and sign a trial in one locked step).
        heartbeat: whether the storage's heartbeats decide for other hosts (`uses_heartbeat`).
        now: the local naive time Optuna stores trial start times in.
    Returns:
        the ``fail_reason`` to record, or None.
    """
    d = trial.user_attrs.get("driver") or {}
    same_host = d.get("host") == identity["host"]
    who = f"{d.get('host')} pid {d.get('pid')}" if d else "unknown"
    if d.get("id") == identity["id"]:
        return None
    if same_host and driver_alive(d):
        return None  # a live driver on this machine: its process is the authority
    if trial._trial_id in stale:
        return f"reaped: its driver ({who}) stopped sending heartbeats"
    if (
        not d
        and not locked
        and trial.datetime_start
        and (now - trial.datetime_start).total_seconds() < SETUP_GRACE_S
    ):
        # Without a lock, it may have been asked a moment ago by a driver that has not
        # written who it is yet.
        return None
    if not same_host and heartbeat and d:
        return None  # another machine, heartbeat fresh (or none yet)
    return f"reaped: its driver ({who}) is gone"


def start_heartbeat(
    storage: Any, study: optuna.Study, running: Callable[[], Iterable[int]]
) -> threading.Event:
    """Record a heartbeat every few seconds for the trials `running()` numbers, in a daemon
    thread, until the returned event is set. The caller starts it only on a storage that
    `uses_heartbeat`."""
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_EVERY_S):
            try:
                numbers = list(running())  # changes under us: may raise
                trials = study.get_trials(deepcopy=False)
                for number in numbers:
                    storage.record_heartbeat(trials[number]._trial_id)
            except Exception:  # a transient error must not stop the heartbeat
                pass

    threading.Thread(target=beat, daemon=True, name="sqa-nas-heartbeat").start()
    return stop


def reap_trials(
    study: optuna.Study,
    storage: Any,
    *,
    stale: set[int],
    identity: dict[str, Any],
    locked: bool,
    heartbeat: bool,
    keep: Callable[[optuna.trial.FrozenTrial], bool],
    requeue: Callable[[optuna.trial.FrozenTrial], None],
) -> int:
    """Fail the RUNNING trials of `study` whose driver is gone (`reap_reason`) and hand each
    to `requeue`, except those `keep` takes over (it returns True). Returns how many were
    failed. Each is marked ``reaped`` and its ``fail_reason`` while RUNNING (a finished trial
    takes no attributes), then failed; if its driver told it in between after all, that
    outcome stands."""
    reaped = 0
    now = datetime.now()  # Optuna stores naive local times
    for t in study.get_trials(deepcopy=False):
        if t.state != optuna.trial.TrialState.RUNNING:
            continue
        reason = reap_reason(t, identity, stale=stale, locked=locked, heartbeat=heartbeat, now=now)
        if reason is None or keep(t):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "reaped", True)
            storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # its driver told it just now after all
        told = study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        if (
            told.state == optuna.trial.TrialState.FAIL
            and told.user_attrs.get("fail_reason") == reason
        ):
            requeue(t)
            reaped += 1
    return reaped
