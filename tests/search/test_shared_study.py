"""Several drivers on one study through a real PostgreSQL server (Debian's `postgresql`,
started privately on a loopback port): the trial budget adds up, no trial runs twice, seed
trials are enqueued once, and reaping never touches a live driver's trial, on this host (pid
and process start time) or on another (Optuna's heartbeat).
"""

from __future__ import annotations

import functools
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from rich.console import Console

from sqa_nas.search.driver import Driver
from sqa_nas.search.executors.local import LocalExecutor
from sqa_nas.search.locks import proc_start
from sqa_nas.search.space import parse_space
from tests.search.test_search import ROOT, TINY, _write, ladder_space

pytestmark = pytest.mark.slow


def _server_binaries() -> Path | None:
    """The newest PostgreSQL server's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(re.search(r"/(\d+)/bin/", p).group(1)),
    )
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl and shutil.which("initdb") else None


@pytest.fixture(scope="module")
def postgres(free_port):
    """A private PostgreSQL server on 127.0.0.1 for this module; yields its database URL."""
    pytest.importorskip("psycopg2", reason="needs psycopg2 (pip install psycopg2-binary)")
    import psycopg2

    bindir = _server_binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="sqa-pg-", dir="/tmp"))
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the postgres user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser to start the server as postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = root / "data"
    try:
        subprocess.run(
            [
                *as_user,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "sqa",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                *as_user,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        con = psycopg2.connect(host="127.0.0.1", port=port, user="sqa", dbname="postgres")
        con.autocommit = True
        con.cursor().execute("CREATE DATABASE sqa_test")
        con.close()
        yield f"postgresql+psycopg2://sqa@127.0.0.1:{port}/sqa_test"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def _two_drivers(space: Path, storage: str, cwd: Path) -> list[tuple[str, str]]:
    """Two `search` commands on one storage, started together, one CPU each (as on two
    machines, else their workers' threads fight over the cores); their (stdout, stderr),
    both having exited 0."""
    cmd = [sys.executable, str(ROOT / "cli.py"), "search", str(space), "--storage", storage]
    cpus = sorted(os.sched_getaffinity(0))
    drivers = [
        subprocess.Popen(
            [*cmd, "--workers", "1"],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=functools.partial(os.sched_setaffinity, 0, {cpu}),
        )
        for cpu in (cpus[0], cpus[-1])
    ]
    try:
        outs = [p.communicate(timeout=300) for p in drivers]
    finally:
        for p in drivers:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in drivers] == [0, 0], [e for _, e in outs]
    return outs


def test_two_drivers_share_one_study(postgres, tmp_path):
    space = _write(
        tmp_path,
        {
            **TINY,
            "study": "shared",
            "budget": {
                **TINY["budget"],
                "n_trials": 6,
                "train": {**TINY["budget"]["train"], "steps": 20},
            },
        },
    )
    # Started together: both create Optuna's tables and the study, enqueue the seeds and reap
    # at the same time, each while the other may already have trials in flight.
    outs = _two_drivers(space, postgres, tmp_path)
    every = optuna.load_study(study_name="shared", storage=postgres).get_trials()
    trials = [t for t in every if "duplicate_of" not in t.user_attrs]  # repeats: no budget
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 6 and len(trials) == 6, states  # the budget adds up
    assert not any(t.user_attrs.get("reaped") for t in trials)  # no live trial reaped
    seeds = [
        t.user_attrs["seed_variant"]
        for t in trials
        if t.user_attrs.get("seed_variant") and "retry_of" not in t.user_attrs
    ]
    assert sorted(seeds) == ["MHA", "SQA"]  # enqueued once, run once
    # "trial N [allocation]: values" for each trial a driver trained and told.
    told = [{int(n) for n in re.findall(r"trial (\d+) \[[^\]]*\]: ", out)} for out, _ in outs]
    assert told[0] and told[1], "one driver ran every trial"
    trained = {t.number for t in trials}
    assert not told[0] & told[1] and told[0] | told[1] == trained  # none run twice
    drivers = {t.number: t.user_attrs["driver"]["id"] for t in trials}
    assert len({drivers[n] for n in told[0]}) == 1 and len({drivers[n] for n in told[1]}) == 1


def test_reaping_spares_live_drivers_here_and_elsewhere(postgres, tmp_path):
    spec = parse_space({**TINY, "study": "reap", "seed_trials": []})
    driver = Driver(
        spec,
        LocalExecutor(workers=1),
        storage_url=postgres,
        console=Console(file=open(os.devnull, "w")),
    )
    study = driver.open_study()
    storage = driver.storage
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    ended = subprocess.Popen(["true"])  # a driver on this host that has exited
    ended.wait()
    try:

        def running(identity: dict | None, drawn: bool = True, part: bool = False) -> int:
            first = dict(list(driver.distributions.items())[:1])
            trial = study.ask(first if part else driver.distributions if drawn else None)
            if identity is not None:
                trial.set_user_attr("driver", {"started": "", **identity})
            storage.record_heartbeat(trial._trial_id)
            return trial.number

        here_live = running(
            {"host": host, "pid": live.pid, "id": "a", "proc_start": proc_start(live.pid)}
        )
        here_dead = running({"host": host, "pid": ended.pid, "id": "b"})
        pid_reused = running({"host": host, "pid": live.pid, "id": "c", "proc_start": 1})
        elsewhere_live = running({"host": "elsewhere", "pid": live.pid, "id": "d"})
        elsewhere_dead = running({"host": "elsewhere", "pid": live.pid, "id": "e"})
        # Drivers ask, draw and sign a trial under the study lock, so a reaper holding the
        # lock sees an unsigned one only when its driver died in between: before drawing its
        # architecture (nothing to re-run) or after.
        undrawn = running(None, drawn=False)
        part_drawn = running(None, part=True)  # died between two draws: nothing to re-run
        unsigned = running(None)
        queued_params = {**study.get_trials()[here_live].params}
        study.enqueue_trial(queued_params, user_attrs={"seed_variant": "MHA"})
        queued_undrawn = running(None, drawn=False)  # takes the queued trial, dies drawing
        # Another machine's driver stopped beating a while ago (Optuna's grace period: 60 s).
        import sqlalchemy

        with storage.engine.begin() as con:
            con.execute(
                sqlalchemy.text(
                    "UPDATE trial_heartbeats SET heartbeat = heartbeat - interval '5 minutes' "
                    "WHERE trial_id = :t"
                ),
                {"t": study.get_trials()[elsewhere_dead]._trial_id},
            )
        assert driver.reap() == 7
    finally:
        live.kill()
    trials = study.get_trials()
    for n in (here_live, elsewhere_live):
        assert trials[n].state.name == "RUNNING", n
    for n in (
        here_dead,
        pid_reused,
        elsewhere_dead,
        unsigned,
        undrawn,
        part_drawn,
        queued_undrawn,
    ):
        assert trials[n].state.name == "FAIL" and trials[n].user_attrs["reaped"], n
    requeued = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    assert set(requeued) == {here_dead, pid_reused, elsewhere_dead, unsigned, queued_undrawn}
    assert all(
        t.state.name == "WAITING" and t.system_attrs["fixed_params"] == trials[n].params
        for n, t in requeued.items()
        if n != queued_undrawn
    )
    # A queued trial (a seed, a retry) whose driver died drawing it is queued again as it was.
    again = requeued[queued_undrawn]
    assert again.system_attrs["fixed_params"] == queued_params
    assert again.user_attrs["seed_variant"] == "MHA"


def test_two_drivers_share_one_ladder(postgres, tmp_path):
    """MO-ASHA with two drivers on one study: promotions are decided under the study lock,
    so no trial is promoted to a rung twice, and the last driver to finish stops what waits."""
    space = _write(tmp_path, ladder_space("ladder", n_trials=8))
    outs = _two_drivers(space, postgres, tmp_path)
    promoted = [
        m for out, _ in outs for m in re.findall(r"trial (\d+): promoted to rung (\d)", out)
    ]
    assert promoted and len(promoted) == len(set(promoted))  # none promoted twice
    trials = optuna.load_study(study_name="ladder", storage=postgres).get_trials()
    assert all(t.state.is_finished() for t in trials)
    assert not any(t.user_attrs.get("reaped") for t in trials)
    assert not list(tmp_path.rglob("*.pt"))
