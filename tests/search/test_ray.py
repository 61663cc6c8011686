"""The Ray executor on a real two-node Ray cluster on loopback: a head started with
`ray start --head` and a second node joined with `ray start --address`, each declaring one
logical GPU (workers see no CUDA here and run on the CPU, as the objective does without a
GPU). Searches run through `cli.py search --executor ray --address`; a worker, the driver and
a whole node are SIGKILLed mid-search; trials that outlive their limit are cancelled; requests
no node can hold are refused; a loopback address is joined as given; and with no cluster a
private CPU instance runs the search (its faults: test_ray_faults.py).

The cluster is shared by the module and kept small (one CPU and one GPU per node, a 80 MB
object store); the node-loss test runs last because it takes the second node down.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from sqa_nas.cli import main
from sqa_nas.search.study_attrs import read_study_attrs
from tests.search.test_search import ROOT, TINY, _wait_for, _write, ladder_space

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray"),
]

# `ray start` replaces 127.0.0.1 with the machine's network address unless
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with that setting it refuses to start a second node
# ("not supported on Windows and OSX"). So the head starts with the setting, and the second
# node starts through Ray's own CLI with loopback addresses kept as given. Drivers get it
# from the executor when the address is loopback (test_a_loopback_address_is_joined_as_given).
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# Ray turns token authentication on when ~/.ray/auth_token exists (a local `ray.init()`
# writes one): every process of the test cluster gets the same token explicitly instead.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
JOIN = (
    "import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda h: h; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)
# A lost node is declared dead after ~3 s instead of Ray's default ~30 s.
FAST_NODE_DEATH = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
NODE_ARGS = [
    "--block",
    "--node-ip-address=127.0.0.1",
    "--num-gpus=1",
    "--num-cpus=1",
    "--object-store-memory=80000000",
    "--disable-usage-stats",
]


@dataclass
class Node:
    proc: subprocess.Popen  # `ray start --block`, leader of its process group
    log: Path

    def _children(self, pid: int) -> list[int]:
        out = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    stat = (p / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
        return out

    def trial_workers(self) -> list[int]:
        """Pids of this node's trial workers (children of its raylet; Ray gives each worker
        its own process group, so they are found by parent, not by group)."""
        return [
            worker
            for raylet in self._children(self.proc.pid)
            if "/raylet" in _cmdline(raylet).split(" ")[0]
            for worker in self._children(raylet)
            if _cmdline(worker).startswith("ray::TrialWorker")
        ]

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


@dataclass
class Cluster:
    address: str
    head: Node
    worker: Node

    @property
    def env(self) -> dict:
        """What a driver needs to join it."""
        return {**os.environ, **LOOPBACK, **AUTH}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class NodeStartError(Exception):
    pass


def _start_node(cmd: list[str], env: dict, log: Path) -> Node:
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    node = Node(proc, log)
    ok = _wait_for(
        lambda: "Ray runtime started" in log.read_text() or proc.poll() is not None, timeout=120
    )
    if not ok or proc.poll() is not None:
        node.kill()
        raise NodeStartError(f"{log.name}: {log.read_text()[-1500:]}")
    return node


_HAS_GRPC = importlib.util.find_spec("grpc") is not None  # ray[client] or ray[default]


def _start_cluster(free_port, env: dict, temp: Path) -> tuple[str, list[Node]]:
    """A head and a joined second node; on failure, nothing left running and an error that
    carries both nodes' logs and the head's GCS log."""
    port = free_port()
    ray = str(Path(sys.executable).with_name("ray"))
    nodes: list[Node] = []
    try:
        nodes.append(
            _start_node(
                [
                    ray,
                    "start",
                    "--head",
                    f"--port={port}",
                    "--include-dashboard=false",
                    # Ray Core (what sqa-nas installs) has no client server; ray[client] does.
                    *([f"--ray-client-server-port={free_port()}"] if _HAS_GRPC else []),
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--temp-dir={temp}",
                    *NODE_ARGS,
                ],
                env,
                temp / "head.log",
            )
        )
        join_env = {k: v for k, v in env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        nodes.append(
            _start_node(
                [
                    sys.executable,
                    "-c",
                    JOIN,
                    "start",
                    f"--address=127.0.0.1:{port}",
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--temp-dir={temp}",
                    *NODE_ARGS,
                ],
                join_env,
                temp / "worker.log",
            )
        )
    except NodeStartError as exc:
        head = nodes[0].proc.poll() if nodes else "not started"
        gcs = sorted(temp.glob("session_*/logs/gcs_server.*"))
        detail = "".join(f"\n--- {g.name}: {g.read_text(errors='replace')[-1500:]}" for g in gcs)
        for node in reversed(nodes):
            node.kill()
        raise NodeStartError(f"{exc}\nhead exit status: {head}{detail}") from None
    return f"127.0.0.1:{port}", nodes


@pytest.fixture(scope="module")
def cluster(free_port):
    env = {**os.environ, **LOOPBACK, **AUTH, **FAST_NODE_DEATH}
    errors = []
    for _ in range(2):  # a picked free port may be taken by another process before Ray binds it
        # Ray's socket paths must fit in 107 bytes: a short directory, not pytest's tmp_path.
        temp = Path(tempfile.mkdtemp(prefix="sqr", dir="/tmp"))
        try:
            address, nodes = _start_cluster(free_port, env, temp)
            break
        except NodeStartError as exc:
            errors.append(str(exc))
            shutil.rmtree(temp, ignore_errors=True)
    else:
        pytest.fail("ray start failed twice:\n" + "\n\n".join(errors))
    ray = str(Path(sys.executable).with_name("ray"))
    try:

        def both_nodes_up() -> bool:
            status = subprocess.run(
                [ray, "status", f"--address={address}"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
            return status.count(" node_") == 2 and "0.0/2.0 GPU" in status

        assert _wait_for(both_nodes_up, timeout=60), "`ray status` does not show two nodes"
        yield Cluster(address, *nodes)
    finally:
        for node in reversed(nodes):
            node.kill()
        time.sleep(1)  # workers leave when their raylet is gone
        shutil.rmtree(temp, ignore_errors=True)


def _space(tmp_path: Path, name: str, n_trials: int, steps: int, **budget) -> Path:
    return _write(
        tmp_path,
        {
            **TINY,
            "study": name,
            "budget": {
                **TINY["budget"],
                "n_trials": n_trials,
                **budget,
                "train": {**TINY["budget"]["train"], "steps": steps},
            },
        },
        f"{name}.yaml",
    )


def _search_cmd(space: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "search", str(space), "--executor", "ray", *args]


def _private_env(tmp_path: Path) -> dict:
    """Ray's defaults, with the token a local instance writes to ~/.ray kept in tmp_path."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "HOME": str(tmp_path),
    }


