"""The search driver: owns the Optuna study (ask / tell), its storage and the budget;
dispatches trials to an executor and shows progress.

Resuming is rerunning the same command: completed trials are kept, and trials left RUNNING
by a driver that is gone are marked FAIL and their params re-enqueued. Whether a driver is
gone is decided by its process (same host: pid and process start time) or, on a database
storage shared across machines, by Optuna's heartbeat, so several drivers can share one study
without reaping each other's live trials. Steps that read and then write the study (creating
it, enqueueing the seed trials, reaping, checking the budget before an ask) run under a
per-study lock (`study_lock`), so drivers started together neither enqueue a seed twice nor
overrun the trial budget. Ctrl-C records in-flight trials as FAIL, re-enqueues them, and
exits; nothing completed is lost. An executor that loses what runs its trials (`ExecutorLost`:
a Ray raylet or GCS died) gets the same, then the error ends the run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from rich.console import Console

from sqa_nas.analytics import analyze
from sqa_nas.data import load_dataset
from sqa_nas.errors import UserError
from sqa_nas.progress import log_line
from sqa_nas.search.executors.base import Executor, ExecutorLost
from sqa_nas.search.figures import RunMeter
from sqa_nas.search.locks import (
    driver_identity,
    reap_trials,
    stale_trial_ids,
    start_heartbeat,
    study_lock,
    uses_heartbeat,
)
from sqa_nas.search.noise import Noise
from sqa_nas.search.progress import SearchProgress
from sqa_nas.search.repeats import Repeats
from sqa_nas.search.samplers import make_sampler
from sqa_nas.search.scheduler import Scheduler, checkpoint_folder
from sqa_nas.search.space import SearchSpec, layout_key
from sqa_nas.search.storage import check_storage, check_study_name, default_storage, open_storage
from sqa_nas.search.study import Baselines, create_or_load, quiet_optuna, trial_counts
from sqa_nas.search.study_attrs import write_record
from sqa_nas.search.trial import TrialJob, TrialOutcome
from sqa_nas.search.utilisation import GpuSampler

MAX_INFEASIBLE_IN_A_ROW = 500
MAX_DUPLICATES_IN_A_ROW = 100  # then the sampler has nothing new to offer: stop
REAP_EVERY_S = 60.0  # a long search also picks up trials of drivers that died meanwhile


@dataclass
class SearchResult:
    """What `Driver.run` leaves: the study, where it is stored, how many trials of the
    budget are evaluated, whether Ctrl-C ended it, and the run's figures (the executor's
    and `RunMeter`'s, as `figures.RunStats` reads them)."""

    study: optuna.Study
    storage_url: str
    finished: int  # evaluated trials in the study (the budget's count)
    interrupted: bool = False
    stats: dict[str, Any] = field(default_factory=dict)


