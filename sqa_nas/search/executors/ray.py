"""Trials on a Ray cluster: one long-lived worker (a Ray actor) per GPU slot, on any node.

The driver keeps the Optuna study; this executor only runs `TrialJob`s. Each worker is an
actor that asks Ray for ``gpus_per_trial`` GPUs and ``cpus_per_trial`` CPUs, so Ray places
it on a node with a free GPU; it imports torch and creates its CUDA context once, then runs
trial after trial, keeping the context, cuDNN plans and compiled kernels. A fresh Ray task
per trial would pay a worker start, the torch import and CUDA initialisation each time
(measured on two H200s: 7.2 s of GPU work took 20.9 s of wall time, GPUs ~17% busy).

- Slots follow the cluster: every few seconds the executor reads the live nodes and keeps
  one worker per (node, GPU slot) that fits, up to ``max_concurrent``; nodes that join add
  workers, workers on nodes that die are dropped. A trial is asked from Optuna only when a
  worker is up and idle, so no trial waits RUNNING for a placement.
- A worker that dies mid-trial (killed, out of host memory, its node lost) fails only that
  attempt: the trial is run again on another worker, up to ``max_retries`` times, then told
  FAIL with the reason. A trial past ``budget.trial_timeout_s`` is cancelled by killing its
  worker (a replacement starts) and told FAIL.
- When trials are short (median under `PIPELINE_BELOW_S`), each busy worker also holds the
  next trial in its queue, so the driver's tell / ask / database round trip overlaps GPU work
  instead of idling the GPU between trials.
- `stats()` reports, per GPU, the time spent inside trials over the wall time from its first
  trial's start to its last trial's end (``busy_fraction``), and the same up to the end of
  the search (``busy_fraction_to_end``, which also counts GPUs idle while the last trials
  finish elsewhere). Each trial records its Ray node and GPU in ``attrs["device"]``.

With no ``address`` a private Ray instance starts on this machine, bound to loopback, with
no dashboard unless ``include_dashboard``; with one, the driver joins that cluster (started
with ``ray start --head`` / ``ray start --address=...``, see the README's "Running on a
cluster"). Every node needs the same environment (torch, sqa-nas); Ray puts the driver's
``sys.path`` on its workers' path, which is enough on one machine.
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import ray

from sqa_nas.errors import UserError
from sqa_nas.search.executors.base import Event, Executor, Running, Usage, busy_fraction
from sqa_nas.search.space import SearchSpec
from sqa_nas.search.trial import TrialJob, TrialOutcome

CAPACITY_REFRESH_S = 5.0  # how often live nodes are re-read (nodes join, nodes die)
PROGRESS_EVERY_S = 1.0
PIPELINE_BELOW_S = 30.0  # queue a next trial on busy workers when trials are this short
RECENT_TRIALS = 8
MAX_START_FAILURES = 5  # workers failing to start in a row, none up: the cluster can't run
EMBEDDED_OBJECT_STORE = 256 * 2**20  # jobs and outcomes are kilobytes; Ray's default is 30% RAM
EPS = 1e-6


# ------------------------------------------------------------------------------- the worker
@ray.remote(max_restarts=0, concurrency_groups={"monitor": 1, "sentinel": 1})
class TrialWorker:
    """One long-lived process holding one GPU slot (or CPUs). `run` calls execute one at a
    time, in order; `progress` answers from a second thread while a trial runs, and
    `sentinel` never returns: its call fails the moment the process dies, idle or not."""

    def __init__(self, index: int, device: str, threads: int) -> None:
        import torch

        from sqa_nas.machine import device_name

        torch.set_num_threads(threads)
        self.index = index
        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]  # this node's GPU indices
        # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it granted: they are cuda:0.. here.
        if self.gpu_ids and device != "cpu" and torch.cuda.is_available():
            self.device = torch.device("cuda", 0)
            torch.cuda.set_device(self.device)
            torch.ones(1, device=self.device).sum().item()  # CUDA context now, not in trial 1
        else:
            self.device = torch.device("cpu")
        self.device_name = device_name(self.device)
        self.host = socket.gethostname()
        self.ip = ray.util.get_node_ip_address()
        self._progress: dict[str, Any] = {}

    def info(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "host": self.host, "ip": self.ip, "pid": os.getpid(),
                "gpu_ids": self.gpu_ids, "device": str(self.device),
                "device_name": self.device_name}

    def run(self, job: TrialJob) -> tuple[TrialOutcome, float, float]:
        """The trial's outcome and when it ran (this node's clock, seconds since the epoch)."""
        from sqa_nas.search.trial import run_trial

        self._progress = {}
        start = time.time()
        outcome = run_trial(job, device=self.device, progress=self._on_progress)
        end = time.time()
        device = outcome.attrs.setdefault("device", {})
        # Several Ray nodes may share a host name: the node id tells them apart.
        device.update(node=f"{self.host}/{self.node_id[:8]}", ray_node_id=self.node_id,
                      node_ip=self.ip, worker_pid=os.getpid())
        if self.gpu_ids:
            device["gpu"] = ",".join(self.gpu_ids)
        return outcome, start, end

    def _on_progress(self, info: dict[str, Any]) -> None:
        self._progress = dict(info)

    @ray.method(concurrency_group="monitor")
    def progress(self) -> dict[str, Any]:
        return self._progress

    @ray.method(concurrency_group="sentinel")
    def sentinel(self) -> None:
        threading.Event().wait()


# ------------------------------------------------------------------------------ the executor
@dataclass
class _Attempt:
    job: TrialJob
    deaths: list[str] = field(default_factory=list)  # why earlier attempts' workers died
    waiting_since: float = 0.0  # when it was queued for a retry (monotonic)


@dataclass
class _Slot:
    index: int
    actor: Any  # ray.actor.ActorHandle
    ready_ref: Any | None  # ObjectRef of info() until the worker is up
    sentinel_ref: Any | None = None  # fails when the worker dies
    info: dict[str, Any] | None = None
    jobs: deque = field(default_factory=deque)  # (_Attempt, ObjectRef); the head runs
    head_started: float = 0.0  # driver clock, when the head job began
    progress_ref: Any | None = None
    progress_at: float = 0.0

    @property
    def key(self) -> str:
        """The GPU (or CPU worker) this slot measures: 'host/node GPU 1'."""
        i = self.info
        where = f"{i['host']}/{i['node_id'][:8]}"
        return f"{where} GPU {','.join(i['gpu_ids'])}" if i["gpu_ids"] else \
            f"{where} cpu worker {self.index}"

    @property
    def where(self) -> str:
        if self.info is None:
            return f"ray worker {self.index} (starting)"
        name = self.info["device_name"] if self.info["gpu_ids"] else "cpu"
        return f"{self.key} ({name})"


@dataclass
class _Usage(Usage):
    last_done_driver: float = 0.0  # driver clock, when its last trial's outcome arrived


class RayExecutor(Executor):
    def __init__(self, spec: SearchSpec) -> None:
        super().__init__()
        r = spec.execution.ray
        self.address = r.address
        self.device = spec.execution.device
        # A CPU-only search asks for no GPU, whatever gpus_per_trial says.
        self.gpus = 0.0 if self.device == "cpu" else float(r.gpus_per_trial)
        self.cpus = float(r.cpus_per_trial)
        self.max_concurrent = r.max_concurrent
        self.max_retries = r.max_retries
        self.include_dashboard = r.include_dashboard
        self.timeout = spec.budget.trial_timeout_s
        if self.device == "cuda" and self.gpus == 0:
            raise UserError("execution.device: cuda needs a GPU per trial; set "
                            "--gpus-per-trial above 0 (execution.ray.gpus_per_trial)")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise UserError(f"execution.ray.gpus_per_trial: {self.gpus:g}; above 1 Ray grants "
                            "whole GPUs only (use 2, 3, ... or a fraction below 1)")
        self.slots: list[_Slot] = []
        self.retry: deque[_Attempt] = deque()
        self.target = 0
        self.nodes: list[dict[str, Any]] = []
        self.usage: dict[str, _Usage] = {}
        self.recent: deque[float] = deque(maxlen=RECENT_TRIALS)
        self.counts = Counter()
        self.by_node: Counter = Counter()
        self._next_index = 0
        self._names: dict[str, str] = {}  # node id -> 'host/node', nodes gone included
        self._refreshed = 0.0
        self._start_failures = 0
        self._owns_ray = False
        self._ended: float | None = None
        self._cluster = "local Ray instance" if self.address is None else self.address
        self._where = ("this machine" if self.address is None
                       else f"the Ray cluster at {self.address}")

    # ------------------------------------------------------------------------- cluster
    def start(self) -> None:
        if ray.is_initialized():  # a program that already joined Ray: use that connection
            self._cluster = self._where = "the Ray cluster this process joined"
        elif self.address is None:
            self._start_embedded()
        else:
            try:
                ray.init(address=self.address, log_to_driver=False,
                         logging_level=logging.ERROR)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(
                    f"execution.ray.address: cannot join the Ray cluster at {self.address!r}: "
                    f"{str(exc).splitlines()[0]} (start one with `ray start --head`, see "
                    "the README's 'Running on a cluster')") from None
            self._owns_ray = True
        self._quiet_worker_deaths()
        try:
            self._refresh(force=True)
            self._check_fits()
        except BaseException:
            self._disconnect()
            raise
        self._maintain()

    def _start_embedded(self) -> None:
        import torch

        gpus = torch.cuda.device_count()
        self._check_fits([{"host": socket.gethostname(), "GPU": gpus,
                           "CPU": os.cpu_count() or 1}])
        # A one-machine instance has nothing to say to the network: bind loopback, as Ray
        # itself does on macOS and Windows (ray_constants.ENABLE_RAY_CLUSTER).
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # for Ray's own processes
        ray._private.ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", num_gpus=gpus, include_dashboard=self.include_dashboard,
                 object_store_memory=EMBEDDED_OBJECT_STORE, log_to_driver=False,
                 logging_level=logging.ERROR)
        self._owns_ray = True

    @staticmethod
    def _quiet_worker_deaths() -> None:
        """Ray prints every worker death pushed to the driver; the executor reports them in
        the trial's fail_reason / worker_deaths, so drop those (and only those) lines."""
        worker = ray._private.worker
        show = getattr(worker, "print_to_stdstream", None)
        if show is None or getattr(show, "_sqa_nas", False):
            return

        def filtered(data, *args, **kwargs):
            if not any("Worker exit type" in line or "worker died" in line.lower()
                       for line in data.get("lines", [])):
                show(data, *args, **kwargs)

        filtered._sqa_nas = True
        worker.print_to_stdstream = filtered

    def _refresh(self, force: bool = False) -> None:
        """Re-read the live nodes and the number of workers they can hold."""
        now = time.monotonic()
        if not force and now - self._refreshed < CAPACITY_REFRESH_S:
            return
        self._refreshed = now
        nodes = []
        for n in ray.nodes():
            if n.get("Alive"):
                res = n.get("Resources", {})
                nodes.append({"id": n["NodeID"], "host": n.get("NodeManagerHostname", "?"),
                              "GPU": res.get("GPU", 0.0), "CPU": res.get("CPU", 0.0)})
        self.nodes = nodes
        self._names.update((n["id"], f"{n['host']}/{n['id'][:8]}") for n in nodes)
        target = sum(self._fits(n) for n in nodes)
        if self.max_concurrent:
            target = min(target, self.max_concurrent)
        self.target = target

    def _fits(self, node: dict[str, Any]) -> int:
        """How many workers of this executor's shape fit on a node."""
        by_cpu = int(node["CPU"] / self.cpus + EPS) if self.cpus else 10**6
        by_gpu = int(node["GPU"] / self.gpus + EPS) if self.gpus else 10**6
        return min(by_cpu, by_gpu)

    def _check_fits(self, nodes: list[dict[str, Any]] | None = None) -> None:
        """Refuse a request no node can satisfy: Ray would wait for it forever."""
        nodes = self.nodes if nodes is None else nodes
        if any(self._fits(n) for n in nodes):
            return
        where = self._where
        shape = ", ".join(f"{n['host']}: {n['GPU']:g} GPU, {n['CPU']:g} CPU" for n in nodes)
        most_gpus = max((n["GPU"] for n in nodes), default=0)
        if self.gpus and most_gpus == 0:
            raise UserError(
                f"execution.ray.gpus_per_trial: {self.gpus:g} GPU per trial, but {where} has "
                f"no GPU ({shape or 'no node'}); run the trials on CPUs with "
                "--gpus-per-trial 0 (or execution.device: cpu)")
        if self.gpus > most_gpus:
            raise UserError(
                f"execution.ray.gpus_per_trial: {self.gpus:g} GPUs per trial, but the largest "
                f"node of {where} has {most_gpus:g} ({shape}); Ray would wait forever: lower "
                "--gpus-per-trial")
        raise UserError(
            f"execution.ray.cpus_per_trial: no node of {where} has {self.cpus:g} CPUs "
            f"{f'and {self.gpus:g} GPUs ' if self.gpus else ''}free for one trial ({shape}); "
            "lower cpus_per_trial")

    def _maintain(self) -> None:
        """Keep one worker per slot the cluster has: start missing ones, drop extras."""
        while len(self.slots) < self.target:
            self._spawn()
        extra = len(self.slots) - self.target
        for slot in sorted(self.slots, key=lambda s: (s.info is not None, len(s.jobs))):
            if extra <= 0:
                break
            if not slot.jobs:
                self._drop(slot)
                extra -= 1

    def _spawn(self) -> None:
        index, self._next_index = self._next_index, self._next_index + 1
        threads = max(1, int(self.cpus))
        actor = TrialWorker.options(num_gpus=self.gpus, num_cpus=self.cpus,
                                    scheduling_strategy="SPREAD").remote(index, self.device,
                                                                         threads)
        self.slots.append(_Slot(index, actor, actor.info.remote(), actor.sentinel.remote()))
        self.counts["worker_starts"] += 1

    def _drop(self, slot: _Slot) -> None:
        if slot in self.slots:
            self.slots.remove(slot)
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:  # already gone with its node
            pass

    # ------------------------------------------------------------------------- interface
    def describe(self) -> str:
        gpus = sum(n["GPU"] for n in self.nodes)
        busy = [s for s in self.slots if s.jobs and s.info]
        used_nodes = {s.info["node_id"] for s in busy}
        used_gpus = {(s.info["node_id"], g) for s in busy for g in s.info["gpu_ids"]}
        up = sum(s.info is not None for s in self.slots)
        return (f"ray ({self._cluster}): {len(self.nodes)} node(s), {gpus:g} GPU(s) | in use: "
                f"{len(used_nodes)} node(s), {len(used_gpus)} GPU(s) | workers {up} up of "
                f"{self.target}")

    def _pipelining(self) -> bool:
        return len(self.recent) >= 2 and statistics.median(self.recent) < PIPELINE_BELOW_S

    def free_slots(self) -> int:
        up = [s for s in self.slots if s.info is not None]
        depth = 2 if self._pipelining() else 1
        idle = sum(not s.jobs for s in up)
        # Queue behind a running trial only when no worker is idle.
        free = idle if idle else sum(depth - len(s.jobs) for s in up if len(s.jobs) < depth)
        return max(0, free - len(self.retry))

    def submit(self, job: TrialJob) -> None:
        self._place(_Attempt(job))

    def _place(self, attempt: _Attempt) -> None:
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
        events: list[Event] = []
        self._refresh()
        self._maintain()
        self._place_retries()
        refs: dict[Any, tuple[_Slot, str]] = {}
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
                    reason = _reason(exc)
                if slot.info is None:
                    self._start_failed(slot, reason)
                else:
                    events += self._on_death(slot, reason)
        events += self._check_timeouts()
        self._place_retries()
        self._ask_progress()
        return events

    def _on_ready(self, slot: _Slot, ref) -> None:
        slot.ready_ref = None
        try:
            slot.info = ray.get(ref)
            self._start_failures = 0
        except ray.exceptions.RayError as exc:
            self._start_failed(slot, _reason(exc))

    def _start_failed(self, slot: _Slot, reason: str) -> None:
        self._drop(slot)
        self._refreshed = 0.0
        self._start_failures += 1
        if self._start_failures >= MAX_START_FAILURES and not any(s.info for s in self.slots):
            raise UserError(f"Ray workers fail to start on {self._cluster}: {reason} (is the "
                            "same sqa-nas and torch installed on every node?)")

    def _on_result(self, slot: _Slot) -> list[Event]:
        attempt, ref = slot.jobs[0]
        job = attempt.job
        try:
            outcome, start, end = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # raised inside run_trial's caller
            slot.jobs.popleft()
            self._advance(slot, time.monotonic())
            return [self._finish(job.number, self._failed(
                attempt, f"worker error on {slot.where}: {_reason(exc)}", slot))]
        except ray.exceptions.RayError as exc:  # the worker or its node is gone
            return self._on_death(slot, _reason(exc))
        slot.jobs.popleft()
        now = time.monotonic()
        self._advance(slot, now)
        usage = self.usage.setdefault(slot.key, _Usage())
        usage.add(start, end)
        usage.last_done_driver = now
        self.recent.append(end - start)
        self.by_node[slot.info["node_id"]] += 1
        if attempt.deaths:
            outcome.attrs["worker_deaths"] = attempt.deaths
        return [self._finish(job.number, outcome)]

    @staticmethod
    def _failed(attempt: _Attempt, reason: str, slot: _Slot | None = None) -> TrialOutcome:
        """A FAIL outcome recording where it ran, as a finished trial's would."""
        outcome = Executor.failed(attempt.job, reason)
        if slot is not None and slot.info is not None:
            i = slot.info
            outcome.attrs["device"] = {
                "name": i["device_name"], "type": i["device"].split(":")[0],
                "host": i["host"], "node": f"{i['host']}/{i['node_id'][:8]}",
                "ray_node_id": i["node_id"], "node_ip": i["ip"],
                "gpu": ",".join(i["gpu_ids"]) or None, "worker_pid": i["pid"]}
        if attempt.deaths:
            outcome.attrs["worker_deaths"] = attempt.deaths
        return outcome

    def _advance(self, slot: _Slot, now: float) -> None:
        """The trial queued behind the one that finished starts now."""
        slot.head_started = now
        if slot.jobs and slot.jobs[0][0].job.number in self.running:
            r = self.running[slot.jobs[0][0].job.number]
            r.where, r.started = slot.where, now

    def _on_death(self, slot: _Slot, reason: str) -> list[Event]:
        """A worker died: retry its running trial (bounded), requeue the one waiting behind."""
        self.counts["worker_deaths"] += 1
        events = []
        where = slot.where
        for i, (attempt, _) in enumerate(slot.jobs):
            if i == 0:
                attempt.deaths.append(f"{where}: {reason}")
                if len(attempt.deaths) > self.max_retries:
                    events.append(self._finish(attempt.job.number, self._failed(
                        attempt, f"its worker died {len(attempt.deaths)} times (last on "
                        f"{where}: {reason}); gave up after {self.max_retries} retries",
                        slot)))
                    continue
                self.counts["retries"] += 1
            attempt.waiting_since = time.monotonic()
            self.retry.append(attempt)
            if attempt.job.number in self.running:
                self.running[attempt.job.number].where = "waiting for a worker (retry)"
        slot.jobs.clear()
        self._drop(slot)
        self._refreshed = 0.0  # its node may be gone: re-read the cluster
        return events

    def _check_timeouts(self) -> list[Event]:
        events = []
        now = time.monotonic()
        for slot in list(self.slots):
            if slot.jobs and now - slot.head_started > self.timeout:
                attempt, _ = slot.jobs.popleft()
                self.counts["timeouts"] += 1
                events.append(self._finish(attempt.job.number, self._failed(
                    attempt, f"exceeded the trial time limit ({self.timeout:g} s) on "
                    f"{slot.where}; cancelled (its worker was killed and replaced)", slot)))
                for waiting, _ in slot.jobs:  # not started: no attempt spent
                    waiting.waiting_since = now
                    self.retry.append(waiting)
                slot.jobs.clear()
                self._drop(slot)
        for attempt in [a for a in self.retry if now - a.waiting_since > self.timeout]:
            self.retry.remove(attempt)  # no worker came up for it (every node lost?)
            self.counts["timeouts"] += 1
            events.append(self._finish(attempt.job.number, self._failed(
                attempt, f"waited {self.timeout:g} s (the trial time limit) for a Ray worker "
                "to retry it on; none came up")))
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
        self._ended = time.monotonic()
        numbers = [a.job.number for s in self.slots for a, _ in s.jobs]
        numbers += [a.job.number for a in self.retry]
        for slot in list(self.slots):
            self._drop(slot)
        self.retry.clear()
        self.running.clear()
        self._disconnect()
        return numbers if cancel else []

    def _disconnect(self) -> None:
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    # ------------------------------------------------------------------------- figures
    def stats(self) -> dict[str, Any]:
        """Busy fraction per GPU (or CPU worker) and overall, workers, retries, nodes."""
        end = self._ended or time.monotonic()
        by_gpu, to_end = {}, {}
        busy_sum = end_sum = 0.0
        for key, u in sorted(self.usage.items()):
            busy, span = u.busy(), u.span()
            tail = max(0.0, end - u.last_done_driver)  # idle after its last trial
            by_gpu[key] = busy_fraction([u])
            to_end[key] = round(busy / (span + tail), 4) if span + tail > 0 else 1.0
            busy_sum, end_sum = busy_sum + busy, end_sum + span + tail
        out: dict[str, Any] = {"executor": f"ray ({self._cluster})"}
        if by_gpu:
            out.update(busy_fraction=busy_fraction(self.usage.values()),
                       busy_fraction_to_end=round(busy_sum / end_sum, 4) if end_sum else 1.0,
                       busy_fraction_by_gpu=by_gpu, busy_fraction_to_end_by_gpu=to_end)
        out["trials_by_node"] = {self._names.get(k, k[:8]): v
                                 for k, v in sorted(self.by_node.items())}
        out.update(workers_started=self.counts["worker_starts"],
                   worker_deaths=self.counts["worker_deaths"], retries=self.counts["retries"],
                   timeouts=self.counts["timeouts"])
        return out


def _reason(exc: BaseException) -> str:
    """One line out of Ray's multi-paragraph errors: the cause, not the advice."""
    text = str(exc)
    for marker in ("Worker exit detail:", "The actor died because", "The actor is dead because",
                   "error_message:"):
        i = text.find(marker)
        if i >= 0:
            return " ".join(text[i:].split())[:300]
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    tail = [x for x in lines if not x.startswith(("File ", "Traceback", "ray::"))]
    return (tail[-1] if tail else type(exc).__name__)[:300]
