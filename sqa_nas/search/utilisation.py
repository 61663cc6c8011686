"""GPU utilisation over a search's wall time, sampled through NVML (nvidia-ml-py's `pynvml`).

`GpuSampler` runs a daemon thread that reads each GPU's utilisation every `period_s` seconds
(default 0.2 s: 5 Hz) together with its memory in use. NVML's utilisation
(`nvmlDeviceGetUtilizationRates(h).gpu`) is the share of the driver's last sample period
(1/6 s to 1 s, by product) during which a kernel ran: the figure nvidia-smi prints, 0-1 here.

Means are exact over every sample. The trace keeps at most `max_points` buckets: when it is
full, neighbours merge two by two and later buckets hold twice the samples, so a day-long
search keeps the same few hundred kilobytes as a minute-long one, at an even resolution.

Where NVML cannot answer (the package or the driver is missing, a MIG slice, which has no
utilisation of its own) the summary reports None with the reason: a search never fails for
want of its figures. Every NVML call goes through the module object the sampler is given
(`load_nvml` by default), so tests substitute a fake one.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PERIOD_S = 0.2  # 5 Hz
MAX_POINTS = 4096  # buckets kept in memory
TRACE_POINTS = 256  # points in `Utilisation.trace` (what a study stores per run)
GIB = 2**30


def load_nvml() -> Any:
    """The `pynvml` module of nvidia-ml-py (ImportError when absent): the seam tests replace."""
    # A dependency of sqa-nas, but a trimmed environment without it must still search:
    # imported where used, and its absence reported as n/a.
    return importlib.import_module("pynvml")


def visible_entries(value: str | None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as its entries, in CUDA's order (None when unset: every GPU).
    CUDA stops reading at the first empty or negative entry, and so does this."""
    if value is None:
        return None
    out = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        out.append(entry)
    return out


def nvml_index(entry: str, uuids: Sequence[str]) -> int | None:
    """The NVML index of one CUDA_VISIBLE_DEVICES entry: "GPU-<uuid>" (or a unique prefix
    of one) by NVML's UUIDs, an integer as an index (CUDA's default order equals NVML's PCI
    order on hosts of one GPU model). None when nothing matches (a MIG slice, a typo)."""
    if entry.isdigit():
        return int(entry) if int(entry) < len(uuids) else None
    matches = [i for i, u in enumerate(uuids) if entry.startswith("GPU-") and u.startswith(entry)]
    return matches[0] if len(matches) == 1 else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)  # old pynvml: bytes


@dataclass
class _Gpu:
    label: str  # "GPU 0 (NVIDIA H200)": CUDA's ordinal in this process, NVML's name
    handle: Any


@dataclass
class _Bucket:
    """Consecutive samples merged: their time span, and per GPU the sum of the utilisation
    read, how many reads answered and the most memory in use (bytes)."""

    t0: float
    t1: float
    rounds: int  # sampling rounds merged here
    util: list[float]
    reads: list[int]
    mem: list[int]

    def merge(self, other: _Bucket) -> _Bucket:
        return _Bucket(
            self.t0,
            other.t1,
            self.rounds + other.rounds,
            [a + b for a, b in zip(self.util, other.util)],
            [a + b for a, b in zip(self.reads, other.reads)],
            [max(a, b) for a, b in zip(self.mem, other.mem)],
        )


def _halve(buckets: list[_Bucket]) -> list[_Bucket]:
    """Neighbours merged two by two (an odd last one kept as it is)."""
    out = [a.merge(b) for a, b in zip(buckets[::2], buckets[1::2])]
    return out + buckets[-1:] if len(buckets) % 2 else out


@dataclass(frozen=True)
class Utilisation:
    """What a `GpuSampler` saw.

    mean: the mean over GPUs of each GPU's mean utilisation (0-1); None when NVML gave
        nothing, `note` says why.
    by_gpu: each GPU's mean (0-1), None for a GPU NVML could not read.
    memory_peak_gib: each GPU's most memory in use (GiB, all processes).
    trace: {"t_s": bucket mid-times, seconds since the start; "by_gpu": {label: mean
        utilisation per bucket, 0-1 or None}}, at most `TRACE_POINTS` points.
    samples: sampling rounds taken; duration_s: seconds from start to stop.
    note: why there is no figure, or what the figure leaves out; None when nothing to say.
    """

    mean: float | None
    by_gpu: dict[str, float | None] = field(default_factory=dict)
    memory_peak_gib: dict[str, float] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)
    samples: int = 0
    duration_s: float = 0.0
    note: str | None = None


