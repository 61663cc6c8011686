"""The Ray cluster a `RayExecutor` runs on: joining it (or starting a private instance on
loopback), reading its live nodes, and how many workers of one shape they hold.

With no ``address`` a private Ray instance starts on this machine, bound to loopback, with
no dashboard unless ``include_dashboard``; with one, the driver joins that cluster (started
with ``ray start --head`` / ``ray start --address=...``, see the README's "Running on a
cluster").

Faults it turns into one line instead of a hang:

- An address where no Ray cluster answers is refused in seconds, before anything is written
  (`check_address`: the port must accept a connection and answer as Ray's GCS, a gRPC
  server, does). A loopback address stays loopback: Ray would rewrite ``127.0.0.1`` to this
  machine's network address (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps it, as for the
  private instance).
- A raylet or GCS that dies mid-search raises `ExecutorLost` from `refresh` within a poll
  (the private instance's processes are this driver's children) or a capacity refresh (a
  joined cluster's GCS and this machine's raylet stop accepting connections, or this
  machine's node is declared dead), where Ray would leave the trials waiting for ever.
- A driver killed with SIGKILL cannot stop its private instance, and Ray's agents outlive
  it for about a minute (they try to report the raylet's death to the dead GCS): each
  private instance is recorded under the temp folder, and the next one started on this
  machine first kills what an instance of a driver that is gone left running
  (`ray_leftovers`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray._private import ray_constants, services

from sqa_nas.errors import UserError
from sqa_nas.search.executors.base import ExecutorLost
from sqa_nas.search.executors.ray_leftovers import record_instance, stop_leftovers

CAPACITY_REFRESH_S = 5.0  # how often live nodes are re-read (nodes join, nodes die)
EMBEDDED_OBJECT_STORE = 256 * 2**20  # jobs and outcomes are kilobytes; Ray's default is 30% RAM
EPS = 1e-6
PROBE_TIMEOUT_S = 5.0  # for a Ray address to accept a connection and answer
# An HTTP/2 client's first bytes (RFC 9113 §3.4: the preface, then an empty SETTINGS frame);
# a gRPC server, as Ray's GCS and raylets are, answers with a SETTINGS frame (type 4).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
# What of a private instance the driver cannot do without (its dashboard, say, it can).
NEEDED = (ray_constants.PROCESS_TYPE_RAYLET, ray_constants.PROCESS_TYPE_GCS_SERVER)


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
        self._node: Any = None  # ray._private.node.Node of the private instance
        self._record: Path | None = None  # this private instance's (`ray_leftovers`)
        self._probes: list[tuple[str, str]] = []  # (what, HOST:PORT) a joined cluster needs
        self.lost: str | None = None  # what died, once `refresh` found it
        joining = address is not None and not ray.is_initialized()
        self._join_at = self.check_address() if joining else None

    def check_address(self) -> str | None:
        """The HOST:PORT to join for ``address`` (``auto``: the one Ray finds), once it
        answers as a Ray cluster does; None for an address Ray reads its own way (``ray://``).

        Raises:
            UserError: the address is malformed, or nothing answers there as Ray's GCS.
        """
        address = self.address
        assert address is not None
        if "://" in address:
            return None  # Ray Client and the like: Ray's own connection, as given
        if address == "auto":  # RAY_ADDRESS, or the cluster `ray start` left on this machine
            try:
                address = services.get_ray_address_from_environment("auto", None)
            except ConnectionError:  # Ray finds none
                raise UserError(
                    "execution.ray.address: auto finds no Ray cluster on this machine (and "
                    "RAY_ADDRESS is not set); start one with `ray start --head`, see the "
                    "README's 'Running on a cluster'"
                ) from None
            if "://" in address:
                return None
        host, _, port = address.rpartition(":")
        host = host.strip("[]")  # [::1]:6379
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(
                f"execution.ray.address: {address!r} is not HOST:PORT (or auto); the head "
                "prints its address when started with `ray start --head`"
            )
        problem = probe(host, int(port), grpc=True)
        if problem:
            raise UserError(
                f"execution.ray.address: no Ray cluster answers at {address}: {problem} "
                f"(start one there with `ray start --head --port={port}`, see the README's "
                "'Running on a cluster')"
            )
        return address

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
            address = self._join_at or self.address
            if services.is_localhost(address.rpartition(":")[0].strip("[]")):
                _keep_loopback()  # else Ray joins this machine's network address instead
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(
                    f"execution.ray.address: cannot join the Ray cluster at {self.address!r}: "
                    f"{str(exc).splitlines()[0]} (start one with `ray start --head`, see "
                    "the README's 'Running on a cluster')"
                ) from None
            self._owns_ray = True
        node: Any = ray._private.worker._global_node  # None through Ray Client
        if self._node is None and node is not None:  # joined: watch its GCS and our raylet
            self._probes = [("GCS", node.gcs_address)]
            if node.node_manager_port:
                raylet = f"{node.node_ip_address}:{node.node_manager_port}"
                self._probes.append(("raylet on this machine", raylet))
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
        _keep_loopback()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        stop_leftovers()
        ray.init(
            address="local",
            num_gpus=gpus,
            include_dashboard=self.include_dashboard,
            object_store_memory=EMBEDDED_OBJECT_STORE,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        self._owns_ray = True
        self._node = ray._private.worker._global_node
        self._record = record_instance(self._node.get_session_dir_path())

    def disconnect(self) -> None:
        """Shut Ray down if this process started or joined it here (a private instance's
        processes with it, even when its raylet or GCS died)."""
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
        if self._record is not None:
            self._record.unlink(missing_ok=True)
            self._record = None

    def invalidate(self) -> None:
        """Re-read the nodes at the next `refresh` (a worker died: its node may be gone)."""
        self._refreshed = 0.0

    def refresh(self, force: bool = False) -> None:
        """Re-read the live nodes and the number of workers they can hold (`target`), at
        most every `CAPACITY_REFRESH_S` seconds unless `force`; first check that what the
        driver needs of Ray lives (the private instance's raylet and GCS at every call).

        Raises:
            ExecutorLost: naming what died (also kept in `lost`).
        """
        now = time.monotonic()
        due = force or now - self._refreshed >= CAPACITY_REFRESH_S
        self.lost = self.lost or self._dead(due=due)
        if self.lost:
            raise ExecutorLost(self.lost)
        if not due:
            return
        self._refreshed = now
        listed = ray.nodes()
        here = ray.get_runtime_context().get_node_id()
        if self._probes and not any(n["NodeID"] == here and n.get("Alive") for n in listed):
            # Joined: Ray declared this machine's raylet, which the driver talks to, dead.
            self.lost = f"{self._where} declared this machine's node ({here[:8]}) dead"
            raise ExecutorLost(self.lost)
        nodes = []
        for n in listed:
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

    def _dead(self, *, due: bool) -> str | None:
        """What of Ray this driver needs has died, or None. The private instance's raylet
        and GCS are child processes (read at no cost); a joined cluster's GCS and this
        machine's raylet must accept connections (checked when `due`, as `refresh` paces)."""
        if self._node is not None:
            for kind, process in self._node.dead_processes():
                if kind in NEEDED:
                    code = process.returncode
                    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
                    return f"the private Ray instance's {kind} (pid {process.pid}) died ({how})"
            return None
        for what, address in self._probes if due else []:
            host, _, port = address.rpartition(":")
            problem = probe(host.strip("[]"), int(port))
            if problem:
                return f"{self._where} lost its {what} ({address}: {problem})"
        return None

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


def _keep_loopback() -> None:
    """Keep 127.0.0.1 as given: without this Ray rewrites a loopback address to this machine's
    network address (`services.resolve_ip_for_localhost`), and binds a private instance to
    it. Ray does this itself on macOS and Windows (`ray_constants.ENABLE_RAY_CLUSTER`)."""
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"  # for Ray's own processes
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time


def probe(host: str, port: int, *, grpc: bool = False) -> str | None:
    """Why `host`:`port` accepts no TCP connection within `PROBE_TIMEOUT_S`, or with `grpc`
    does not answer the HTTP/2 preface with a SETTINGS frame as Ray's GCS (a gRPC server)
    does; None when it does. With TLS on (``RAY_USE_TLS``) only the connection is checked."""
    grpc = grpc and os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true")
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as conn:
            if not grpc:
                return None
            conn.sendall(HTTP2_PREFACE)
            reply = conn.recv(9)  # a frame header: length (3 bytes), type, flags, stream
    except TimeoutError:
        return f"no answer within {PROBE_TIMEOUT_S:g} s"
    except OSError as exc:  # refused, unreachable, unknown host
        return (exc.strerror or str(exc) or type(exc).__name__).lower()
    if len(reply) < 4 or reply[3] != 4:
        return f"something else listens there (it answered {reply[:16]!r} to gRPC)"
    return None


def _quiet_worker_deaths() -> None:
    """Ray prints every worker death pushed to the driver, and a raylet's death with its
    log's last lines; the executor reports them in the trial's fail_reason / worker_deaths,
    or raises `ExecutorLost`, so drop those (and only those) messages."""
    worker = ray._private.worker
    show = getattr(worker, "print_to_stdstream", None)
    if show is None or getattr(show, "_sqa_nas", False):
        return

    def filtered(data, *args, **kwargs):
        if not any(
            "Worker exit type" in line
            or "worker died" in line.lower()
            or "Raylet is terminated" in line
            or "has been marked dead because the detector" in line
            for line in data.get("lines", [])
        ):
            show(data, *args, **kwargs)

    filtered._sqa_nas = True  # type: ignore[attr-defined]  # a marker on the function
    worker.print_to_stdstream = filtered
