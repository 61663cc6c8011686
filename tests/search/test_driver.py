"""sqa_nas.search.driver with an in-process executor (no worker processes, no training):
the budget's count, the budget held by other drivers' running trials, seeds enqueued once,
jobs carrying their seed label and the study's compile choice, the noise trial and its
figures, repeated layouts told their values (held while the original runs) and never
counted, a space exhausted, executor figures kept for the last runs with the run's own
(training-step share, NVML), constraint refusals, the grid cap, Ctrl-C and reaping
re-queueing what they stop, and a race with a trial's own driver."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from rich.console import Console

from sqa_nas.errors import UserError
from sqa_nas.search import driver as driver_module
from sqa_nas.search.driver import Driver
from sqa_nas.search.executors.base import Executor, Running
from sqa_nas.search.locks import proc_start
from sqa_nas.search.repeats import Repeats
from sqa_nas.search.space import parse_space
from sqa_nas.search.study_attrs import KEEP_STATS, read_study_attrs
from sqa_nas.search.trial import TrialOutcome
from tests.search.test_search import TINY

HOST = socket.gethostname()


class InProcess(Executor):
    """Runs nothing: every submitted trial is done at the next poll with `outcome(job)`.
    `interrupt`: the first poll raises KeyboardInterrupt (Ctrl-C). Polling more than
    `max_polls` times fails the test instead of hanging it."""

    def __init__(self, outcome=None, *, interrupt=False, max_polls=200):
        super().__init__()
        self.outcome = outcome or (
            lambda job: TrialOutcome(
                job.number,
                "COMPLETE",
                {"val_loss": 1.0 + job.number, "throughput_tokens_per_s": 10.0},
            )
        )
        self.interrupt, self.max_polls = interrupt, max_polls
        self.jobs, self.started, self.polls = [], False, 0

    def start(self):
        self.started = True

    def free_slots(self):
        return 1 - len(self.running)

    def submit(self, job):
        self.jobs.append(job)
        self.running[job.number] = Running(job, "in process")

    def poll(self, timeout):
        self.polls += 1
        if self.polls > self.max_polls:
            raise AssertionError("the driver kept polling")
        if self.interrupt:
            raise KeyboardInterrupt
        return [self._finish(n, self.outcome(r.job)) for n, r in list(self.running.items())]

    def shutdown(self, *, cancel=False):
        numbers = list(self.running)
        self.running.clear()
        return numbers if cancel else []

    def stats(self):
        return {"in_trial_fraction": 0.5}


def _driver(tmp_path, executor=None, **space):
    spec = parse_space({**TINY, "study": "drv", **space})
    log = io.StringIO()
    driver = Driver(
        spec,
        executor or InProcess(),
        storage_url=f"sqlite:///{tmp_path}/s.db",
        console=Console(file=log, width=300),
    )
    driver.text = log
    return driver


@pytest.fixture(scope="module")
def ended_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _other_live_driver() -> dict:
    return {"host": HOST, "pid": os.getpid(), "id": "other", "proc_start": proc_start(os.getpid())}


def test_the_budget_counts_finished_trials_except_the_flagged_ones(tmp_path):
    driver = _driver(tmp_path, seed_trials=[])
    study = driver.open_study()
    for state, attrs in [
        (TrialState.COMPLETE, {}),
        (TrialState.COMPLETE, {"reaped": True}),  # told after all: counts
        (TrialState.FAIL, {"reaped": True}),
        (TrialState.FAIL, {"interrupted": True}),
        (TrialState.PRUNED, {"infeasible": ["max_params: 2 > 1"]}),
        (TrialState.FAIL, {}),
        (TrialState.PRUNED, {}),
        (TrialState.RUNNING, {}),
        # Waiting at a rung for a promotion (multi-fidelity): running, and counted as paused.
        (TrialState.RUNNING, {"rungs": [{"rung": 0, "tokens": 9, "decision": "paused"}]}),
        (TrialState.COMPLETE, {"duplicate_of": 0}),  # another trial's values: no budget
    ]:
        values = [1.0, 2.0] if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(state=state, values=values, user_attrs=attrs))
    study.enqueue_trial({})
    assert driver.counts() == {
        "complete": 2,
        "failed": 3,
        "pruned": 1,
        "infeasible": 1,
        "running": 2,
        "waiting": 1,
        "counted": 4,
        "duplicates": 1,
        "paused": 1,
    }


def test_other_drivers_running_trials_hold_their_share_of_the_budget(tmp_path):
    executor = InProcess()
    driver = _driver(tmp_path, executor, seed_trials=[])
    study = driver.open_study()
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[1.0, 2.0]))
    theirs = study.ask(driver.distributions)
    theirs.set_user_attr("driver", _other_live_driver())
    assert driver._dispatch(2) is None and executor.jobs == []
    result = driver.run(2)  # nothing to ask: it waits for no one and stops
    assert result.finished == 1 and executor.jobs == []
    assert study.get_trials()[theirs.number].state == TrialState.RUNNING  # not reaped
    assert driver._dispatch(3) == "submitted" and len(executor.jobs) == 1


def test_a_search_runs_seeds_first_and_hands_jobs_the_compile_choice_and_noise(tmp_path):
    def outcome(job):
        return TrialOutcome(
            job.number,
            "COMPLETE",
            {"throughput_tokens_per_s": 10.0, "val_loss": 1.0 + job.number},
            {"allocation": "a"},
            compile_choice={"gpu-y": True} if job.number == 0 else {},
            noise={"n": 3, "val_loss_std": 0.01} if job.noise_seeds else None,
        )

    executor = InProcess(outcome)
    driver = _driver(tmp_path, executor)
    study = driver.open_study()
    assert study.user_attrs["method"] == 2
    result = driver.run(3)
    assert result.finished == 3 and not result.interrupted and executor.started
    assert [j.seed_variant for j in executor.jobs] == ["MHA", "SQA", None]
    assert [j.params for j in executor.jobs[:2]] == [p for _, p in driver.spec.seed_params()]
    # The first baseline measures the study's noise (auto: the worker decides by device).
    assert [j.noise_seeds for j in executor.jobs] == ["auto", None, None]
    assert study.user_attrs["noise"] == {"n": 3, "val_loss_std": 0.01}
    assert (
        "noise floor: val_loss sigma 0.01 [0.0052, 0.063] (3 seeds of trial None)"
        in driver.text.getvalue()
    )
    # The compile choice stays: later trials there time and train the same way.
    assert study.user_attrs["compile_choice"] == {"gpu-y": True}
    assert executor.jobs[2].compile_choice == {"gpu-y": True}
    trials = study.get_trials()
    assert [t.values for t in trials] == [[1.0, 10.0], [2.0, 10.0], [3.0, 10.0]]  # in order
    assert read_study_attrs(study, driver.url).runs[-1]["in_trial_fraction"] == 0.5
    # The same command again: the budget is done, no executor is started.
    again = InProcess()
    assert _driver(tmp_path, again).run(3).finished == 3
    assert not again.started and again.jobs == []


def test_seeds_are_enqueued_once_however_often_the_study_is_opened(tmp_path):
    driver = _driver(tmp_path)
    driver.open_study()
    driver.open_study()
    _driver(tmp_path).open_study()
    waiting = [
        t.user_attrs["seed_variant"]
        for t in driver.study.get_trials()
        if t.state == TrialState.WAITING
    ]
    assert waiting == ["MHA", "SQA"]


def test_executor_figures_of_the_last_runs_are_kept(tmp_path):
    driver = _driver(tmp_path)
    study = driver.open_study()
    for i in range(KEEP_STATS + 1):
        driver._store_stats({"n": i})  # one record each, beside the storage
    runs = read_study_attrs(study, driver.url).runs
    assert [r["n"] for r in runs] == list(range(1, KEEP_STATS + 1))  # the last ones
    assert runs[-1]["driver"] == driver.identity["id"]
    assert "executor_stats" not in study.user_attrs


def test_a_run_stores_the_training_share_of_its_trials_and_nvml_figures(tmp_path):
    """The InProcess executor uses no GPU: NVML is n/a with the reason. The run's clock reads
    1000 at its start and 1100 at its end; the trials' training windows fall inside."""
    windows = {0: [1010.0, 1060.0], 1: [1000.0, 1025.0], 2: [1050.0, 1090.0]}

    def outcome(job):
        attrs = {
            "device": {"name": "NVIDIA H200", "node": "n1", "gpu": job.number % 2},
            "timings": {"train_window": windows[job.number]},
        }
        values = {"val_loss": 1.0, "throughput_tokens_per_s": 1.0}
        return TrialOutcome(job.number, "COMPLETE", values, attrs)

    driver = _driver(tmp_path, InProcess(outcome))
    driver.meter.clock = iter([1000.0, 1100.0]).__next__
    result = driver.run(3)
    stats = read_study_attrs(driver.study, driver.url).runs[-1]
    assert result.stats == {k: v for k, v in stats.items() if k in result.stats}
    assert stats["in_trial_fraction"] == 0.5  # the executor's own figures stay
    assert stats["nvml_util_mean"] is None and "CPU" in stats["nvml_note"]
    assert stats["wall_s"] == 100.0
    assert stats["train_step_share_by_gpu"] == {
        "n1 GPU 0 (NVIDIA H200)": 0.8,  # [1010, 1090]: two windows, overlapping
        "n1 GPU 1 (NVIDIA H200)": 0.25,
    }
    assert stats["train_step_share"] == 0.525


