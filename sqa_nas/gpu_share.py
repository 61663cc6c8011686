"""Several trials on one GPU, each timed alone: an exclusive timing window per GPU, shared by
the processes of one host (local workers and Ray actors alike).

A small model leaves most of a GPU idle, so several trials may train on it at once; but a
throughput measured while others train measures the crowd, not the model. `GpuShare` is a
writer-preferring read/write lock over two files in a folder named after the physical GPU,
taken with ``fcntl.flock`` (the kernel releases a dead process's locks):

- a trainer holds ``rw`` SHARED while it trains (`GpuShare.training`);
- a measurer takes ``turnstile`` EXCLUSIVE, then ``rw`` EXCLUSIVE (`GpuShare.exclusive`): no
  trainer enters once it waits, and its window opens when every trainer has stepped aside;
- between steps a trainer tries ``turnstile`` SHARED without blocking
  (`GpuShare.yield_if_wanted`). Held by a measurer: the trainer waits for its own queued
  kernels (they must not run inside the window), lets ``rw`` go, waits on the turnstile
  and takes ``rw`` again. Free: two non-blocking syscalls (the try and its release), no
  host sync.

Disabled (one trial per GPU, a CPU device, no ``fcntl`` as on Windows), every call is a no-op.
Each process counts the seconds it waited for its windows (`waited_s`) and stood aside for
others' (`stepped_aside_s`), for the trial's timings.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows: no flock; trials sharing a GPU are timed as they come
    fcntl = None  # type: ignore[assignment]  # the module or None, tested before use


def _no_device_work() -> None:
    """What `GpuShare` waits for before stepping aside when there is no GPU (tests)."""


def gpu_key(device: torch.device) -> str:
    """A file name for the physical GPU behind `device`, the same in every process of this host
    whatever its CUDA_VISIBLE_DEVICES: the GPU's UUID, else the host name and the index that
    CUDA_VISIBLE_DEVICES maps the device to (Ray gives each actor its own view)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        key = f"gpu-{uuid}"
    else:
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
        physical = visible[index] if index < len(visible) and visible[index] else index
        key = f"{socket.gethostname()}-gpu{physical}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


class GpuShare:
    """Training side by side and measuring alone on one GPU (the protocol is the module's).

    Args:
        directory: the folder of the GPU's two lock files, created when first used; None:
            disabled, every call a no-op. `GpuShare.for_device` picks it for a GPU.
        synchronize: waits until this process's queued device work is done (a trainer calls
            it before it steps aside); `torch.cuda.synchronize` of the device on a GPU.

    Not thread-safe: one trial, one process, one `GpuShare`.
    """

    def __init__(
        self, directory: str | Path | None, *, synchronize: Callable[[], None] = _no_device_work
    ) -> None:
        self.directory = Path(directory) if directory is not None and fcntl else None
        self.synchronize = synchronize
        self.waited_s = 0.0  # seconds waiting for exclusive windows
        self.stepped_aside_s = 0.0  # seconds out of training for others' windows
        self._held: tuple[int, int] | None = None  # (turnstile, rw) fds while training

    @classmethod
    def for_device(
        cls, device: torch.device, *, enabled: bool, root: str | Path | None = None
    ) -> GpuShare:
        """The share of `device`'s GPU, or a disabled one unless `enabled` and a CUDA device.

        Args:
            device: the trial's device.
            enabled: whether other trials may train on this GPU at the same time.
            root: where the per-user lock folder goes (default: `tempfile.gettempdir()`).
        """
        if not enabled or device.type != "cuda" or fcntl is None:
            return cls(None)
        # Per user: another user's lock files could not be opened; one folder per GPU.
        top = Path(root or tempfile.gettempdir()) / f"sqa-nas-gpu-share-{os.getuid()}"
        return cls(top / gpu_key(device), synchronize=lambda: torch.cuda.synchronize(device))

    @property
    def enabled(self) -> bool:
        """Whether the locks are taken (False: every call returns at once)."""
        return self.directory is not None

    def _open(self, name: str) -> int:
        assert self.directory is not None  # only called when enabled
        self.directory.mkdir(parents=True, exist_ok=True)
        return os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o600)

    def _enter(self, turnstile: int, rw: int) -> None:
        """Take ``rw`` shared through the turnstile: blocks while a measurer holds or waits."""
        assert fcntl is not None  # only called when enabled
        fcntl.flock(turnstile, fcntl.LOCK_SH)
        fcntl.flock(rw, fcntl.LOCK_SH)
        fcntl.flock(turnstile, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def training(self) -> Iterator[GpuShare]:
        """Hold the GPU shared while the block trains; call `yield_if_wanted` between its
        steps. Entering waits while a measurer holds its window (counted as stepped aside).
        Nested in itself it is a no-op. Yields this share."""
        if not self.enabled or self._held is not None:
            yield self
            return
        fds = (self._open("turnstile"), self._open("rw"))
        try:
            start = time.perf_counter()
            self._enter(*fds)
            self.stepped_aside_s += time.perf_counter() - start
            self._held = fds
            yield self
        finally:
            self._held = None
            for fd in fds:
                os.close(fd)  # closing the only descriptor releases its lock

    def yield_if_wanted(self) -> None:
        """Between two training steps: if a measurer wants the GPU, wait for this process's
        queued kernels, step aside until its window closes, and take the GPU back. A no-op
        outside `training` and when disabled."""
        if self._held is None:
            return
        assert fcntl is not None  # `_held` is set only when enabled
        turnstile, rw = self._held
        try:
            fcntl.flock(turnstile, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # a measurer holds the turnstile: step aside
            start = time.perf_counter()
            self.synchronize()
            fcntl.flock(rw, fcntl.LOCK_UN)
            self._enter(turnstile, rw)
            self.stepped_aside_s += time.perf_counter() - start
        else:
            fcntl.flock(turnstile, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The GPU alone for the block: waits until every trainer has stepped aside (counted
        in `waited_s`); no trainer enters until the block ends. Inside `training`, this
        process steps aside first like any trainer and takes the GPU back after."""
        if not self.enabled:
            yield
            return
        assert fcntl is not None  # enabled only with fcntl
        held = self._held
        if held is not None:  # our own shared hold would block our exclusive request
            self.synchronize()
            fcntl.flock(held[1], fcntl.LOCK_UN)
        turnstile, rw = self._open("turnstile"), self._open("rw")
        try:
            start = time.perf_counter()
            fcntl.flock(turnstile, fcntl.LOCK_EX)
            fcntl.flock(rw, fcntl.LOCK_EX)
            self.waited_s += time.perf_counter() - start
            yield
        finally:
            os.close(rw)  # rw, then the turnstile: trainers come back through it
            os.close(turnstile)
            if held is not None:
                self._enter(*held)
