"""Executors' failure paths and the driver's manners: a local trial past its time limit
(seconds) is killed and recorded, a local worker that dies mid-trial fails only its trial
and the search goes on, a Ray trial whose worker dies every time fails once its retries run
out, and importing or running the search leaves Optuna's log level and the process's warning
filters as they were. Faults come from trial functions monkeypatched in for `run_trial`
(tests/faketrials.py); no test asserts a duration."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import warnings

import optuna
import pytest
from rich.console import Console

from sqa_nas.search import driver as search_driver
from sqa_nas.search.driver import Driver
from sqa_nas.search.executors import local
from sqa_nas.search.executors.base import Event, Executor
from sqa_nas.search.executors.local import LocalExecutor
from sqa_nas.search.space import parse_space
from sqa_nas.search.study import quiet_optuna
from sqa_nas.search.trial import TrialJob
from tests import faketrials
from tests.search.test_search import ROOT, TINY

MAX_POLLS = 600  # x 0.5 s: a bound so that a test fails instead of hanging


def _drain(executor: Executor, numbers: set[int]) -> dict[int, list[Event]]:
    """Poll until every trial in `numbers` is done; its events by trial number."""
    events: dict[int, list[Event]] = {}
    for _ in range(MAX_POLLS):
        for event in executor.poll(timeout=0.5):
            events.setdefault(event.number, []).append(event)
        if all(any(e.kind == "done" for e in events.get(n, [])) for n in numbers):
            return events
    pytest.fail(f"trials {sorted(numbers)} not done after {MAX_POLLS} polls: {events}")


def _outcome(events: dict[int, list[Event]], number: int):
    (done,) = [e for e in events[number] if e.kind == "done"]
    return done.outcome


def _job(number: int, fate: str) -> TrialJob:
    return TrialJob(number, {"fate": fate}, {})


def test_a_local_trial_past_its_time_limit_in_seconds_is_killed_and_recorded(monkeypatch):
    monkeypatch.setattr(local, "run_trial", faketrials.scripted_trial)
    executor = LocalExecutor(workers=2, device="cpu", trial_timeout_s=120)
    executor.start()
    try:
        executor.submit(_job(0, "hang"))
        executor.submit(_job(1, "ok"))
        # Trial 0 started 121 s ago as far as the executor knows (no test waits 2 minutes);
        # trial 1 runs for real, worker start-up included: far under 120 s, far over 0.12 s.
        executor.running[0].started -= 121
        events = _drain(executor, {0, 1})
        assert executor.free_slots() == 2  # the killed worker was replaced
    finally:
        executor.shutdown(cancel=True)
    hung, ok = _outcome(events, 0), _outcome(events, 1)
    assert hung.state == "FAIL"
    assert hung.attrs["fail_reason"] == "exceeded the trial time limit (120 s); killed"
    assert ok.state == "COMPLETE" and ok.values["val_loss"] == pytest.approx(1.1)
    assert [e.kind for e in events[1]] == ["progress", "done"]
    assert events[1][0].info == {"step": 1, "of": 2, "loss": 0.5}
    assert executor.running == {}


def test_a_local_worker_dying_mid_trial_fails_that_trial_and_is_replaced(monkeypatch):
    monkeypatch.setattr(local, "run_trial", faketrials.scripted_trial)
    executor = LocalExecutor(workers=1, device="cpu", trial_timeout_s=600)
    executor.start()
    outcomes = {}
    try:
        for number, fate in enumerate(["exit", "sigkill", "ok"]):
            assert executor.free_slots() == 1
            executor.submit(_job(number, fate))
            outcomes[number] = _outcome(_drain(executor, {number}), number)
        assert executor.workers[0].process.is_alive()
    finally:
        executor.shutdown(cancel=True)
    assert outcomes[0].state == outcomes[1].state == "FAIL"
    assert outcomes[0].attrs["fail_reason"] == "worker process died (exit code 3) during the trial"
    assert (
        outcomes[1].attrs["fail_reason"] == "worker process died (exit code -9) during the trial"
    )
    assert outcomes[2].state == "COMPLETE"  # on the fresh worker
    stats = executor.stats()
    assert set(stats["in_trial_fraction_by_worker"]) == {"cpu worker 0"}


def test_a_search_goes_on_after_a_worker_dies_and_leaves_optuna_settings(monkeypatch, tmp_path):
    monkeypatch.setattr(local, "run_trial", faketrials.dies_on_trial_0)
    spec = parse_space(
        {
            **TINY,
            "study": "dies",
            "sampler": {"seed": 1},
            "budget": {**TINY["budget"], "n_trials": 3},
        }
    )
    log = io.StringIO()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        filters = list(warnings.filters)
        driver = Driver(
            spec,
            LocalExecutor(workers=1, device="cpu"),
            storage_url=f"sqlite:///{tmp_path}/s.db",
            console=Console(file=log, width=200),
        )
        result = driver.run(spec.budget.n_trials)
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
        assert warnings.filters == filters
    finally:
        optuna.logging.set_verbosity(verbosity)
    trials = result.study.get_trials()
    # Trial 0, the MHA baseline, lost with its worker: run again (trial 2), not counted.
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert (
        trials[0].user_attrs["fail_reason"]
        == "worker process died (exit code -9) during the trial"
    )
    assert trials[2].user_attrs == {**trials[2].user_attrs, "seed_variant": "MHA", "retry_of": 0}
    assert result.finished == 3 and not result.interrupted
    assert "trial 0 FAIL: worker process died" in log.getvalue()


def test_quiet_optuna_silences_inside_and_restores_after():
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            filters = list(warnings.filters)
            with quiet_optuna():
                assert optuna.logging.get_verbosity() == optuna.logging.WARNING
                warnings.warn("x", optuna.exceptions.ExperimentalWarning, stacklevel=1)
                warnings.warn(
                    "Heartbeat of storage is supposed to be used with Study.optimize.",
                    UserWarning,
                    stacklevel=1,
                )
                warnings.warn("kept", UserWarning, stacklevel=1)
            assert warnings.filters == filters
            assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
        assert [str(w.message) for w in caught] == ["kept"]
    finally:
        optuna.logging.set_verbosity(verbosity)


def test_importing_the_search_changes_no_logging_or_warning_settings():
    # A fresh interpreter: this one imported the search already. The third-party packages
    # the project depends on are imported first: what they set on import is theirs.
    code = """