def test_architectures_refused_by_constraints_are_pruned_until_too_many_in_a_row(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(driver_module, "MAX_INFEASIBLE_IN_A_ROW", 3)
    executor = InProcess()
    driver = _driver(tmp_path, executor, seed_trials=[], constraints={"max_params": 1})
    with pytest.raises(UserError, match="^3 sampled architectures in a row violate"):
        driver.run(10)
    trials = driver.study.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 3 and executor.jobs == []
    assert all(t.user_attrs["fail_reason"].startswith("infeasible: max_params: ") for t in trials)
    assert driver.counts()["infeasible"] == 3 and driver.counts()["counted"] == 0


def test_a_grid_search_stops_at_the_grid_and_labels_the_baselines(tmp_path):
    executor = InProcess()
    driver = _driver(
        tmp_path, executor, search={**TINY["search"], "tying": "all"}, sampler={"name": "grid"}
    )
    assert driver.spec.cardinality() == 5  # 4/2 4/1 2/2 2/1 and the MHA seed's 4/4
    result = driver.run(10)
    assert result.finished == 5 and len(executor.jobs) == 5
    assert sorted(j.params["all.heads"] for j in executor.jobs) == [
        "2/1",
        "2/2",
        "4/1",
        "4/2",
        "4/4",
    ]
    labels = {j.params["all.heads"]: j.seed_variant for j in executor.jobs}
    assert labels["4/4"] == "MHA" and labels["2/1"] == "SQA" and labels["4/2"] is None
    assert "grid sampler: 5 architectures" in driver.text.getvalue()


def test_ctrl_c_fails_the_running_trial_and_queues_it_again(tmp_path):
    driver = _driver(tmp_path, InProcess(interrupt=True), seed_trials=[])
    result = driver.run(3)
    assert result.interrupted and result.finished == 0
    first, retry = driver.study.get_trials()
    assert first.state == TrialState.FAIL and first.user_attrs["interrupted"]
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0
    assert retry.system_attrs["fixed_params"] == first.params


def _ask_as(driver, identity):
    trial = driver.study.ask(driver.distributions)  # the queued MHA seed first
    trial.set_user_attr("driver", identity)
    return trial


def test_reaping_fails_a_gone_drivers_trial_and_queues_it_with_its_label(tmp_path, ended_pid):
    driver = _driver(tmp_path, seed_trials=["MHA"])
    driver.open_study()
    gone = _ask_as(driver, {"host": HOST, "pid": ended_pid, "id": "gone"})
    alive = _ask_as(driver, _other_live_driver())
    assert driver.reap() == 1
    trials = driver.study.get_trials()
    assert trials[alive.number].state == TrialState.RUNNING
    reaped = trials[gone.number]
    assert reaped.state == TrialState.FAIL and reaped.user_attrs["reaped"]
    assert (
        reaped.user_attrs["fail_reason"] == f"reaped: its driver ({HOST} pid {ended_pid}) is gone"
    )
    [retry] = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.user_attrs == {"retry_of": gone.number, "seed_variant": "MHA"}
    assert retry.system_attrs["fixed_params"] == reaped.params


def test_a_trial_its_own_driver_fails_while_being_reaped_is_not_queued_again(
    tmp_path, ended_pid, monkeypatch
):
    driver = _driver(tmp_path, seed_trials=["MHA"])
    study = driver.open_study()
    trial = _ask_as(driver, {"host": HOST, "pid": ended_pid, "id": "slow"})
    write = driver.storage.set_trial_user_attr

    def told_meanwhile(trial_id, key, value):  # its driver records its own failure right after
        write(trial_id, key, value)
        if key == "fail_reason":
            write(trial_id, "fail_reason", "worker died")
            study.tell(trial.number, state=TrialState.FAIL)

    monkeypatch.setattr(driver.storage, "set_trial_user_attr", told_meanwhile)
    assert driver.reap() == 0
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]
    assert study.get_trials()[trial.number].user_attrs["fail_reason"] == "worker died"