@dataclass
class Search:
    """A search driver in the background, its output in files (a pipe nobody reads while
    the test waits could fill and stall it)."""

    proc: subprocess.Popen
    out: Path
    err: Path
    db: Path

    @classmethod
    def start(cls, cluster: Cluster, tmp_path: Path, space: Path, name: str) -> Search:
        out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(out, "w") as o, open(err, "w") as e:
            proc = subprocess.Popen(
                _search_cmd(space, "--address", cluster.address),
                cwd=tmp_path,
                env=cluster.env,
                stdout=o,
                stderr=e,
            )
        return cls(proc, out, err, tmp_path / "runs" / name / "study.db")

    def wait_until(self, predicate, what: str, cluster: Cluster, timeout: float = 300) -> None:
        """Wait until `predicate()` holds while the search runs; otherwise stop it and fail
        with what the driver printed, the trials' states and the second node's log."""
        held = False

        def settled() -> bool:
            nonlocal held
            held = bool(predicate())
            return held or self.proc.poll() is not None

        start = time.monotonic()
        _wait_for(settled, timeout)
        if held:
            return
        code = self.proc.poll()
        self.stop()
        out, err = self.output()
        driver = f"exited ({code})" if code is not None else "still running: stopped"
        pytest.fail(
            f"{what} after {time.monotonic() - start:.0f} s; the driver was {driver}; "
            f"trials: {_states(self.db)}\n--- driver stdout:\n{out[-3000:]}"
            f"\n--- driver stderr:\n{err[-3000:]}\n--- {cluster.worker.log.name}:\n"
            f"{cluster.worker.log.read_text(errors='replace')[-1500:]}"
        )

    def wait(self, timeout: float = 300) -> tuple[str, str]:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.stop()
        return self.output()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def output(self) -> tuple[str, str]:
        return self.out.read_text(errors="replace"), self.err.read_text(errors="replace")


