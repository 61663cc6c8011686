"""Trials on a Ray cluster: one long-lived worker (a Ray actor) per GPU slot, on any node.

The driver keeps the Optuna study; this executor only runs `TrialJob`s. Each worker is an
actor that asks Ray for ``gpus_per_trial`` GPUs and ``cpus_per_trial`` CPUs, so Ray places
it on a node with a free GPU, and runs trial after trial (`ray_worker.TrialWorker`); the
cluster connection and its capacity are `ray_cluster.RayCluster`.

- Slots follow the cluster: every few seconds the executor reads the live nodes and keeps
  one worker per (node, GPU slot) that fits, up to ``max_concurrent``; nodes that join add
  workers, workers on nodes that die are dropped. A trial is asked from Optuna only when a
  worker is up and idle, so no trial waits RUNNING for a placement.
- A worker that dies mid-trial (killed, out of host memory, its node lost) fails only that
  attempt: the trial is run again on another worker, up to ``max_retries`` times, then told
  FAIL with the reason. A trial past ``budget.trial_timeout_s`` is cancelled by killing its
  worker (a replacement starts) and told FAIL. A dead raylet or GCS ends it: `poll` raises
  `ExecutorLost` (`RayCluster.refresh`), and the driver fails and re-queues what ran.
- When trials are short (median under `PIPELINE_BELOW_S`), each busy worker also holds the
  next trial in its queue, so the driver's tell / ask / database round trip overlaps GPU work
  instead of idling the GPU between trials.
- `stats()` reports, per GPU, the time spent inside trials over the wall time from its first
  trial's start to its last trial's end (``in_trial_fraction``: not GPU work, which the
  driver's NVML sampler measures), and the same up to the end of the search
  (``in_trial_fraction_to_end``, which also counts GPUs idle while the last trials finish
  elsewhere). Each trial records its Ray node and GPU in ``attrs["device"]``.

Every node needs the same environment (torch, sqa-nas); Ray puts the driver's ``sys.path``
on its workers' path, which is enough on one machine.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import Any

import ray

from sqa_nas.errors import UserError
from sqa_nas.search.executors.base import Event, Executor, Running, Usage, in_trial_fraction
from sqa_nas.search.executors.ray_cluster import RayCluster
from sqa_nas.search.executors.ray_worker import Attempt, Slot, TrialWorker, error_reason
from sqa_nas.search.space import SearchSpec
from sqa_nas.search.trial import TrialJob, TrialOutcome, run_trial

PROGRESS_EVERY_S = 1.0
PIPELINE_BELOW_S = 30.0  # queue a next trial on busy workers when trials are this short
RECENT_TRIALS = 8
MAX_START_FAILURES = 5  # workers failing to start in a row, none up: the cluster can't run


@dataclass
class _Usage(Usage):
    last_done_driver: float = 0.0  # driver clock, when its last trial's outcome arrived


class RayExecutor(Executor):
    """Trials on Ray workers, placed and retried as the module says.

    Args:
        spec: the search space; its ``execution.ray`` section (address, GPUs and CPUs per
            trial, max_concurrent, max_retries), ``execution.device`` and
            ``budget.trial_timeout_s`` (seconds) apply.
    """

    def __init__(self, spec: SearchSpec) -> None:
        super().__init__()
        r = spec.execution.ray
        self.device = spec.execution.device
        # A CPU-only search asks for no GPU, whatever gpus_per_trial says.
        self.gpus = 0.0 if self.device == "cpu" else spec.execution.ray_gpus_per_trial
        # gpus_per_trial defaults to 1 / execution.trials_per_gpu. Two or more trials fit on
        # a GPU: each times its throughput alone (sqa_nas.gpu_share).
        self.share_gpu = 0 < self.gpus <= 0.5
        self.cpus = float(r.cpus_per_trial)
        self.max_retries = r.max_retries
        self.timeout = spec.budget.trial_timeout_s
        if self.device == "cuda" and self.gpus == 0:
            raise UserError(
                "execution.device: cuda needs a GPU per trial; set "
                "--gpus-per-trial above 0 (execution.ray.gpus_per_trial)"
            )
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise UserError(
                f"execution.ray.gpus_per_trial: {self.gpus:g}; above 1 Ray grants "
                "whole GPUs only (use 2, 3, ... or a fraction below 1)"
            )
        self.cluster = RayCluster(
            address=r.address,
            gpus=self.gpus,
            cpus=self.cpus,
            max_concurrent=r.max_concurrent,
            include_dashboard=r.include_dashboard,
        )
        self.slots: list[Slot] = []
        self.retry: deque[Attempt] = deque()
        self.usage: dict[str, _Usage] = {}
        self.recent: deque[float] = deque(maxlen=RECENT_TRIALS)
        self.counts: Counter[str] = Counter()
        self.by_node: Counter = Counter()
        self._next_index = 0
        self._start_failures = 0
        self._ended: float | None = None

    # ------------------------------------------------------------------------- workers
    def start(self) -> None:
        """Connect to (or start) the Ray cluster and start one worker actor per slot it has."""
        self.cluster.connect()
        self._maintain()

    def _maintain(self) -> None:
        """Keep one worker per slot the cluster has: start missing ones, drop extras."""
        while len(self.slots) < self.cluster.target:
            self._spawn()
        extra = len(self.slots) - self.cluster.target
        for slot in sorted(self.slots, key=lambda s: (s.info is not None, len(s.jobs))):
            if extra <= 0:
                break
            if not slot.jobs:
                self._drop(slot)
                extra -= 1

    def _spawn(self) -> None:
        index, self._next_index = self._next_index, self._next_index + 1
        threads = max(1, int(self.cpus))
        # mypy ignores class decorators: @ray.remote made TrialWorker an ActorClass.
        actor = TrialWorker.options(  # type: ignore[attr-defined]
            num_gpus=self.gpus,
            num_cpus=self.cpus,
            scheduling_strategy="SPREAD",
        ).remote(index, self.device, threads, run_trial)
        self.slots.append(Slot(index, actor, actor.info.remote(), actor.sentinel.remote()))
        self.counts["worker_starts"] += 1

    def _drop(self, slot: Slot) -> None:
        if slot in self.slots:
            self.slots.remove(slot)
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:  # already gone with its node
            pass

    # ------------------------------------------------------------------------- interface
    def describe(self) -> str:
        """The cluster (nodes, GPUs), what is in use, and how many workers are up of the target."""
        gpus = sum(n["GPU"] for n in self.cluster.nodes)
        busy = [s.info for s in self.slots if s.jobs and s.info]
        used_nodes = {info["node_id"] for info in busy}
        used_gpus = {(info["node_id"], g) for info in busy for g in info["gpu_ids"]}
        up = sum(s.info is not None for s in self.slots)
        return (
            f"ray ({self.cluster.name}): {len(self.cluster.nodes)} node(s), {gpus:g} "
            f"GPU(s) | in use: {len(used_nodes)} node(s), {len(used_gpus)} GPU(s) | "
            f"workers {up} up of {self.cluster.target}"
        )

    def _pipelining(self) -> bool:
        return len(self.recent) >= 2 and statistics.median(self.recent) < PIPELINE_BELOW_S

    def free_slots(self) -> int:
        """Idle live workers; when none is idle and recent trials were short (median under
        `PIPELINE_BELOW_S`), busy workers count once more, so a next trial queues behind the
        running one. Trials waiting for a retry take slots first."""
        up = [s for s in self.slots if s.info is not None]
        depth = 2 if self._pipelining() else 1
        idle = sum(not s.jobs for s in up)
        # Queue behind a running trial only when no worker is idle.
        free = idle if idle else sum(depth - len(s.jobs) for s in up if len(s.jobs) < depth)
        return max(0, free - len(self.retry))

    def submit(self, job: TrialJob) -> None:
        """Queue `job` on the live worker holding the fewest jobs."""
        self._place(Attempt(replace(job, share_gpu=self.share_gpu)))

    def _place(self, attempt: Attempt) -> None:
        slot = min((s for s in self.slots if s.info is not None), key=lambda s: len(s.jobs))
        ref = slot.actor.run.remote(attempt.job)
        if not slot.jobs:
            slot.head_started = time.monotonic()
        slot.jobs.append((attempt, ref))
        where = slot.where if len(slot.jobs) == 1 else f"next on {slot.where}"
        number = attempt.job.number
        if number in self.running:
            self.running[number].where = where
            self.running[number].started = time.monotonic()
        else:
            self.running[number] = Running(attempt.job, where)

    def poll(self, timeout: float) -> list[Event]:
        """Like the contract, and also: follows the cluster (workers started or dropped as slots
        come and go), retries trials whose worker or node died (up to ``max_retries``), and
        fails trials past ``trial_timeout_s``."""
        events: list[Event] = []
        self.cluster.refresh()
        self._maintain()
        self._place_retries()
        refs: dict[Any, tuple[Slot, str]] = {}
        for s in self.slots:
            if s.ready_ref is not None:
                refs[s.ready_ref] = (s, "ready")
            for _, ref in s.jobs:
                refs[ref] = (s, "job")
            if s.progress_ref is not None:
                refs[s.progress_ref] = (s, "progress")
            refs[s.sentinel_ref] = (s, "sentinel")
        if refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=timeout)
            if ready:
                ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        else:
            time.sleep(timeout)
            ready = []
        done = set(ready)
        for ref in ready:
            slot, kind = refs[ref]
            if kind == "ready":
                self._on_ready(slot, ref)
            elif kind == "progress":
                slot.progress_ref = None
                try:
                    info = ray.get(ref)
                except ray.exceptions.RayError:
                    continue
                if info and slot.jobs and slot.jobs[0][0].job.number in self.running:
                    self.running[slot.jobs[0][0].job.number].progress = info
                    events.append(Event("progress", slot.jobs[0][0].job.number, info))
        for slot in list(self.slots):  # outcomes, in each worker's order
            while slot in self.slots and slot.jobs and slot.jobs[0][1] in done:
                events += self._on_result(slot)
        for ref in ready:  # workers that died, idle ones included
            slot, kind = refs[ref]
            if kind == "sentinel" and slot in self.slots:
                try:
                    ray.get(ref)
                    reason = "its process ended"
                except ray.exceptions.RayError as exc:
                    reason = error_reason(exc)
                if slot.info is None:
                    self._start_failed(slot, reason)
                else:
                    events += self._on_death(slot, reason)
        events += self._check_timeouts()
        self._place_retries()
        self._ask_progress()
        return events

    def _on_ready(self, slot: Slot, ref) -> None:
        slot.ready_ref = None
        try:
            slot.info = ray.get(ref)
            self._start_failures = 0
        except ray.exceptions.RayError as exc:
            self._start_failed(slot, error_reason(exc))

    def _start_failed(self, slot: Slot, reason: str) -> None:
        self._drop(slot)
        self.cluster.invalidate()
        self._start_failures += 1
        if self._start_failures >= MAX_START_FAILURES and not any(s.info for s in self.slots):
            raise UserError(
                f"Ray workers fail to start on {self.cluster.name}: {reason} (is the "
                "same sqa-nas and torch installed on every node?)"
            )

    def _on_result(self, slot: Slot) -> list[Event]:
        attempt, ref = slot.jobs[0]
        job = attempt.job
        try:
            outcome, start, end = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # raised inside run_trial's caller
            slot.jobs.popleft()
            self._advance(slot, time.monotonic())
            return [
                self._finish(
                    job.number,
                    self._failed(
                        attempt, f"worker error on {slot.where}: {error_reason(exc)}", slot
                    ),
                )
            ]
        except ray.exceptions.RayError as exc:  # the worker or its node is gone
            return self._on_death(slot, error_reason(exc))
        slot.jobs.popleft()
        now = time.monotonic()
        self._advance(slot, now)
        usage = self.usage.setdefault(slot.key, _Usage())
        usage.add(start, end)
        usage.last_done_driver = now
        self.recent.append(end - start)
        assert slot.info is not None  # it ran a job, so its worker reported
        self.by_node[slot.info["node_id"]] += 1
        if attempt.deaths:
            outcome.attrs["worker_deaths"] = attempt.deaths
        return [self._finish(job.number, outcome)]

    @staticmethod
    def _failed(attempt: Attempt, reason: str, slot: Slot | None = None) -> TrialOutcome:
        """A FAIL outcome recording where it ran, as a finished trial's would."""
        outcome = Executor.failed(attempt.job, reason, lost=bool(attempt.deaths))  # worker died
        if slot is not None and slot.info is not None:
            i = slot.info
            outcome.attrs["device"] = {
                "name": i["device_name"],
                "type": i["device"].split(":")[0],
                "host": i["host"],
                "node": f"{i['host']}/{i['node_id'][:8]}",
                "ray_node_id": i["node_id"],
                "node_ip": i["ip"],
                "gpu": ",".join(i["gpu_ids"]) or None,
                "worker_pid": i["pid"],
            }
        if attempt.deaths:
            outcome.attrs["worker_deaths"] = attempt.deaths
        return outcome

    def _advance(self, slot: Slot, now: float) -> None:
        """The trial queued behind the one that finished starts now."""
        slot.head_started = now
        if slot.jobs and slot.jobs[0][0].job.number in self.running:
            r = self.running[slot.jobs[0][0].job.number]
            r.where, r.started = slot.where, now

    def _on_death(self, slot: Slot, reason: str) -> list[Event]:
        """A worker died: retry its running trial (bounded), requeue the one waiting behind."""
        self.counts["worker_deaths"] += 1
        events = []
        where = slot.where
        for i, (attempt, _) in enumerate(slot.jobs):
            if i == 0:
                attempt.deaths.append(f"{where}: {reason}")
                if len(attempt.deaths) > self.max_retries:
                    events.append(
                        self._finish(
                            attempt.job.number,
                            self._failed(
                                attempt,
                                f"its worker died {len(attempt.deaths)} times (last on "
                                f"{where}: {reason}); gave up after {self.max_retries} retries",
                                slot,
                            ),
                        )
                    )
                    continue
                self.counts["retries"] += 1
            attempt.waiting_since = time.monotonic()
            self.retry.append(attempt)
            if attempt.job.number in self.running:
                self.running[attempt.job.number].where = "waiting for a worker (retry)"
        slot.jobs.clear()
        self._drop(slot)
        self.cluster.invalidate()  # its node may be gone: re-read the cluster
        return events

    def _check_timeouts(self) -> list[Event]:
        events = []
        now = time.monotonic()
        for slot in list(self.slots):
            if slot.jobs and now - slot.head_started > self.timeout:
                attempt, _ = slot.jobs.popleft()
                self.counts["timeouts"] += 1
                events.append(
                    self._finish(
                        attempt.job.number,
                        self._failed(
                            attempt,
                            f"exceeded the trial time limit ({self.timeout:g} s) on "
                            f"{slot.where}; cancelled (its worker was killed and replaced)",
                            slot,
                        ),
                    )
                )
                for waiting, _ in slot.jobs:  # not started: no attempt spent
                    waiting.waiting_since = now
                    self.retry.append(waiting)
                slot.jobs.clear()
                self._drop(slot)
        for attempt in [a for a in self.retry if now - a.waiting_since > self.timeout]:
            self.retry.remove(attempt)  # no worker came up for it (every node lost?)
            self.counts["timeouts"] += 1
            events.append(
                self._finish(
                    attempt.job.number,
                    self._failed(
                        attempt,
                        f"waited {self.timeout:g} s (the trial time limit) for a Ray worker "
                        "to retry it on; none came up",
                    ),
                )
            )
        return events

    def _place_retries(self) -> None:
        while self.retry and any(s.info is not None and not s.jobs for s in self.slots):
            self._place(self.retry.popleft())

    def _ask_progress(self) -> None:
        now = time.monotonic()
        for s in self.slots:
            if s.jobs and s.progress_ref is None and now - s.progress_at >= PROGRESS_EVERY_S:
                s.progress_ref = s.actor.progress.remote()
                s.progress_at = now

    def shutdown(self, *, cancel: bool = False) -> list[int]:
        """Kill every worker actor and disconnect; with `cancel`, return the numbers of the trials
        running, queued or waiting for a retry."""
        self._ended = time.monotonic()
        numbers = [a.job.number for s in self.slots for a, _ in s.jobs]
        numbers += [a.job.number for a in self.retry]
        for slot in list(self.slots):
            self._drop(slot)
        self.retry.clear()
        self.running.clear()
        self.cluster.disconnect()
        return numbers if cancel else []

    # ------------------------------------------------------------------------- figures
    def local_gpus(self) -> list[int] | None:
        """Every GPU of this host (None) for GPU trials: Ray may place them on any."""
        return None if self.gpus > 0 else []

    def stats(self) -> dict[str, Any]:
        """In-trial fraction per GPU (or CPU worker) and overall, workers, retries, nodes."""
        end = self._ended or time.monotonic()
        by_gpu, to_end = {}, {}
        inside_sum = end_sum = 0.0
        for key, u in sorted(self.usage.items()):
            inside, span = u.covered(), u.span()
            tail = max(0.0, end - u.last_done_driver)  # idle after its last trial
            by_gpu[key] = in_trial_fraction([u])
            to_end[key] = round(inside / (span + tail), 4) if span + tail > 0 else 1.0
            inside_sum, end_sum = inside_sum + inside, end_sum + span + tail
        out: dict[str, Any] = {"executor": f"ray ({self.cluster.name})"}
        if by_gpu:
            out.update(
                in_trial_fraction=in_trial_fraction(self.usage.values()),
                in_trial_fraction_to_end=round(inside_sum / end_sum, 4) if end_sum else 1.0,
                in_trial_fraction_by_gpu=by_gpu,
                in_trial_fraction_to_end_by_gpu=to_end,
            )
        out["trials_by_node"] = {
            self.cluster.names.get(k, k[:8]): v for k, v in sorted(self.by_node.items())
        }
        out.update(
            workers_started=self.counts["worker_starts"],
            worker_deaths=self.counts["worker_deaths"],
            retries=self.counts["retries"],
            timeouts=self.counts["timeouts"],
        )
        return out