def test_a_repeated_layout_is_told_the_evaluated_values_and_not_counted(tmp_path):
    executor = InProcess(
        lambda job: TrialOutcome(
            job.number,
            "COMPLETE",
            {"val_loss": 1.0, "throughput_tokens_per_s": 2.0},
            {"allocation": f"alloc {job.number}"},
        )
    )
    driver = _driver(tmp_path, executor, seed_trials=["MHA", "SQA", "MHA"])
    study = driver.open_study()
    assert driver.run(3).finished == 3
    trials = study.get_trials()
    repeat = trials[2]
    assert repeat.user_attrs["duplicate_of"] == 0 and repeat.values == trials[0].values
    assert repeat.user_attrs["allocation"] == "alloc 0"
    assert repeat.user_attrs["layout"] == trials[0].user_attrs["layout"]
    assert [j.number for j in executor.jobs] == [0, 1, 3]  # the repeat never trained
    assert driver.counts()["duplicates"] == 1 and driver.counts()["counted"] == 3
    assert "trial 2 [" in driver.text.getvalue() and "repeats trial 0" in driver.text.getvalue()


class TwoSlots(InProcess):
    """Two trials at once; a poll finishes only the oldest."""

    def free_slots(self):
        return 2 - len(self.running)

    def poll(self, timeout):
        self.polls += 1
        if self.polls > self.max_polls:
            raise AssertionError("the driver kept polling")
        number = min(self.running)
        return [self._finish(number, self.outcome(self.running[number].job))]