class Driver:
    """Runs a search: asks Optuna for trials, hands them to `executor`, tells the outcomes.

    Args:
        spec: the validated search space.
        executor: where trials run (`executors.make_executor`).
        storage_url: the Optuna storage (default: the spec's, else
            ``sqlite:///runs/STUDY/study.db``).
        console: where progress and log lines go.
    """

    @quiet_optuna()
    def __init__(
        self,
        spec: SearchSpec,
        executor: Executor,
        *,
        storage_url: str | None = None,
        console: Console | None = None,
    ) -> None:
        self.spec = spec
        self.executor = executor
        check_study_name(spec.study_name)  # it names folders (checkpoints) on any storage
        url = storage_url if storage_url is not None else spec.storage  # "" is refused
        self.url = check_storage(default_storage(spec.study_name) if url is None else url)
        self.console = console or Console()
        self.identity = driver_identity()
        self.storage = open_storage(
            self.url,
            heartbeat=self._heartbeat_storage,
            # Drivers started together on a fresh database would race to create its tables.
            schema_lock=lambda: study_lock(None, self.url, "schema"),
            study=spec.study_name,  # damaged: refused before its lock file is made
        )
        self.distributions: dict[str, optuna.distributions.BaseDistribution] = dict(
            spec.distributions()
        )  # a copy typed as Study.ask takes it (dict is invariant)
        self.events: list[str] = []
        self._lock = threading.Lock()
        self._noise_sent = False
        self.meter = RunMeter(GpuSampler(executor.local_gpus()))  # NVML, training windows

    def _study_lock(self):
        return study_lock(self.storage, self.url, self.spec.study_name)

    @property
    def _heartbeat_storage(self) -> bool:
        return uses_heartbeat(self.url)

    # ------------------------------------------------------------------------- the study
    @quiet_optuna()
    def open_study(self) -> optuna.Study:
        """Create the study or load it (checking it was made from this space and corpus;
        finishing one left half-created), and enqueue the seed variants it lacks. Returns
        the study (also `self.study`)."""
        spec = self.spec
        data = load_dataset(spec.data.model_dump(mode="json"))
        self.vocab_size = data.vocab_size
        with self._study_lock() as locked:  # another driver may be creating it right now
            corpus = (data.meta, data.fingerprint)
            study = create_or_load(
                self.storage, spec, make_sampler(spec), corpus, self.url, locked=locked
            )
            drawn = len(study.get_trials(deepcopy=False))
            if drawn:  # resumed or shared: draw past what the study holds (`make_sampler`)
                study.sampler = make_sampler(spec, drawn)
            self.study = study
            self.repeats = Repeats(study, self.storage, self.log)
            folder = checkpoint_folder(spec, self.url)
            self.scheduler = Scheduler(spec, study, self.storage, folder, self.log)
            # A grid holds every seed allocation already; `_dispatch` labels them.
            seeds = [] if spec.sampler.name == "grid" else spec.seed_params()
            self.baselines = Baselines(study, seeds)
            self.baselines.enqueue()
        return study

    @quiet_optuna()
    def reap(self) -> int:
        """Fail and re-enqueue RUNNING trials whose driver is gone. Returns how many.

        Gone: on this host, its process has ended (pid and start time); elsewhere, on a
        database storage, its heartbeat is older than the grace period (Optuna's
        `fail_stale_trials`). A live driver's trial is never reaped."""
        with self._study_lock() as locked:  # two drivers reaping at once would re-enqueue twice
            return reap_trials(
                self.study,
                self.storage,
                stale=set(stale_trial_ids(self.storage, self.study, self.url)),
                identity=self.identity,
                locked=locked,
                heartbeat=self._heartbeat_storage,
                keep=self.scheduler.rescue,  # paused at a checkpoint: kept for a promotion
                requeue=self._requeue,
            )

    def _requeue(self, t) -> None:
        params = t.params
        if set(params) != set(self.distributions):  # its driver died while drawing it
            params = t.system_attrs.get("fixed_params")  # what it was queued with, if anything
            if not params:
                return  # nothing to re-run: a fresh ask replaces it
        extra = {k: t.user_attrs[k] for k in ("seed_variant",) if k in t.user_attrs}
        self.study.enqueue_trial(params, user_attrs={"retry_of": t.number, **extra})

    def counts(self) -> dict[str, int]:
        """The study's trials by state (`study.trial_counts`)."""
        return trial_counts(self.study)

    # ------------------------------------------------------------------------- the loop
    @quiet_optuna()
    def run(self, n_trials: int, max_wall_seconds: float | None = None) -> SearchResult:
        """Open the study, reap what stopped drivers left RUNNING, and dispatch trials until
        `n_trials` are evaluated (by this and other drivers) or `max_wall_seconds` pass.
        Ctrl-C fails the in-flight trials, re-queues them and returns (``interrupted``);
        `ExecutorLost` does the same, then propagates."""
        if self.spec.sampler.name == "grid" and n_trials > self.spec.cardinality():
            self.log(
                f"grid sampler: {self.spec.cardinality()} architectures, so "
                f"{self.spec.cardinality()} trials instead of n_trials={n_trials}"
            )
            n_trials = self.spec.cardinality()
        self.open_study()
        reaped = self.reap()
        if reaped:
            self.log(f"reaped {reaped} trial(s) left RUNNING by a stopped driver; re-queued")
        counts = self.counts()
        if counts["counted"] >= n_trials:
            self.log(
                f"study already holds {counts['counted']} evaluated trials "
                f"(n_trials={n_trials}): nothing to run"
            )
            return SearchResult(self.study, self.url, counts["counted"])
        self.meter.start()  # the wall time includes bringing the workers up
        try:
            self.executor.start()
        except BaseException:
            self.meter.stop()
            raise
        start = last_reap = last_render = time.monotonic()
        interrupted, infeasible_row, duplicate_row = False, 0, 0
        heartbeat = (
            start_heartbeat(self.storage, self.study, lambda: self.executor.running)
            if self._heartbeat_storage
            else threading.Event()
        )
        try:
            with SearchProgress(
                self.spec,
                self.executor,
                self.url,
                n_trials,
                max_wall_seconds,
                console=self.console,
            ) as shown:
                shown.update(self.counts(), self.study)
                while True:
                    out_of_time = max_wall_seconds and time.monotonic() - start > max_wall_seconds
                    stop = out_of_time or self.repeats.exhausted
                    while not stop and self.executor.free_slots() > 0:
                        submitted = self._dispatch(n_trials)
                        if submitted is None:
                            break  # the budget is taken (by this or other drivers)
                        infeasible_row = infeasible_row + 1 if submitted == "infeasible" else 0
                        duplicate_row = duplicate_row + 1 if submitted == "duplicate" else 0
                        if infeasible_row >= MAX_INFEASIBLE_IN_A_ROW:
                            raise UserError(
                                f"{infeasible_row} sampled architectures in a row violate "
                                "the constraints: loosen them or narrow the search space"
                            )
                        if duplicate_row >= MAX_DUPLICATES_IN_A_ROW:
                            self.repeats.exhausted = (
                                f"the sampler proposed {duplicate_row} evaluated layouts in a "
                                "row: the space looks exhausted"
                            )
                        stop = self.repeats.exhausted
                    # Nothing of ours runs: stop when the budget is done or held by trials
                    # other drivers are running (they tell them; a rerun reaps them if not).
                    if not self.executor.running and (
                        out_of_time
                        or self.repeats.exhausted
                        or sum(self.counts()[k] for k in ("counted", "running")) >= n_trials
                    ):
                        if not out_of_time:  # nothing left to promote: the ladder ends
                            with self._study_lock():
                                self.scheduler.stop_paused(self.executor.running)
                        break
                    told = False
                    for event in self.executor.poll(timeout=0.5):
                        if event.kind == "done":
                            assert event.outcome is not None  # done events carry one
                            self._tell(event.outcome)
                            told = True
                    if time.monotonic() - last_reap > REAP_EVERY_S:
                        last_reap = time.monotonic()
                        if self.reap():
                            self.log("reaped trial(s) of a driver that stopped; re-queued")
                    # The panel reads the whole study: on a result, else about once a second.
                    if told or time.monotonic() - last_render > 1.0:
                        last_render = time.monotonic()
                        shown.update(self.counts(), self.study)
        except (KeyboardInterrupt, ExecutorLost) as exc:
            # Ctrl-C, or what runs the trials is gone (a dead raylet): fail and re-queue them.
            why = exc.reason if isinstance(exc, ExecutorLost) else "interrupted (Ctrl-C)"
            interrupted = True
            for number in self.executor.shutdown(cancel=True):
                if self.scheduler.rescue(self.study.get_trials(deepcopy=False)[number]):
                    self.repeats.release(number)
                    continue  # paused again at its last checkpoint
                attrs = {"interrupted": True, "fail_reason": f"{why} mid-trial"}
                self._tell(TrialOutcome(number, "FAIL", attrs=attrs), requeue=True)
            self.repeats.abandon(f"{why} while held")
            if isinstance(exc, ExecutorLost):
                raise  # one line and exit code 2 (cli.guarded)
            self.log(
                "interrupted: in-flight trials recorded as FAIL and re-queued; rerun "
                "the same command to resume"
            )
        except BaseException:
            self.executor.shutdown(cancel=True)  # trials left RUNNING: a rerun reaps them
            raise
        else:
            self.executor.shutdown()
            if self.repeats.exhausted:
                self.log(f"stopped before n_trials={n_trials}: {self.repeats.exhausted}")
        finally:
            heartbeat.set()
            self.meter.stop()
        stats = {**self.executor.stats(), **self.meter.stats()}
        self._store_stats(stats)
        return SearchResult(self.study, self.url, self.counts()["counted"], interrupted, stats)

    def _store_stats(self, stats: dict[str, Any]) -> None:
        """Keep the run's figures (`figures.RunStats`) in the study: a ``run`` record of its
        own (`study_attrs`), which `read_study_attrs` lists with the earlier runs'."""
        run = {
            "driver": self.identity["id"],
            "host": self.identity["host"],
            "ended": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **stats,
        }
        with self._study_lock():  # the in-memory fallback reads, then writes, a list
            write_record(self.study, self.url, "run", run)

    def _dispatch(self, n_trials: int) -> str | None:
        """Ask for a trial; refuse it if it violates a constraint, tell it an evaluated
        trial's values if its layout was evaluated (`_repeat`), else submit it. Returns
        "submitted", "infeasible" or "duplicate", or None when the study already holds
        `n_trials` trials evaluated or running (checked with the ask under the study lock,
        so drivers sharing the study never overrun the budget together)."""
        with self._study_lock():
            promoted = self.scheduler.promote(self.executor.running, self.identity)
        if promoted:
            t, segment = promoted
            self.executor.submit(self._job(t, t.number, segment=segment))
            self.log(
                f"trial {t.number}: promoted to rung {segment.rung} ({segment.tokens:,} tokens)"
            )
            return "submitted"
        with self._study_lock():
            counts = self.counts()
            if counts["counted"] + counts["running"] >= n_trials:
                return None
            if self.repeats.evaluated() >= self.spec.cardinality():
                self.repeats.exhausted = f"all {self.spec.cardinality():,} layouts are evaluated"
                return None
            trial = self.study.ask(self.distributions)
            trial.set_user_attr("driver", self.identity)
            if self._heartbeat_storage and isinstance(self.storage, RDBStorage):
                self.storage.record_heartbeat(trial._trial_id)  # databases only have one
        if "seed_variant" not in trial.user_attrs:  # a sampled baseline is still a baseline
            name = next((n for n, p in self.spec.seed_params() if p == trial.params), None)
            if name:
                trial.set_user_attr("seed_variant", name)
        spec = self.spec
        config = spec.build_config(trial.params, self.vocab_size)
        cost = analyze(config, spec.model.seq_len)
        mha = spec.mha_cost(config)
        for key, value in spec.constraints.values(cost, mha).items():
            trial.set_constraint(key, value)
        violations = spec.constraints.violations(cost, mha)
        if violations:
            trial.set_user_attr("infeasible", violations)
            trial.set_user_attr("fail_reason", "infeasible: " + "; ".join(violations))
            self.study.tell(trial, state=TrialState.PRUNED)
            return "infeasible"
        layout = layout_key(config)
        trial.set_user_attr("layout", layout)
        if self.repeats.check(trial, layout, self.executor.running):
            return "duplicate"
        first_seed = spec.seed_trials[0] if spec.seed_trials else None
        noise = None
        if (
            spec.budget.noise_seeds != 0
            and "noise" not in self.study.user_attrs
            and (trial.user_attrs.get("seed_variant") == first_seed or not first_seed)
            and not self._noise_sent
        ):
            noise, self._noise_sent = spec.budget.noise_seeds, True
        baseline = trial.user_attrs.get("seed_variant") is not None
        first = self.scheduler.first_segment(trial.number, baseline)
        self.executor.submit(self._job(trial, trial.number, noise=noise, segment=first))
        return "submitted"

    def _job(self, trial, number: int, **extra) -> TrialJob:
        """The job of trial `number` (`trial`: its Optuna trial, asked or frozen)."""
        return TrialJob(
            number,
            dict(trial.params),
            self.spec.model_dump(mode="json"),
            trial.user_attrs.get("seed_variant"),
            dict(self.study.user_attrs.get("mha_reference", {})),
            compile_choice=dict(self.study.user_attrs.get("compile_choice", {})),
            noise_seeds=extra.get("noise"),
            segment=extra.get("segment"),
        )

    def _tell(self, outcome: TrialOutcome, requeue: bool = False) -> None:
        try:
            self._record(outcome, requeue)
        finally:  # its repeats wait for it however it ended
            self.repeats.release(outcome.number)

    def _record(self, outcome: TrialOutcome, requeue: bool) -> None:
        self.meter.add(outcome.attrs)  # its training ran on our device, whoever records it
        study = self.study
        t = study.get_trials(deepcopy=False)[outcome.number]
        if t.state.is_finished():
            return
        attrs = self.scheduler.merged(t, outcome.attrs)  # a later segment adds to earlier ones
        try:
            # Rungs last: another driver promotes a trial once its last rung reads paused,
            # and must then find the checkpoint it resumes from already stored.
            for key, value in sorted(attrs.items(), key=lambda kv: kv[0] == "rungs"):
                self.storage.set_trial_user_attr(t._trial_id, key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another driver reaped it meanwhile (and re-queued it): its verdict stands.
            self.log(
                f"trial {outcome.number} was finished elsewhere meanwhile; "
                "this outcome is not recorded"
            )
            return
        if outcome.compile_choice:  # per device: the first one stands
            with self._study_lock():  # a read-modify-write other drivers also do
                known = study.user_attrs.get("compile_choice", {})
                study.set_user_attr("compile_choice", {**outcome.compile_choice, **known})
        if outcome.noise is not None and "noise" not in study.user_attrs:
            study.set_user_attr("noise", outcome.noise)
            self.log(f"noise floor: {Noise.model_validate(outcome.noise).describe()}")
        if outcome.state == "PAUSED":  # at a rung, its checkpoint saved: waits for a promotion
            self.scheduler.paused(t, attrs["checkpoint"])
            self.log(
                f"trial {outcome.number} [{attrs.get('allocation', '')}]: {attrs['rungs'][-1]}"
            )
            return
        self.scheduler.finished(t)
        state = TrialState[outcome.state]
        if state == TrialState.COMPLETE:
            study.tell(
                outcome.number,
                [outcome.values[o] for o in self.spec.objectives],
                skip_if_finished=True,
            )
            shown = ", ".join(f"{k} {v:.4g}" for k, v in outcome.values.items())
            self.log(f"trial {outcome.number} [{outcome.attrs.get('allocation', '')}]: {shown}")
        else:
            study.tell(outcome.number, state=state, skip_if_finished=True)
            self.log(f"trial {outcome.number} {state.name}: {outcome.attrs.get('fail_reason')}")
        if requeue:
            self._requeue(t)
        elif state == TrialState.FAIL and (name := self.baselines.retry(t)):
            with self._study_lock():  # a failed baseline runs again
                self.baselines.enqueue([name])

    # ------------------------------------------------------------------------- display
    def log(self, text: str) -> None:
        """A time-stamped line on the console (`log_line`: above the live panel on a
        terminal, unpadded in a log); plain text (an allocation's brackets are not markup)."""
        log_line(self.console, text)