class GpuSampler:
    """Samples GPU utilisation on a daemon thread between `start` and `stop` (or as a
    context manager: ``with GpuSampler([0, 1]) as s: ...; s.summary()``).

    Args:
        gpus: CUDA ordinals as this process numbers them (cuda:0, cuda:1, ...), mapped to
            NVML's devices through CUDA_VISIBLE_DEVICES (UUIDs matched, integers taken as
            indices); None: every GPU this process can see.
        period_s: seconds between samples (0.25 or less gives the 4 Hz the figures need).
        max_points: buckets kept in memory before neighbours merge.
        nvml: the NVML module (default `load_nvml()`); tests pass a fake.
        environ: where CUDA_VISIBLE_DEVICES is read (default `os.environ`).
        clock: seconds, monotonic (default `time.monotonic`).
    """

    def __init__(
        self,
        gpus: Sequence[int] | None = None,
        *,
        period_s: float = PERIOD_S,
        max_points: int = MAX_POINTS,
        nvml: Any = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if period_s <= 0 or max_points < 2:
            raise ValueError(f"period_s {period_s} must be > 0 and max_points {max_points} >= 2")
        self.gpus = None if gpus is None else list(gpus)
        self.period_s, self.max_points = period_s, max_points
        self._nvml, self._environ, self._clock = nvml, environ, clock
        self._targets: list[_Gpu] = []
        self._buckets: list[_Bucket] = []
        self._per_bucket = 1  # sampling rounds a bucket holds; doubles as buckets merge
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = self._t1 = 0.0
        self.note: str | None = None  # why nothing is sampled, or what is left out

    def __enter__(self) -> GpuSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Find the GPUs and start sampling afresh; where NVML cannot, leave `note` saying
        why."""
        self.stop()
        self._t0 = self._t1 = self._clock()
        self._targets, self._buckets, self._per_bucket, self.note = [], [], 1, None
        self._stop.clear()
        if self.gpus == []:
            self.note = "no GPU to sample: the trials run on the CPU"
            return
        try:
            nvml = self._nvml if self._nvml is not None else load_nvml()
        except ImportError:
            self.note = "nvidia-ml-py (pynvml) is not installed"
            return
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError (no driver), OSError (no libnvidia-ml)
            self.note = f"NVML is not available: {_text(exc) or type(exc).__name__}"
            return
        self._nvml = nvml
        try:
            self._targets = self._find(nvml)
        except Exception as exc:  # an NVML error while listing the GPUs
            self.note = f"NVML could not list the GPUs: {_text(exc) or type(exc).__name__}"
        if not self._targets:
            self._shutdown()
            return
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
        self._thread.start()

    def _find(self, nvml: Any) -> list[_Gpu]:
        count = nvml.nvmlDeviceGetCount()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
        environ = os.environ if self._environ is None else self._environ
        entries = visible_entries(environ.get("CUDA_VISIBLE_DEVICES"))
        if entries is None:
            entries = [str(i) for i in range(count)]
        ordinals = range(len(entries)) if self.gpus is None else self.gpus
        names = [_text(nvml.nvmlDeviceGetName(h)) for h in handles]
        found, missing, notes = [], [], []
        for ordinal in ordinals:
            index = nvml_index(entries[ordinal], uuids) if ordinal < len(entries) else None
            if index is None:
                missing.append(f"cuda:{ordinal}")
            else:
                found.append(_Gpu(f"GPU {ordinal} ({names[index]})", handles[index]))
        if missing:
            notes.append(
                f"NVML has no device for {', '.join(missing)} "
                f"(CUDA_VISIBLE_DEVICES={','.join(entries)}; a MIG slice has no utilisation)"
            )
        if (
            len(set(names)) > 1
            and any(e.isdigit() for e in entries)
            and environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID"
        ):
            # CUDA numbers the fastest GPU first by default, NVML in PCI order.
            notes.append("mixed GPU models: set CUDA_DEVICE_ORDER=PCI_BUS_ID for sure labels")
        self.note = "; ".join(notes) or None
        return found

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.period_s):
                return

    def _sample(self) -> None:
        nvml, n = self._nvml, len(self._targets)
        util, reads, mem = [0.0] * n, [0] * n, [0] * n
        for i, gpu in enumerate(self._targets):
            try:
                util[i] = nvml.nvmlDeviceGetUtilizationRates(gpu.handle).gpu / 100
                reads[i] = 1
                mem[i] = int(nvml.nvmlDeviceGetMemoryInfo(gpu.handle).used)
            except Exception:  # NVMLError: not supported (MIG), GPU lost; the read is skipped
                continue
        t = self._clock() - self._t0
        with self._lock:
            last = self._buckets[-1] if self._buckets else None
            sample = _Bucket(t, t, 1, util, reads, mem)
            if last is not None and last.rounds < self._per_bucket:
                self._buckets[-1] = last.merge(sample)
            else:
                self._buckets.append(sample)
            if len(self._buckets) >= self.max_points:
                self._buckets = _halve(self._buckets)
                self._per_bucket *= 2

    def stop(self) -> None:
        """Stop sampling and release NVML; idempotent."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
            self._t1 = self._clock()
            self._shutdown()
        elif self._t1 == self._t0:
            self._t1 = self._clock()

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # already shut down, or the driver went away
            pass

    def summary(self, trace_points: int = TRACE_POINTS) -> Utilisation:
        """The means, peaks and a trace of at most `trace_points` points (also mid-run)."""
        with self._lock:
            buckets = list(self._buckets)
        end = self._t1 if self._thread is None else self._clock()
        labels = [g.label for g in self._targets]
        if not buckets:
            return Utilisation(None, duration_s=end - self._t0, note=self.note)
        util = [sum(b.util[i] for b in buckets) for i in range(len(labels))]
        reads = [sum(b.reads[i] for b in buckets) for i in range(len(labels))]
        by_gpu = {g: round(u / n, 4) if n else None for g, u, n in zip(labels, util, reads)}
        means = [v for v in by_gpu.values() if v is not None]
        note = self.note
        if not means:
            note = f"NVML gave no utilisation for {', '.join(labels)} (not supported)"
        while len(buckets) > trace_points:
            buckets = _halve(buckets)
        trace = {
            "t_s": [round((b.t0 + b.t1) / 2, 2) for b in buckets],
            "by_gpu": {
                g: [round(b.util[i] / b.reads[i], 3) if b.reads[i] else None for b in buckets]
                for i, g in enumerate(labels)
            },
        }
        return Utilisation(
            round(sum(means) / len(means), 4) if means else None,
            by_gpu,
            {g: round(max(b.mem[i] for b in buckets) / GIB, 2) for i, g in enumerate(labels)},
            trace,
            sum(b.rounds for b in buckets),
            end - self._t0,
            note,
        )