def test_a_repeat_of_a_running_trial_waits_for_it_and_gets_its_values(tmp_path):
    def outcome(job):
        if job.number == 1:
            return TrialOutcome(job.number, "FAIL", attrs={"fail_reason": "out of memory"})
        values = {"val_loss": 3.0, "throughput_tokens_per_s": 7.0}
        return TrialOutcome(job.number, "COMPLETE", values)

    executor = TwoSlots(outcome)
    driver = _driver(tmp_path, executor, seed_trials=["MHA", "SQA", "MHA", "SQA"])
    study = driver.open_study()
    driver.run(3)
    trials = study.get_trials()
    # 0 and 1 run; 2 repeats running 0 and is held; 3 repeats running 1, which then fails.
    assert trials[2].user_attrs["duplicate_of"] == 0 and trials[2].values == [3.0, 7.0]
    assert trials[3].user_attrs["duplicate_of"] == 1 and trials[3].state == TrialState.FAIL
    assert "did not complete" in trials[3].user_attrs["fail_reason"]
    assert all(j.number not in (2, 3) for j in executor.jobs)


def test_a_space_whose_every_layout_is_evaluated_stops_the_search(tmp_path):
    executor = InProcess()
    one = {"n_q_heads": ["H"], "n_kv_heads": ["H"], "tying": "all"}
    driver = _driver(tmp_path, executor, seed_trials=[], search=one)
    result = driver.run(5)
    assert result.finished == 1 and len(executor.jobs) == 1
    assert "all 1 layouts are evaluated" in driver.text.getvalue()


# ------------------------------------------------------------------ repeats, one by one
def _repeats() -> tuple[optuna.Study, Repeats]:
    study = optuna.create_study(directions=["minimize", "maximize"])
    return study, Repeats(study, study._storage, lambda line: None)


def _asked(study: optuna.Study, layout: str | None, **attrs) -> optuna.Trial:
    trial = study.ask()
    for key, value in {"layout": layout, **attrs}.items():
        if value is not None:
            trial.set_user_attr(key, value)
    return trial


RUNG = {"rung": 0, "tokens": 64, "values": {"val_loss": 2.0}}


