"""The Ray cluster a `RayExecutor` runs on: joining it (or starting a private instance on
loopback), reading its live nodes, and how many workers of one shape they hold.

With no ``address`` a private Ray instance starts on this machine, bound to loopback, with
no dashboard unless ``include_dashboard``; with one, the driver joins that cluster (started
with ``ray start --head`` / ``ray start --address=...``, see the README's "Running on a
cluster").
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import ray
import torch

from sqa_nas.errors import UserError

CAPACITY_REFRESH_S = 5.0  # how often live nodes are re-read (nodes join, nodes die)
EMBEDDED_OBJECT_STORE = 256 * 2**20  # jobs and outcomes are kilobytes; Ray's default is 30% RAM
EPS = 1e-6


class RayCluster:
    """A connection to Ray and what its live nodes hold for workers of one shape.

    Args:
        address: a cluster to join (``auto`` or HOST:PORT), or None for a private instance.
        gpus: GPUs each worker asks for (0: CPU workers; above 1, whole GPUs).
        cpus: CPUs each worker asks for.
        max_concurrent: at most this many workers (None: as many as the nodes hold).
        include_dashboard: start Ray's dashboard with a private instance.
    """

    def __init__(
        self,
        *,
        address: str | None,
        gpus: float,
        cpus: float,
        max_concurrent: int | None,
        include_dashboard: bool,
    ) -> None:
        self.address = address
        self.gpus, self.cpus = gpus, cpus
        self.max_concurrent = max_concurrent
        self.include_dashboard = include_dashboard
        self.nodes: list[dict[str, Any]] = []  # live: id, host, GPU, CPU
        self.target = 0  # workers the live nodes hold (capped at max_concurrent)
        self.names: dict[str, str] = {}  # node id -> 'host/node', nodes gone included
        self.name = "local Ray instance" if address is None else address
        self._where = "this machine" if address is None else f"the Ray cluster at {address}"
        self._refreshed = 0.0
        self._owns_ray = False

    def connect(self) -> None:
        """Join the cluster (or start the private instance) and read its nodes.

        Raises:
            UserError: the cluster cannot be reached, or no node can hold one worker.
        """
        if ray.is_initialized():  # a program that already joined Ray: use that connection
            self.name = self._where = "the Ray cluster this process joined"
        elif self.address is None:
            self._start_embedded()
        else:
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(
                    f"execution.ray.address: cannot join the Ray cluster at {self.address!r}: "
                    f"{str(exc).splitlines()[0]} (start one with `ray start --head`, see "
                    "the README's 'Running on a cluster')"
                ) from None
            self._owns_ray = True
        _quiet_worker_deaths()
        try:
            self.refresh(force=True)
            self.check_fits()
        except BaseException:
            self.disconnect()
            raise

    def _start_embedded(self) -> None:
        gpus = torch.cuda.device_count()
        self.check_fits([{"host": socket.gethostname(), "GPU": gpus, "CPU": os.cpu_count() or 1}])
        # A one-machine instance has nothing to say to the network: bind loopback, as Ray
        # itself does on macOS and Windows (ray_constants.ENABLE_RAY_CLUSTER).
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # for Ray's own processes
        ray._private.ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            address="local",
            num_gpus=gpus,
            include_dashboard=self.include_dashboard,
            object_store_memory=EMBEDDED_OBJECT_STORE,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        self._owns_ray = True

    def disconnect(self) -> None:
        """Shut Ray down if this process started or joined it here."""
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    def invalidate(self) -> None:
        """Re-read the nodes at the next `refresh` (a worker died: its node may be gone)."""
        self._refreshed = 0.0

    def refresh(self, force: bool = False) -> None:
        """Re-read the live nodes and the number of workers they can hold (`target`), at
        most every `CAPACITY_REFRESH_S` seconds unless `force`."""
        now = time.monotonic()
        if not force and now - self._refreshed < CAPACITY_REFRESH_S:
            return
        self._refreshed = now
        nodes = []
        for n in ray.nodes():
            if n.get("Alive"):
                res = n.get("Resources", {})
                nodes.append(
                    {
                        "id": n["NodeID"],
                        "host": n.get("NodeManagerHostname", "?"),
                        "GPU": res.get("GPU", 0.0),
                        "CPU": res.get("CPU", 0.0),
                    }
                )
        self.nodes = nodes
        self.names.update((n["id"], f"{n['host']}/{n['id'][:8]}") for n in nodes)
        target = sum(self.fits(n) for n in nodes)
        if self.max_concurrent:
            target = min(target, self.max_concurrent)
        self.target = target

    def fits(self, node: dict[str, Any]) -> int:
        """How many workers of this shape fit on a node (a dict with "GPU" and "CPU")."""
        by_cpu = int(node["CPU"] / self.cpus + EPS) if self.cpus else 10**6
        by_gpu = int(node["GPU"] / self.gpus + EPS) if self.gpus else 10**6
        return min(by_cpu, by_gpu)

    def check_fits(self, nodes: list[dict[str, Any]] | None = None) -> None:
        """Refuse a request no node can satisfy: Ray would wait for it forever.

        Args:
            nodes: the nodes to check (default: the live ones last read).
        Raises:
            UserError: naming the per-trial setting to lower and what the nodes have.
        """
        nodes = self.nodes if nodes is None else nodes
        if any(self.fits(n) for n in nodes):
            return
        where = self._where
        shape = ", ".join(f"{n['host']}: {n['GPU']:g} GPU, {n['CPU']:g} CPU" for n in nodes)
        most_gpus = max((n["GPU"] for n in nodes), default=0)
        if self.gpus and most_gpus == 0:
            raise UserError(
                f"execution.ray.gpus_per_trial: {self.gpus:g} GPU per trial, but {where} has "
                f"no GPU ({shape or 'no node'}); run the trials on CPUs with "
                "--gpus-per-trial 0 (or execution.device: cpu)"
            )
        if self.gpus > most_gpus:
            raise UserError(
                f"execution.ray.gpus_per_trial: {self.gpus:g} GPUs per trial, but the largest "
                f"node of {where} has {most_gpus:g} ({shape}); Ray would wait forever: lower "
                "--gpus-per-trial"
            )
        raise UserError(
            f"execution.ray.cpus_per_trial: no node of {where} has {self.cpus:g} CPUs "
            f"{f'and {self.gpus:g} GPUs ' if self.gpus else ''}free for one trial ({shape}); "
            "lower cpus_per_trial"
        )


def _quiet_worker_deaths() -> None:
    """Ray prints every worker death pushed to the driver; the executor reports them in
    the trial's fail_reason / worker_deaths, so drop those (and only those) lines."""
    worker = ray._private.worker
    show = getattr(worker, "print_to_stdstream", None)
    if show is None or getattr(show, "_sqa_nas", False):
        return

    def filtered(data, *args, **kwargs):
        if not any(
            "Worker exit type" in line or "worker died" in line.lower()
            for line in data.get("lines", [])
        ):
            show(data, *args, **kwargs)

    filtered._sqa_nas = True  # type: ignore[attr-defined]  # a marker on the function
    worker.print_to_stdstream = filtered
