"""The Ray side of the Ray executor: `TrialWorker`, one long-lived actor per GPU slot that
runs trial after trial, and the driver's bookkeeping of each worker (`Slot`) and of each
trial's attempts (`Attempt`).

The actor imports torch and creates its CUDA context once, then keeps the context, cuDNN
plans and compiled kernels between trials. A fresh Ray task per trial would pay a worker
start, the torch import and CUDA initialisation each time (measured on two H200s: 7.2 s of
GPU work took 20.9 s of wall time, GPUs ~17% busy).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
import torch

from sqa_nas.machine import device_name
from sqa_nas.search.trial import TrialJob, TrialOutcome


@ray.remote(  # type: ignore[call-overload]  # ray's stubs omit the actor concurrency_groups
    max_restarts=0, concurrency_groups={"monitor": 1, "sentinel": 1}
)
class TrialWorker:
    """One long-lived process holding one GPU slot (or CPUs). `run` calls execute one at a
    time, in order; `progress` answers from a second thread while a trial runs, and
    `sentinel` never returns: its call fails the moment the process dies, idle or not."""

    def __init__(
        self, index: int, device: str, threads: int, trial: Callable[..., TrialOutcome]
    ) -> None:
        torch.set_num_threads(threads)
        self.index = index
        self._trial = trial  # `run_trial`, passed by reference from the driver
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
        """Where this worker runs: node id, host, ip, pid, granted GPU ids, device and its name."""
        return {
            "node_id": self.node_id,
            "host": self.host,
            "ip": self.ip,
            "pid": os.getpid(),
            "gpu_ids": self.gpu_ids,
            "device": str(self.device),
            "device_name": self.device_name,
        }

    def run(self, job: TrialJob) -> tuple[TrialOutcome, float, float]:
        """The trial's outcome and when it ran (this node's clock, seconds since the epoch)."""
        self._progress = {}
        start = time.time()
        outcome = self._trial(job, device=self.device, progress=self._on_progress)
        end = time.time()
        device = outcome.attrs.setdefault("device", {})
        # Several Ray nodes may share a host name: the node id tells them apart.
        device.update(
            node=f"{self.host}/{self.node_id[:8]}",
            ray_node_id=self.node_id,
            node_ip=self.ip,
            worker_pid=os.getpid(),
        )
        if self.gpu_ids:
            device["gpu"] = ",".join(self.gpu_ids)
        return outcome, start, end

    def _on_progress(self, info: dict[str, Any]) -> None:
        self._progress = dict(info)

    @ray.method(concurrency_group="monitor")
    def progress(self) -> dict[str, Any]:
        """The running trial's last progress report ({} before the first); answered while
        `run` is busy, in its own concurrency group."""
        return self._progress

    @ray.method(concurrency_group="sentinel")
    def sentinel(self) -> None:
        """Never returns: the driver waits on it, and it fails only when this worker dies."""
        threading.Event().wait()


@dataclass
class Attempt:
    """One try of a trial on Ray, with why earlier tries' workers died."""

    job: TrialJob
    deaths: list[str] = field(default_factory=list)  # why earlier attempts' workers died
    waiting_since: float = 0.0  # when it was queued for a retry (monotonic)


@dataclass
class Slot:
    """One worker actor and its queue of jobs (the head runs, the rest wait behind it)."""

    index: int
    actor: Any  # ray.actor.ActorHandle
    ready_ref: Any | None  # ObjectRef of info() until the worker is up
    sentinel_ref: Any | None = None  # fails when the worker dies
    info: dict[str, Any] | None = None
    jobs: deque = field(default_factory=deque)  # (Attempt, ObjectRef); the head runs
    head_started: float = 0.0  # driver clock, when the head job began
    progress_ref: Any | None = None
    progress_at: float = 0.0

    @property
    def key(self) -> str:
        """The GPU (or CPU worker) this slot measures: 'host/node GPU 1'."""
        i = self.info
        assert i is not None  # read for slots with jobs, and jobs go to reported workers
        where = f"{i['host']}/{i['node_id'][:8]}"
        return (
            f"{where} GPU {','.join(i['gpu_ids'])}"
            if i["gpu_ids"]
            else f"{where} cpu worker {self.index}"
        )

    @property
    def where(self) -> str:
        """The worker for the progress panel: its `key` and device name ('starting' until
        it reports)."""
        if self.info is None:
            return f"ray worker {self.index} (starting)"
        name = self.info["device_name"] if self.info["gpu_ids"] else "cpu"
        return f"{self.key} ({name})"


def error_reason(exc: BaseException) -> str:
    """One line out of Ray's multi-paragraph errors: the cause, not the advice."""
    text = str(exc)
    for marker in (
        "Worker exit detail:",
        "The actor died because",
        "The actor is dead because",
        "error_message:",
    ):
        i = text.find(marker)
        if i >= 0:
            return " ".join(text[i:].split())[:300]
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    tail = [x for x in lines if not x.startswith(("File ", "Traceback", "ray::"))]
    return (tail[-1] if tail else type(exc).__name__)[:300]
