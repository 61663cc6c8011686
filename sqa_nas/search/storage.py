"""Where a study lives: the rules for study names and storage URLs (checked here, once, before
anything is created), the default storage of a study name, and opening an Optuna storage (a
database URL or a journal file) with the settings a search needs."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from sqa_nas.errors import UserError

MAX_NAME = 100  # a study name is one folder of runs/: well under a file name's 255 bytes
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
JOURNAL_SUFFIXES = (".log", ".journal")
SchemaLock = Callable[[], contextlib.AbstractContextManager[Any]]  # makes a lock to hold


def check_study_name(name: str) -> str:
    """`name` if it can name a study, else a `UserError` saying why: 1 to `MAX_NAME`
    letters, digits, ``_``, ``.`` or ``-``, not starting with ``.``, so that ``runs/<name>``
    is one folder inside ``runs/`` (never ``runs/..``, never a path)."""
    shown = repr(name) if len(name) <= 40 else f"{name[:30]!r}... ({len(name)} characters)"
    if len(name) > MAX_NAME:
        raise UserError(f"{shown} is not a study name: at most {MAX_NAME} characters")
    if not _NAME.fullmatch(name):
        raise UserError(
            f"{shown} is not a study name: use letters, digits, '_', '.' and '-', not "
            "starting with '.' (it names the folder runs/NAME)"
        )
    return name


def default_storage(study_name: str) -> str:
    """The storage URL of study `study_name` when none is given: ``runs/<name>/study.db``
    (`UserError` for a name `check_study_name` refuses)."""
    return f"sqlite:///runs/{check_study_name(study_name)}/study.db"


def is_journal(url: str) -> bool:
    """Whether `url` names a journal file (``journal:PATH``, or a path ending in ``.log`` or
    ``.journal``) rather than a database."""
    return url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES)


def storage_file(url: str) -> Path | None:
    """The local file a storage keeps its studies in: a SQLite database's or a journal's
    path; None for a database server, an in-memory database or a URL that names no file."""
    if is_journal(url):
        path = url.removeprefix("journal:")
        return Path(path) if path else None
    if not url.startswith("sqlite:"):
        return None
    try:
        database = make_url(url).database
    except ArgumentError:
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def check_storage(url: str) -> str:
    """`url` if a study can be kept there, else a `UserError` naming the problem: not a
    database URL or journal, no path, an in-memory database (the search would be lost when
    the command ends), or a path that cannot be a file (a file where a folder is needed,
    a folder where the file is). Creates nothing."""
    if not url.strip():
        raise UserError(
            "the storage URL is empty: give sqlite:///PATH, postgresql://... or journal:PATH"
        )
    if url.startswith("journal:") and not url.removeprefix("journal:"):
        raise UserError(f"storage {url!r} names no file: give journal:PATH")
    if not is_journal(url):
        if "://" not in url:
            raise UserError(
                f"storage {url!r} is not a database URL (sqlite:///PATH, "
                "postgresql://...) or a journal file (journal:PATH)"
            )
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise UserError(f"storage {url!r} is not a database URL") from None
        if parsed.get_backend_name() == "sqlite" and storage_file(url) is None:
            raise UserError(
                f"storage {url!r} is an in-memory database: the study would be lost when "
                "the command ends; give a file, sqlite:///PATH"
            )
    path = storage_file(url)
    if path is not None:
        problem = None
        try:
            # The nearest part of the path that exists must be a folder to create the rest in.
            there = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
            if path.is_dir():
                problem = f"{path} is a folder, not a file"
            elif there is not None and not there.is_dir():
                problem = f"{there} is a file, not a folder"
        except (OSError, ValueError) as exc:  # a folder we may not look into, a NUL byte
            problem = _why(exc)
        if problem:
            raise UserError(f"storage {url!r}: {problem}")
    return url


SCHEMA_RACE_TRIES = 5  # opening a storage whose schema another process is creating


def open_storage(
    url: str,
    *,
    heartbeat: bool = False,
    write: bool = True,
    schema_lock: SchemaLock | None = None,
    study: str | None = None,
) -> RDBStorage | JournalStorage:
    """An Optuna storage for a URL: ``sqlite:///``, ``postgresql://``, ... or a journal file
    (``journal:PATH`` or a path ending in ``.log`` / ``.journal``).

    Checked before anything is created (`check_storage`); a local file's folder is created
    and, with `write`, it and the file must be writable. A SQLite file that is there must be
    whole (its pages are checked) and a journal must read. Every problem is a `UserError`
    naming the URL or the file.

    Args:
        url: the storage URL.
        heartbeat: record trial heartbeats (databases only; `locks.uses_heartbeat`).
        write: the caller writes to the storage (a search, `confirm`), not only reads it.
        schema_lock: a lock held while Optuna creates a new database's tables (drivers
            started together race for them; `locks.study_lock`), taken after the checks.
        study: a study expected there: when it is, it must read (`check_readable`).
    """
    path = storage_file(check_storage(url))
    if path is not None:
        prepare_folder(path, write=write)
        if not is_journal(url) and path.exists() and _check_sqlite(path):
            schema_lock = None  # its tables are all there: nothing to race for
    if is_journal(url):
        assert path is not None  # check_storage refused a journal without a path
        storage: RDBStorage | JournalStorage = _journal(path)
    else:
        storage = _database(url, heartbeat, schema_lock)
    if study is not None:
        with contextlib.suppress(KeyError):  # not there yet
            check_readable(optuna.load_study(study_name=study, storage=storage), url)
    return storage


def _journal(path: Path) -> JournalStorage:
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise UserError(f"cannot open the journal {path}: {_why(exc)}") from None
    except ValueError as exc:  # a line that is not JSON
        raise UserError(
            f"the journal {path} is damaged ({_why(exc)}): restore it from a copy"
        ) from None


def _database(url: str, heartbeat: bool, schema_lock: SchemaLock | None) -> RDBStorage:
    kwargs: dict[str, Any] = {"heartbeat_interval": 10, "grace_period": 60} if heartbeat else {}
    for attempt in range(SCHEMA_RACE_TRIES):
        try:
            with schema_lock() if schema_lock else contextlib.nullcontext():
                return RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kwargs)
        except IntegrityError:
            # Another process (a reader such as optuna-dashboard, or a driver) created the
            # schema at the same moment and wrote its version row first: it is there now.
            if attempt + 1 == SCHEMA_RACE_TRIES:
                raise UserError(
                    f"cannot open storage {url}: its schema kept changing while "
                    "it was being created; try again"
                ) from None
            time.sleep(0.2 * (attempt + 1))
        except UserError:
            raise  # from the lock
        except Exception as exc:  # sqlalchemy errors: unreachable server, bad driver, old schema
            raise UserError(
                f"cannot open storage {url}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            ) from None
    raise AssertionError("unreachable")  # the loop returns or raises


def prepare_folder(path: Path, *, write: bool = True) -> None:
    """Create the folder of storage file `path`; with `write`, refuse (`UserError`) a folder
    or a file that cannot be written, before a search starts rather than at its first
    write."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the storage folder {path.parent}: {_why(exc)}") from None
    if not write:
        return
    if not os.access(path.parent, os.W_OK):
        raise UserError(
            f"the storage folder {path.parent} is read-only: a study there cannot be written "
            "(choose another --storage)"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"the storage {path} is read-only: the study cannot be written")