import importlib, importlib.util, sys, warnings
for name in ("optuna", "torch", "numpy", "pydantic", "rich", "yaml", "ray", "textual"):
    if importlib.util.find_spec(name):
        importlib.import_module(name)
import optuna
before = (optuna.logging.get_verbosity(), list(warnings.filters))
for name in sys.argv[1:]:
    if name.endswith("ray") and not importlib.util.find_spec("ray"):
        continue
    importlib.import_module(name)
after = (optuna.logging.get_verbosity(), list(warnings.filters))
assert after[0] == before[0], ("optuna verbosity", before[0], after[0])
added = [f for f in after[1] if f not in before[1]]
assert after[1] == before[1], ("warning filters added", added)
print("unchanged")
"""
    modules = [
        "sqa_nas.search.driver",
        "sqa_nas.search.locks",
        "sqa_nas.search.samplers",
        "sqa_nas.search.progress",
        "sqa_nas.search.pareto",
        "sqa_nas.search.executors",
        "sqa_nas.search.executors.local",
        "sqa_nas.search.executors.ray",
        "sqa_nas.cli.search",
    ]
    run = subprocess.run(
        [sys.executable, "-c", code, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and run.stdout.strip() == "unchanged", run.stderr[-2000:]
    assert search_driver.quiet_optuna is quiet_optuna


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray")
def test_a_ray_trial_whose_worker_always_dies_fails_after_its_retries(monkeypatch, tmp_path):
    import ray  # optional: only this test needs it

    from sqa_nas.search.executors import ray as ray_executor

    # A private one-node instance on loopback, as `RayExecutor` starts it; what it sets in
    # this process (environment, Ray's cluster switch) is put back afterwards. Ray writes
    # its auth token under HOME: keep it in tmp_path.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    constants = ray._private.ray_constants
    monkeypatch.setattr(constants, "ENABLE_RAY_CLUSTER", constants.ENABLE_RAY_CLUSTER)
    monkeypatch.setattr(ray_executor, "run_trial", faketrials.dies_every_time)
    spec = parse_space(
        {
            **TINY,
            "execution": {
                "executor": "ray",
                "device": "cpu",
                "ray": {"max_retries": 1, "max_concurrent": 1},
            },
        }
    )
    executor = ray_executor.RayExecutor(spec)
    executor.start()
    try:
        for _ in range(MAX_POLLS):
            if executor.free_slots():
                break
            executor.poll(timeout=0.5)
        executor.submit(TrialJob(0, {}, {}))
        events = _drain(executor, {0})
    finally:
        executor.shutdown(cancel=True)
    outcome = _outcome(events, 0)
    reason = outcome.attrs["fail_reason"]
    assert outcome.state == "FAIL"
    assert reason.startswith("its worker died 2 times") and "gave up after 1 retries" in reason
    assert len(outcome.attrs["worker_deaths"]) == 2
    assert executor.counts["retries"] == 1 and executor.counts["worker_deaths"] == 2
    assert not ray.is_initialized()
