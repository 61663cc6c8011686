"""What a private Ray instance leaves running when its driver is killed, and cleaning it up.

`RayCluster` starts a private instance as the driver's children. SIGKILL gives the driver no
chance to stop them: the GCS and the raylet follow it, but Ray's two agents
(``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) outlive it for about a minute (Ray 2.60:
each reports its raylet's death to the dead GCS and waits 60 s for the answer), longer if
that call hangs. So each private instance is recorded while its driver runs, in a folder
only this user can write (``$TMPDIR/sqa-nas-ray-UID/PID.json``: the driver's pid and start
time, the instance's session folder), and the next instance started on this machine first
kills every process of this user that holds a file of a gone driver's session folder open.
Linux only (/proc); elsewhere nothing is recorded.
"""

from __future__ import annotations

import os
import signal
import stat
import tempfile
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, ValidationError

LEFTOVERS = "sqa-nas-ray-{uid}"  # folder under the temp folder: one record per private instance


class InstanceRecord(BaseModel):
    """A private Ray instance, recorded while its driver runs (`LEFTOVERS`)."""

    driver_pid: int
    driver_started: int  # clock ticks after boot (/proc/PID/stat): tells a reused pid apart
    # Every process of the instance holds files under it open; only Ray's session folders
    # are taken (a record naming "/" must not aim the cleanup at every process).
    session_dir: Annotated[str, Field(pattern=r"^/.+/session_[^/]+$")]


def _records() -> Path | None:
    """This user's folder of `InstanceRecord`s (mode 0700), or None where there is none
    that only this user can write (not Linux, a temp folder not ours)."""
    folder = Path(tempfile.gettempdir()) / LEFTOVERS.format(uid=os.getuid())
    if not Path("/proc/self/fd").is_dir():
        return None
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()  # not a link's target: a link planted there is refused
    except OSError:
        return None
    mine = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
    return folder if mine and not info.st_mode & 0o077 else None


def _started(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot), or None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the name


def record_instance(session_dir: str) -> Path | None:
    """Record the private instance this driver started (the file, or None: not recorded)."""
    folder = _records()
    started = _started(os.getpid())
    if folder is None or started is None:
        return None
    record = InstanceRecord(
        driver_pid=os.getpid(),
        driver_started=started,
        session_dir=os.path.realpath(session_dir),
    )
    path = folder / f"{os.getpid()}.json"
    try:
        path.write_text(record.model_dump_json())
    except OSError:
        return None
    return path


def stop_leftovers() -> list[int]:
    """Kill (SIGKILL) what private instances of drivers that are gone left running: every
    process of this user holding a file of such an instance's session folder open (Ray's
    agents, and its raylet, GCS and workers if they outlived the driver). Records of live
    drivers are kept. Returns the pids killed."""
    folder = _records()
    if folder is None:
        return []
    gone = []
    for path in folder.glob("*.json"):
        try:
            record = InstanceRecord.model_validate_json(path.read_text())
        except (OSError, ValidationError):
            path.unlink(missing_ok=True)
            continue
        if _started(record.driver_pid) != record.driver_started:
            gone.append(record.session_dir + os.sep)
            path.unlink(missing_ok=True)
    killed = []
    for entry in Path("/proc").iterdir() if gone else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            files = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if any(f.startswith(tuple(gone)) for f in files):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except OSError:
                pass
    return killed
