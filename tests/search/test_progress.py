"""sqa_nas.search.progress: the live panel (a rich progress bar of trials or of the time
budget, tokens trained, rates, ETA, the trials by state) and, off a terminal, plain lines;
rates count this run's trials only. A driver's run logs those lines without a control
character."""

from __future__ import annotations

import io
from collections import Counter

import optuna
from rich.console import Console

from sqa_nas.progress import Pace, clock_time, rate_text
from sqa_nas.search import records
from sqa_nas.search.driver import Driver
from sqa_nas.search.executors.base import Executor, Running
from sqa_nas.search.progress import PLAIN_EVERY_S, SearchProgress
from sqa_nas.search.records import TrialRecord, trial_records
from sqa_nas.search.space import parse_space
from sqa_nas.search.study import trial_counts
from sqa_nas.search.trial import TrialJob
from tests.search.test_driver import InProcess
from tests.search.test_search import TINY

SPEC = parse_space(TINY)
TOKENS_PER_STEP = 2 * 32  # TINY: batch 2, seq_len 32


class Idle(Executor):
    def start(self): ...

    def free_slots(self):
        return 0

    def submit(self, job): ...

    def poll(self, timeout):
        return []

    def shutdown(self, *, cancel=False):
        return []


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def trained(number: int, tokens: int, loss: float = 2.0) -> TrialRecord:
    return TrialRecord(
        number,
        "COMPLETE",
        {"val_loss": loss, "throughput_tokens_per_s": 100.0 + number},
        {},
        {"metrics": {"train_tokens": tokens}},
    )


def shown(renderable, width: int = 200) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(renderable)
    return out.getvalue()


def progress(executor=None, n_trials=10, wall=None, terminal=False, clock=None):
    console = Console(file=io.StringIO(), width=120, force_terminal=terminal)
    return SearchProgress(
        SPEC,
        executor or Idle(),
        "sqlite:///x.db",
        n_trials,
        wall,
        console=console,
        clock=clock or Clock(),
    )


def test_the_header_counts_repeats_told_only_when_there_are_some():
    counts = {"counted": 2, "complete": 2, "running": 1, "duplicates": 3}
    text = shown(progress(n_trials=4).panel(counts, None))
    assert "2/4 evaluated" in text and "repeats told 3" in text
    assert "complete 2, running 1, failed 0, pruned 0, infeasible 0" in text
    none_told = progress(n_trials=4).panel({**counts, "duplicates": 0}, None)
    assert "repeats told" not in shown(none_told)


def test_rates_and_eta_count_this_runs_trials_only():
    clock = Clock()
    p = progress(clock=clock)
    # a resumed study: 4 trials (4,000 tokens) evaluated before this run
    before = [trained(i, 1000) for i in range(4)]
    assert p.status({"counted": 4}, before).trials.rate is None  # nothing new yet
    clock.now += 3600.0  # an hour later, 2 more trials of 3,600 tokens each
    now = before + [trained(4, 3600), trained(5, 3600)]
    s = p.status({"counted": 6}, now)
    assert s.trials.rate == 2 / 3600 and s.limit == "n_trials"
    assert s.trials.eta == 4 / (2 / 3600)  # 4 to go at 2 an hour: 2 hours
    assert s.tokens == 11_200 and s.tokens_per_s == 2.0
    assert s.eta_text() == "ETA 2:00:00 (n_trials)"
    assert s.rates() == "11,200 tokens trained, 2 trials/h, 2 tokens/s"


def test_the_time_budget_limits_when_it_ends_the_run_first():
    clock = Clock()
    p = progress(wall=1800.0, clock=clock)
    p.status({"counted": 0}, [])
    clock.now += 600.0
    s = p.status({"counted": 1}, [trained(0, 10)])
    # 9 trials to go at 6 an hour take 1.5 hours; the budget has 20 minutes left
    assert s.limit == "time" and s.eta == 1200.0
    assert s.eta_text() == "ETA 0:20:00 (time budget)"
    text = shown(p.panel({"counted": 1, "complete": 1}, None))
    assert "1 evaluated, time budget 0:10:00 of 0:30:00" in text and "ETA 0:20:00" in text
    clock.now += 600.0
    fast = p.status({"counted": 8}, [trained(0, 10)])  # 8 in 20 min: 2 more in 5, of 10 left
    assert fast.limit == "n_trials" and fast.eta_text() == "ETA 0:05:00 (n_trials)"


def test_tokens_trained_count_running_trials_steps_once():
    executor = Idle()
    job = TrialJob(1, {}, {}, None, {})
    executor.running[1] = Running(job, "cpu worker 0", progress={"step": 10, "of": 20})
    executor.running[2] = Running(job, "cpu worker 1", progress={"step": 3, "of": 20})
    p = progress(executor)
    # trial 1 was paused at 320 tokens and resumed: its step counts from its start
    records = [trained(0, 500), trained(1, 320)]
    assert p.tokens_trained(records) == 500 + 10 * TOKENS_PER_STEP + 3 * TOKENS_PER_STEP
    text = shown(p.panel({"counted": 1, "running": 2}, None))
    assert "10/20" in text and "cpu worker 1" in text
    # trial 2 starts its second seed: its steps count again from 1, the first seed's stay
    executor.running[2].progress = {"step": 1, "of": 20}
    assert p.tokens_trained(records) == 500 + 10 * TOKENS_PER_STEP + 4 * TOKENS_PER_STEP
    # a trial trained with 3 seeds records one seed's tokens
    three = TrialRecord(
        3, "COMPLETE", None, {}, {"metrics": {"train_tokens": 100}, "seeds": [1, 2, 3]}
    )
    assert progress().tokens_trained([three]) == 300


