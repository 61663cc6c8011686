"""Trials in long-lived worker processes on this machine: ``trials_per_gpu`` per visible GPU
(one by default), or ``workers`` on the CPU. Workers keep torch, CUDA contexts and compiled
kernels between trials; workers that share a GPU time each trial's throughput alone.

A worker that dies (killed, out of host memory, segfault) fails only its trial and is
restarted; a trial past ``budget.trial_timeout_s`` is killed with its worker and recorded.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection, wait

import torch

from sqa_nas.errors import UserError
from sqa_nas.search.executors.base import Event, Executor, Running, Usage, in_trial_fraction
from sqa_nas.search.trial import TrialJob, TrialOutcome, run_trial


def _worker_main(
    conn: Connection, device: str, threads: int, trial: Callable[..., TrialOutcome]
) -> None:
    """A worker process: run each job `conn` brings with `trial` (`run_trial`) on `device`,
    sending ("progress", number, info) and ("done", number, outcome) back; None ends it."""
    # The driver decides what Ctrl-C means; a worker just keeps computing until told.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    parent = os.getppid()
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return

        def progress(info, number=job.number):
            if os.getppid() != parent:  # the driver was killed: stop instead of orphaning
                os._exit(1)
            conn.send(("progress", number, info))

        conn.send(("done", job.number, trial(job, device=dev, progress=progress)))


class _Worker:
    def __init__(self, ctx, index: int, device: str, threads: int) -> None:
        self.index, self.device = index, device
        self.conn, child = ctx.Pipe()
        # The trial function travels by reference (spawn pickles it): the worker runs the
        # function this module names when the worker starts.
        self.process = ctx.Process(
            target=_worker_main,
            args=(child, device, threads, run_trial),
            name=f"sqa-nas-worker-{index}",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.job: TrialJob | None = None

    @property
    def where(self) -> str:
        return f"worker {self.index} ({self.device}, pid {self.process.pid})"

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()


class LocalExecutor(Executor):
    """Trials in worker processes on this machine.

    Args:
        workers: worker processes (default: `trials_per_gpu` per visible GPU, else one),
            spread over the GPUs in turn.
        trials_per_gpu: workers per GPU when `workers` is not given. Trials on a GPU that
            several workers use time their throughput alone (`sqa_nas.gpu_share`).
        device: "auto" (GPUs if any), "cpu" or "cuda" (refused without a GPU).
        trial_timeout_s: seconds a trial may run, counted from its submission; past it the
            trial is told FAIL ("exceeded the trial time limit") and its worker replaced.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        trials_per_gpu: int = 1,
        device: str = "auto",
        trial_timeout_s: float = 1800.0,
    ) -> None:
        super().__init__()
        gpus = torch.cuda.device_count() if device != "cpu" else 0
        if device == "cuda" and gpus == 0:
            raise UserError("execution.device: cuda was asked for but no CUDA GPU is visible")
        n = workers or (gpus * trials_per_gpu if gpus else 1)
        self.devices = [f"cuda:{i % gpus}" for i in range(n)] if gpus else ["cpu"] * n
        # Trials on a GPU that other workers train on too time their throughput alone.
        self.shared = {d for d in self.devices if d != "cpu" and self.devices.count(d) > 1}
        cpus = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
        self.threads = max(1, cpus // n)
        self.timeout = trial_timeout_s
        self.ctx = mp.get_context("spawn")
        self.workers: list[_Worker] = []
        self.usage: dict[int, Usage] = {}  # worker index -> time inside trials
        self._worker_of: dict[int, int] = {}  # trial number -> worker index

    def describe(self) -> str:
        """ "local: N worker(s) on <devices>", and how many share a GPU when some do."""
        kinds = sorted(set(self.devices))
        line = f"local: {len(self.devices)} worker(s) on {', '.join(kinds)}"
        most = max((self.devices.count(d) for d in self.shared), default=1)
        return f"{line} (up to {most} per GPU, each timed alone)" if self.shared else line

    def start(self) -> None:
        """Spawn one worker process per entry of `devices` (spawn context: CUDA-safe)."""
        self.workers = [_Worker(self.ctx, i, d, self.threads) for i, d in enumerate(self.devices)]

    def free_slots(self) -> int:
        """Idle workers; an idle worker found dead (the OOM killer) is replaced first."""
        for worker in list(self.workers):
            if worker.job is None and not worker.process.is_alive():
                self._replace(worker)  # an idle worker died (the OOM killer): a fresh one
        return sum(w.job is None for w in self.workers)

    def submit(self, job: TrialJob) -> None:
        """Send `job` to the first idle worker (a fresh one if that worker died meanwhile),
        telling it whether other workers train on its GPU."""
        worker = next(w for w in self.workers if w.job is None)
        job = replace(job, share_gpu=worker.device in self.shared)
        try:
            worker.conn.send(job)
        except OSError:  # it died since free_slots: a fresh one takes the trial
            self._replace(worker)
            worker = self.workers[worker.index]
            worker.conn.send(job)
        worker.job = job
        self._worker_of[job.number] = worker.index
        self.running[job.number] = Running(job, worker.where)

    def poll(self, timeout: float) -> list[Event]:
        """Progress and outcomes from the workers; a trial whose worker died or that ran past
        `trial_timeout_s` comes back as FAIL and its worker is replaced."""
        events: list[Event] = []
        busy = {w.conn: w for w in self.workers if w.job is not None}
        if busy:
            ready = wait(list(busy), timeout=timeout)
        else:
            time.sleep(timeout)
            ready = []
        for conn in ready:
            worker = busy[conn]
            try:
                while worker.conn.poll():
                    kind, number, payload = worker.conn.recv()
                    if kind == "progress":
                        self.running[number].progress = payload
                        events.append(Event("progress", number, payload))
                    else:
                        worker.job = None
                        events.append(self._finish(number, payload))
            except (EOFError, OSError):
                worker.process.join(timeout=10)  # its pipe closed: wait for its exit (below)
        for worker in list(self.workers):
            job = worker.job
            if job is None:
                continue
            if not worker.process.is_alive():
                code = worker.process.exitcode
                events.append(
                    self._finish(
                        job.number,
                        self.failed(
                            job,
                            f"worker process died (exit code {code}) during the trial",
                            lost=True,
                        ),
                    )
                )
                self._replace(worker)
            elif time.monotonic() - self.running[job.number].started > self.timeout:
                events.append(
                    self._finish(
                        job.number,
                        self.failed(
                            job, f"exceeded the trial time limit ({self.timeout:g} s); killed"
                        ),
                    )
                )
                self._replace(worker)
        return events

    def _finish(self, number, outcome):
        run, index = self.running.get(number), self._worker_of.pop(number, None)
        if run is not None and index is not None:
            self.usage.setdefault(index, Usage()).add(run.started, time.monotonic())
        return super()._finish(number, outcome)

    def stats(self) -> dict:
        """In-trial fraction per worker: time inside trials over the span from its first
        trial's start to its last trial's end (worker start-up, imports, idle gaps count as
        idle; time in a trial counts whether or not the GPU works)."""
        if not self.usage:
            return {}
        by_worker = {
            f"{self.devices[i]} worker {i}": in_trial_fraction([u])
            for i, u in sorted(self.usage.items())
        }
        return {
            "executor": self.describe(),
            "in_trial_fraction": in_trial_fraction(self.usage.values()),
            "in_trial_fraction_by_worker": by_worker,
        }

    def local_gpus(self) -> list[int]:
        """The CUDA ordinals of its workers' devices ([] on the CPU)."""
        return sorted({int(d.split(":")[1]) for d in self.devices if d.startswith("cuda:")})

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.workers[worker.index] = _Worker(self.ctx, worker.index, worker.device, self.threads)

    def shutdown(self, *, cancel: bool = False) -> list[int]:
        """Idle workers get a stop message and up to 5 s to exit; a worker still holding a trial
        is killed whether or not `cancel` is set (only with `cancel` are its numbers returned)."""
        cancelled = [w.job.number for w in self.workers if w.job is not None]
        for w in self.workers:
            if w.job is None and not cancel:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + 5
        for w in self.workers:
            if cancel or w.job is not None:
                w.kill()
            else:
                w.process.join(timeout=max(0.1, deadline - time.monotonic()))
                w.kill()
        self.running.clear()
        return cancelled if cancel else []