def _states(db: Path) -> list[str]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as con:
            return [s for (s,) in con.execute("select state from trials order by number")]
    except sqlite3.Error:
        return []


def _study(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/runs/{name}/study.db")


def _last_run(tmp_path: Path, study: optuna.Study) -> dict:
    """The figures of the last search run on `study` (a record beside its storage)."""
    url = f"sqlite:///{tmp_path}/runs/{study.study_name}/study.db"
    return read_study_attrs(study, url).runs[-1]


def _finished(study: optuna.Study) -> dict[str, int]:
    """States of the trials that trained (repeats of a layout, told its values, left out)."""
    states = [t.state.name for t in study.get_trials() if "duplicate_of" not in t.user_attrs]
    assert "RUNNING" not in states and "WAITING" not in states, states
    return {s: states.count(s) for s in set(states)}


def test_trials_spread_over_both_nodes_and_survive_a_killed_worker(cluster, tmp_path):
    # Enough trials that both workers are still busy after the slower one's first trial, even
    # when one node starts its worker late on a loaded machine.
    space = _space(tmp_path, "spread", n_trials=14, steps=120)
    search = Search.start(cluster, tmp_path, space, "spread")

    def nodes_done() -> int:
        # Read with optuna only once a trial is complete: opening the file while the driver
        # creates its schema would race it for Optuna's version row.
        if "COMPLETE" not in _states(search.db):
            return 0
        try:
            done = [
                t
                for t in _study(tmp_path, "spread").get_trials()
                if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs
            ]
        except Exception:  # the driver may be creating the tables right now
            return 0
        return len({t.user_attrs["device"]["ray_node_id"] for t in done})

    try:
        # Both nodes have finished a trial, and both workers are busy again (a trial is
        # queued behind a running one only when no worker is idle: two RUNNING = both busy):
        # kill one mid-trial.
        search.wait_until(
            lambda: (
                nodes_done() == 2
                and _states(search.db).count("RUNNING") >= 2
                and cluster.worker.trial_workers()
            ),
            "trials did not spread",
            cluster,
        )
        os.kill(cluster.worker.trial_workers()[0], signal.SIGKILL)
        out, err = search.wait()
    finally:
        search.stop()
    assert search.proc.returncode == 0, err
    study = _study(tmp_path, "spread")
    assert _finished(study) == {"COMPLETE": 14}
    complete = [t for t in study.get_trials() if "duplicate_of" not in t.user_attrs]
    assert len({t.user_attrs["device"]["ray_node_id"] for t in complete}) == 2  # both nodes
    assert all(re.fullmatch(r".+/[0-9a-f]{8}", t.user_attrs["device"]["node"]) for t in complete)
    retried = [t for t in complete if t.user_attrs.get("worker_deaths")]
    assert len(retried) == 1 and "died" not in retried[0].user_attrs.get("fail_reason", "")
    stats = _last_run(tmp_path, study)
    assert stats["worker_deaths"] == 1 and stats["retries"] == 1
    assert stats["workers_started"] == 3  # two, and the replacement of the killed one
    assert len(stats["in_trial_fraction_by_gpu"]) == 2
    assert all(0 < f <= 1 for f in stats["in_trial_fraction_by_gpu"].values())
    assert "in_trial_fraction:" in out and "(raylet)" not in err  # Ray's death notices stay out


def test_killed_driver_resumes_with_completed_trials_intact(cluster, tmp_path):
    space = _space(tmp_path, "resume", n_trials=3, steps=100)
    db = tmp_path / "runs" / "resume" / "study.db"
    cmd = _search_cmd(space, "--address", cluster.address)
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert _wait_for(
            lambda: "COMPLETE" in _states(db) and "RUNNING" in _states(db), timeout=180
        ), "no trial completed"
        os.kill(proc.pid, signal.SIGKILL)  # Ray drops the actors of a driver that is gone
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    study = _study(tmp_path, "resume")
    before = {t.number: t.values for t in study.get_trials() if t.state.name == "COMPLETE"}
    assert "RUNNING" in [t.state.name for t in study.get_trials()]
    rerun = subprocess.run(
        cmd, cwd=tmp_path, env=cluster.env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    study = _study(tmp_path, "resume")
    counts = _finished(study)
    assert counts["COMPLETE"] == 3 and counts["FAIL"] >= 1, counts
    after = {t.number: t.values for t in study.get_trials()}
    assert all(after[n] == v for n, v in before.items())  # nothing completed was lost
    reaped = [t for t in study.get_trials() if t.user_attrs.get("reaped")]
    retries = {t.user_attrs.get("retry_of"): t for t in study.get_trials()}
    assert reaped
    drawn = set(next(t.params for t in study.get_trials() if t.state.name == "COMPLETE"))
    for t in reaped:  # re-run as drawn or queued; killed while drawing it: a fresh ask instead
        params = t.params if set(t.params) == drawn else t.system_attrs.get("fixed_params")
        if params:
            assert retries[t.number].params == params
        else:
            assert t.number not in retries


def test_trial_past_its_time_limit_is_cancelled_and_recorded(cluster, tmp_path):
    space = _space(tmp_path, "slow", n_trials=2, steps=100_000, trial_timeout_s=3)
    run = subprocess.run(
        _search_cmd(space, "--address", cluster.address),
        cwd=tmp_path,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    study = _study(tmp_path, "slow")
    # Both were baselines that failed by themselves: counted, and queued once more.
    trained = [t for t in study.get_trials() if t.state.name != "WAITING"]
    assert [t.state.name for t in trained] == ["FAIL", "FAIL"]
    for t in trained:
        assert "exceeded the trial time limit (3 s)" in t.user_attrs["fail_reason"]
    retries = [
        t.user_attrs.get("retry_of") for t in study.get_trials() if t.state.name == "WAITING"
    ]
    assert sorted(retries) == [t.number for t in trained]
    assert _last_run(tmp_path, study)["timeouts"] == 2


def test_requests_no_node_can_hold_are_refused_up_front(cluster, tmp_path):
    space = _space(tmp_path, "big", n_trials=2, steps=4)
    run = subprocess.run(
        _search_cmd(space, "--address", cluster.address, "--gpus-per-trial", "2"),
        cwd=tmp_path,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "2 GPUs per trial, but the largest node" in run.stderr
    assert "has 1" in run.stderr and "lower --gpus-per-trial" in run.stderr
    assert not {"RUNNING", "COMPLETE"} & set(_states(tmp_path / "runs" / "big" / "study.db"))


def test_default_gpu_per_trial_is_refused_without_gpus(tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)
    space = _space(tmp_path, "nogpu", n_trials=2, steps=4)
    assert main(["search", str(space), "--executor", "ray"]) == 2  # before Ray starts
    err = capsys.readouterr().err
    assert "1 GPU per trial, but this machine has no GPU" in err and "--gpus-per-trial 0" in err


def test_cpu_trials_on_a_private_local_instance(tmp_path):
    space = _space(tmp_path, "local", n_trials=2, steps=4)
    run = subprocess.run(
        _search_cmd(space, "--gpus-per-trial", "0"),
        cwd=tmp_path,
        env=_private_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    study = _study(tmp_path, "local")
    assert _finished(study) == {"COMPLETE": 2}
    device = study.get_trials()[0].user_attrs["device"]
    assert device["type"] == "cpu" and device["node_ip"] == "127.0.0.1"  # loopback only
    assert _last_run(tmp_path, study)["in_trial_fraction"] > 0


def test_a_loopback_address_is_joined_as_given(cluster, tmp_path):
    """Without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the driver's environment, Ray would
    join 127.0.0.1 at this machine's network address, where this cluster does not listen
    (for minutes, then fail); the executor keeps the loopback address as given."""
    env = {k: v for k, v in cluster.env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    space = _space(tmp_path, "loopback", n_trials=2, steps=4)
    run = subprocess.run(
        _search_cmd(space, "--address", cluster.address),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    trials = _study(tmp_path, "loopback").get_trials()
    assert _finished(_study(tmp_path, "loopback")) == {"COMPLETE": 2}
    assert {t.user_attrs["device"]["node_ip"] for t in trials} == {"127.0.0.1"}


def test_search_survives_losing_a_node(cluster, tmp_path):
    """Last in the module: the second node does not come back."""
    space = _space(tmp_path, "nodeloss", n_trials=4, steps=150)
    search = Search.start(cluster, tmp_path, space, "nodeloss")
    try:
        search.wait_until(
            lambda: _states(search.db).count("RUNNING") >= 2 and cluster.worker.trial_workers(),
            "no trial started on both nodes",
            cluster,
        )
        cluster.worker.kill()  # the raylet, its workers, everything of that node
        out, err = search.wait()
    finally:
        search.stop()
    assert search.proc.returncode == 0, err
    study = _study(tmp_path, "nodeloss")
    assert _finished(study) == {"COMPLETE": 4}
    lost = [t for t in study.get_trials() if t.user_attrs.get("worker_deaths")]
    assert lost, "the trial on the lost node was not retried"
    assert _last_run(tmp_path, study)["worker_deaths"] >= 1


def test_a_retry_no_worker_takes_fails_after_the_trial_time_limit():
    """A trial whose worker died waits for another; if none comes up (every node lost), it
    fails after the trial time limit instead of keeping the search waiting for ever."""
    from collections import Counter, deque

    from sqa_nas.search.executors.base import Running
    from sqa_nas.search.executors.ray import RayExecutor
    from sqa_nas.search.executors.ray_worker import Attempt
    from sqa_nas.search.trial import TrialJob

    executor = RayExecutor.__new__(RayExecutor)  # no cluster: only the bookkeeping
    executor.slots, executor.timeout, executor.counts = [], 5.0, Counter()
    stale = Attempt(
        TrialJob(3, {}, {}), deaths=["node-b: lost"], waiting_since=time.monotonic() - 6
    )
    fresh = Attempt(TrialJob(4, {}, {}), waiting_since=time.monotonic())
    executor.retry = deque([stale, fresh])
    executor.running = {
        a.job.number: Running(a.job, "waiting for a worker (retry)") for a in (stale, fresh)
    }
    (event,) = executor._check_timeouts()
    assert (
        event.number == 3
        and "for a Ray worker to retry it on; none came up" in event.outcome.attrs["fail_reason"]
    )
    assert event.outcome.attrs["worker_deaths"] == ["node-b: lost"]
    assert list(executor.retry) == [fresh] and list(executor.running) == [4]


def test_multi_fidelity_promotions_resume_through_ray(cluster, tmp_path):
    """MO-ASHA over the two-node cluster: segments saved by one worker resume on whichever
    worker takes the promotion (here both nodes read the study's checkpoint folder)."""
    space = _write(tmp_path, ladder_space("ladder", n_trials=6), "ladder.yaml")
    run = subprocess.run(
        _search_cmd(space, "--address", cluster.address),
        cwd=tmp_path,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    trials = _study(tmp_path, "ladder").get_trials()
    assert all(t.state.is_finished() for t in trials)
    decisions = [r["decision"] for t in trials for r in t.user_attrs.get("rungs", [])]
    assert "promoted" in decisions and "baseline" in decisions
    assert not list(tmp_path.rglob("*.pt"))  # every checkpoint deleted at the end