def test_a_refresh_reads_new_and_running_trials_only_and_shows_a_full_recounts_figures(
    monkeypatch,
):
    reads = Counter[int]()  # trial number -> times its record was read
    read = records.trial_record

    def counted(t, names):
        reads[t.number] += 1
        return read(t, names)

    monkeypatch.setattr(records, "trial_record", counted)
    study = optuna.create_study(directions=SPEC.directions)
    study.set_metric_names(list(SPEC.objectives))
    executor, clock = Idle(), Clock()
    live = progress(executor, clock=clock)  # plain lines: one a refresh (the clock moves)
    full = progress(executor, clock=clock)  # the same figures from every record each time
    job = TrialJob(0, {}, {}, None, {})

    def start(step: int) -> optuna.Trial:
        t = study.ask()
        executor.running[t.number] = Running(job, "cpu worker", progress={"step": step})
        return t

    def finish(t: optuna.Trial, tokens: int, seeds: int = 1) -> None:
        t.set_user_attr("metrics", {"train_tokens": tokens})
        t.set_user_attr("seeds", list(range(seeds)))
        study.tell(t, [2.0 - t.number / 10, 100.0 - t.number])  # both on the front
        del executor.running[t.number]

    def refresh(expected_reads: set[int]) -> str:
        clock.now += PLAIN_EVERY_S
        counts = trial_counts(study)
        want = full.line(counts, trial_records(study))  # a full recount
        reads.clear()
        live.update(counts, study)
        assert set(reads) == expected_reads and all(n == 1 for n in reads.values())
        shown = live.console.file.getvalue().splitlines()[-1]
        assert shown.split("] ", 1)[1] == want  # after the time stamp
        return want

    first = start(3)
    assert "192 tokens trained" in refresh({0})  # 3 steps of 64 tokens
    finish(first, 1000)
    second = start(5)
    assert "1,320 tokens trained" in refresh({0, 1})  # 0 read once more: it finished
    executor.running[1].progress = {"step": 2}  # its second seed began: 5 + 2 steps
    third = start(1)
    assert "1,512 tokens trained" in refresh({1, 2})  # trial 0 is not read again
    finish(second, 640, seeds=2)
    study.tell(third, state=optuna.trial.TrialState.FAIL)
    del executor.running[2]
    assert "2,280 tokens trained" in refresh({1, 2})  # 1000 + 2 x 640 + 0
    assert "Pareto front: 2 trials" in refresh(set())  # all finished: nothing read
    # The live panel on a terminal reads the same way.
    panel = progress(executor, terminal=True, clock=clock)
    reads.clear()
    panel.panel(trial_counts(study), study)
    panel.panel(trial_counts(study), study)
    assert reads == {0: 1, 1: 1, 2: 1}


def test_the_panel_on_a_terminal_has_the_bar_rate_and_eta():
    clock = Clock()
    p = progress(terminal=True, clock=clock)
    p.status({"counted": 0}, [])
    clock.now += 1800.0
    records = [trained(0, 6400), trained(1, 6400, loss=1.5)]
    out = io.StringIO()
    Console(file=out, width=80, force_terminal=True).print(p.panel({"counted": 2}, None))
    text = out.getvalue()
    assert "━" in text and "2/10 evaluated" in text and "ETA 2:00:00 (n_trials)" in text
    assert "0:30:00" in text  # elapsed
    line = p.line({"counted": 2, "complete": 2}, records)
    assert line.startswith("progress: 2/10 evaluated (complete 2, running 0, failed 0,")
    assert "12,800 tokens trained, 4 trials/h, 7 tokens/s" in line
    assert "0:30:00 elapsed, ETA 2:00:00 (n_trials) | Pareto front: 1 trials" in line


def test_pace_and_its_words():
    assert Pace(10, 10, 5.0).eta_text() == "done"
    assert Pace(10, 3, 5.0, done_before=3).eta_text() == "ETA -"
    assert clock_time(90061) == "1d 1:01:01" and clock_time(59.6) == "0:01:00"
    assert rate_text(2.5, "rows") == "2.5 rows/s" and rate_text(0.05, "rows") == "3 rows/min"
    assert rate_text(1 / 7200, "trials") == "0.5 trials/h" and rate_text(None, "x") == "- x/h"


def test_a_search_off_a_terminal_logs_plain_progress_lines(tmp_path):
    out = io.StringIO()
    console = Console(file=out, width=120)  # a file: not a terminal
    spec = parse_space({**TINY, "study": "plainlog"})
    driver = Driver(spec, InProcess(), storage_url=f"sqlite:///{tmp_path}/s.db", console=console)
    driver.run(4)
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text  # no control sequences in a log
    # One line each, unpadded (Console.log pads to the console's width), time-stamped.
    assert all(x == x.rstrip() for x in text.splitlines())
    told = [x for x in text.splitlines() if "] trial " in x]
    assert len(told) == 4 and all(x.startswith("[") for x in told)
    lines = [x for x in text.splitlines() if "progress:" in x]
    assert lines and "4/4 evaluated (complete 4, running 0" in lines[-1]
    assert "tokens trained" in lines[-1] and " trials/" in lines[-1] and "done" in lines[-1]
