"""Where a study lives: the default storage of a study name and opening an Optuna storage
(a database URL or a journal file) with the settings a search needs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.exc import IntegrityError

from sqa_nas.errors import UserError


def default_storage(study_name: str) -> str:
    """The storage URL of study `study_name` when none is given: ``runs/<name>/study.db``."""
    return f"sqlite:///runs/{study_name}/study.db"


SCHEMA_RACE_TRIES = 5  # opening a storage whose schema another process is creating


def open_storage(url: str, *, heartbeat: bool = False) -> RDBStorage | JournalStorage:
    """An Optuna storage for a URL: ``sqlite:///``, ``postgresql://``, ... or a journal file
    (``journal:PATH`` or a path ending in ``.log`` / ``.journal``)."""
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        path = url.removeprefix("journal:")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise UserError(
            f"storage {url!r} is not a database URL (sqlite:///PATH, "
            "postgresql://...) or a journal file (journal:PATH)"
        )
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"heartbeat_interval": 10, "grace_period": 60} if heartbeat else {}
    for attempt in range(SCHEMA_RACE_TRIES):
        try:
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
        except Exception as exc:  # sqlalchemy errors: unreachable server, bad driver, old schema
            raise UserError(
                f"cannot open storage {url}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            ) from None
    raise AssertionError("unreachable")  # the loop returns or raises


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        # The driver and the dashboard may read while a search writes.
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}