def check_readable(study: optuna.Study, where: str) -> None:
    """`UserError` naming the storage `where` when `study`'s stored values do not read (a
    storage damaged inside a value, which no page check sees): its attributes and every
    trial are read once."""
    try:
        dict(study.user_attrs)  # read for its errors, like every trial:
        study.get_trials(deepcopy=False)
    except TypeError:  # Optuna sorts the trials by number: some number is not one
        raise UserError(
            f"study {study.study_name!r} holds a trial number that is not an integer: "
            "its storage was not written by Optuna"
        ) from None
    except (ValueError, SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        raise UserError(
            f"storage {where} is damaged: study {study.study_name!r} does not read "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); restore it from a copy"
        ) from None


def _check_sqlite(path: Path) -> bool:
    """`UserError` unless the SQLite file `path` is a whole database (``PRAGMA
    quick_check``: every page of every table and index is read). Opened read-write without
    creating, so that a journal a killed writer left behind is rolled back, not mistaken
    for damage. Returns whether Optuna's tables are all there (its version row, written
    after them)."""
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot read the storage {path}: permission denied")
    uri = f"{path.resolve().as_uri()}?mode=rw"
    complete = False
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=60)) as db:
            problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if problems == ["ok"] and "version_info" in tables:
                complete = bool(db.execute("SELECT count(*) FROM version_info").fetchone()[0])
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            raise UserError(f"storage {path} stayed locked by another process for 60 s") from None
        problems = [str(exc)]
    except sqlite3.DatabaseError as exc:  # not a database at all, or a damaged header
        problems = [str(exc)]
    if problems != ["ok"]:
        raise UserError(
            f"storage {path} is damaged ({problems[0].splitlines()[-1]}): restore it from a "
            "copy, or start a new study elsewhere (--study NEW_NAME or --storage)"
        )
    return complete


def _why(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc).splitlines()[0]


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        # The driver and the dashboard may read while a search writes.
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}