def test_a_repeat_of_a_promoted_trial_running_here_waits_and_gets_every_figure():
    study, repeats = _repeats()
    _asked(study, "L", rungs=[{**RUNG, "decision": "promoted"}])  # in flight, here
    assert repeats.check(_asked(study, "L"), "L", running={0})
    assert repeats.held == {0: [1]} and study.trials[1].state == TrialState.RUNNING
    figures = {
        "allocation": "alloc",
        "metrics": {"val_loss": 1.0},
        "analytics": {"params": 10},
        "model": {"d_model": 8},
        "layers": [{"heads": "2/1"}],
        "seeds": [7],
    }
    original = study.trials[0]._trial_id
    for key, value in figures.items():
        study._storage.set_trial_user_attr(original, key, value)
    study.tell(0, [1.0, 2.0])
    repeats.release(0)
    repeat = study.trials[1]
    assert repeat.state == TrialState.COMPLETE and repeat.values == [1.0, 2.0]
    assert {k: repeat.user_attrs[k] for k in figures} == figures
    assert repeat.user_attrs["duplicate_of"] == 0 and repeats.held == {}


@pytest.mark.parametrize(
    "state, words", [(TrialState.RUNNING, "paused"), (TrialState.PRUNED, "stopped")]
)
def test_a_repeat_of_a_trial_left_at_a_rung_fails_saying_where(state, words):
    study, repeats = _repeats()
    _asked(study, "L", rungs=[{**RUNG, "decision": "paused"}])
    if state == TrialState.PRUNED:
        study.tell(0, state=TrialState.PRUNED)
    assert repeats.check(_asked(study, "L"), "L", running=set())
    repeat = study.trials[1]
    assert repeat.state == TrialState.FAIL and repeat.user_attrs["duplicate_of"] == 0
    assert repeat.user_attrs["fail_reason"] == f"duplicate: trial 0 has it, {words} at a rung"


def test_a_trial_running_under_another_driver_is_not_waited_for():
    study, repeats = _repeats()
    _asked(study, "L")  # RUNNING, no rungs, not one of this driver's
    assert not repeats.check(_asked(study, "L"), "L", running=set())
    assert repeats.held == {} and "duplicate_of" not in study.trials[1].user_attrs


def test_evaluated_counts_the_distinct_layouts_of_completed_trials():
    study, repeats = _repeats()
    for layout in ("L", "L", "M", None):  # None: a trial of a study older than layouts
        _asked(study, layout)
    _asked(study, "N")  # fails: not evaluated
    for number in range(4):
        study.tell(number, [1.0, 1.0])
    study.tell(4, state=TrialState.FAIL)
    assert repeats.evaluated() == 2


def test_a_held_repeat_finished_meanwhile_is_left_as_it_is():
    study, repeats = _repeats()
    _asked(study, "L")
    assert repeats.check(_asked(study, "L"), "L", running={0})
    study.tell(1, state=TrialState.FAIL)  # reaped while held
    study.tell(0, [1.0, 2.0])
    repeats.release(0)
    assert study.trials[1].state == TrialState.FAIL and repeats.held == {}


def test_abandoned_repeats_fail_naming_their_original():
    study, repeats = _repeats()
    _asked(study, "L")
    assert repeats.check(_asked(study, "L"), "L", running={0})
    repeats.abandon("interrupted")
    repeat = study.trials[1]
    assert repeat.state == TrialState.FAIL and repeat.user_attrs["duplicate_of"] == 0
    assert repeat.user_attrs["fail_reason"] == "duplicate: interrupted" and repeats.held == {}


def test_a_resumed_search_draws_past_the_layouts_it_drew(tmp_path):
    """Seeded as the first run was, a resumed search proposed that run's layouts again, each
    a repeat (13 in a row in the H200 study of issue 19); seeded past the study's trials,
    its draws are new."""
    space = {
        "model": {**TINY["model"], "n_layers": 4},
        "search": {"n_q_heads": ["H", "H/2", "H/4"], "n_kv_heads": ["H", "H/2", 1]},
        "seed_trials": [],
        "sampler": {"name": "random", "seed": 5},
    }
    _driver(tmp_path, **space).run(4)
    again = _driver(tmp_path, **space)
    again.run(8)
    trials = again.study.get_trials()
    assert [t.user_attrs.get("duplicate_of") for t in trials] == [None] * 8
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 8
