"""A search run's figures, each plain about what it measures: what the driver adds to the
study's ``executor_stats`` at the end of a run (`RunMeter` computes its own part), and the one
reader of those entries (`RunStats`), for the search's summary and the dashboard.

- ``in_trial_fraction`` (the executor's): the time its workers spent inside trials over their
  span. A trial also builds its model, compiles, measures and evaluates, and the GPU may idle
  meanwhile: it is not GPU work. Entries written before the rename hold ``busy_fraction``
  (and ``_by_worker``, ``_by_gpu``, ``_to_end``, ``_to_end_by_gpu``); they read the same.
- ``train_step_share``: per device, the share of the run's wall time during which it was
  inside a trial's training loop (the union of its trials' `Timings.train_windows`, one per
  seed, else `train_window`, clipped to the run); overall, the mean over the devices that trained.
- ``nvml_util_mean``: NVML's GPU utilisation over the run's wall time (`GpuSampler`), per GPU
  of this host that the trials use and their mean; None where there is none, with
  ``nvml_note`` saying why (a CPU search, no NVML) or what the figure leaves out (a Ray
  cluster's other hosts).
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from sqa_nas.search.executors.base import Usage
from sqa_nas.search.records import Device, Timings
from sqa_nas.search.utilisation import GpuSampler


def device_key(attrs: Mapping[str, Any]) -> str | None:
    """The device a trial ran on, from its stored attrs: "node GPU 0 (NVIDIA H200)", or
    "node cpu (its CPU's name)"; None when it recorded none."""
    try:
        d = Device.model_validate(attrs.get("device") or {})
    except ValidationError:
        return None
    if not d.name:
        return None
    where = d.node or d.host or "?"
    return f"{where} GPU {d.gpu} ({d.name})" if d.gpu is not None else f"{where} cpu ({d.name})"


def train_step_shares(
    windows: Mapping[str, Sequence[tuple[float, float]]], start: float, end: float
) -> dict[str, float]:
    """Per device, the share (0-1) of [start, end] covered by its training windows.

    Args:
        windows: device -> (from, to) of each training loop it ran, in the clock of
            `start` and `end` (seconds); overlapping windows (several trials on one GPU)
            count once.
        start, end: the run's wall time.
    Returns:
        device -> the length of the union of its windows inside [start, end] / (end - start).
    """
    wall = end - start
    out = {}
    for key, spans in sorted(windows.items()):
        inside = Usage(
            [(max(a, start), min(b, end)) for a, b in spans if min(b, end) > max(a, start)]
        )
        out[key] = round(inside.covered() / wall, 4) if wall > 0 else 0.0
    return out


class RunMeter:
    """One driver run's own figures: NVML sampled over its wall time (`sampler`), and the
    training windows of the trials it tells (`add`).

    Args:
        sampler: samples the GPUs the executor uses on this host (`Executor.local_gpus`).
        clock: seconds since the epoch, the clock of `Timings.train_window` (`time.time`).
    """

    def __init__(self, sampler: GpuSampler, *, clock: Callable[[], float] = time.time) -> None:
        self.sampler, self.clock = sampler, clock
        self.windows: dict[str, list[tuple[float, float]]] = {}
        self.started: float | None = None
        self.ended: float | None = None

    def start(self) -> None:
        """The run starts: its wall time and the sampling begin (a meter started again
        forgets its last run)."""
        self.started, self.ended, self.windows = self.clock(), None, {}
        self.sampler.start()

    def stop(self) -> None:
        """The run ends (idempotent)."""
        if self.ended is None:
            self.sampler.stop()
            self.ended = self.clock()

    def add(self, attrs: Mapping[str, Any]) -> None:
        """Note a told trial's training window, from its attrs (`device`, `timings`)."""
        try:
            timings = Timings.model_validate(attrs.get("timings") or {})
        except ValidationError:
            return
        windows = timings.train_windows or [w for w in [timings.train_window] if w]
        key = device_key(attrs)
        if windows and key is not None:
            self.windows.setdefault(key, []).extend(windows)

    def stats(self) -> dict[str, Any]:
        """The figures `RunStats` reads: ``wall_s``, ``nvml_util_mean`` (0-1 or None),
        ``nvml_util_by_gpu``, ``nvml_memory_peak_gib_by_gpu``, ``nvml_samples``,
        ``nvml_note``, ``nvml_trace`` (at most `utilisation.TRACE_POINTS` points),
        ``train_step_share`` (0-1 or None) and ``train_step_share_by_gpu``."""
        start = self.clock() if self.started is None else self.started
        end = self.clock() if self.ended is None else self.ended
        u = self.sampler.summary()
        note = u.note
        if u.mean is not None and self.sampler.gpus is None:
            scope = f"this host's GPUs only ({socket.gethostname()}); other hosts not sampled"
            note = f"{scope}; {note}" if note else scope
        shares = train_step_shares(self.windows, start, end)
        return {
            "wall_s": round(end - start, 1),
            "nvml_util_mean": u.mean,
            "nvml_util_by_gpu": u.by_gpu,
            "nvml_memory_peak_gib_by_gpu": u.memory_peak_gib,
            "nvml_samples": u.samples,
            "nvml_note": note,
            "nvml_trace": u.trace,
            "train_step_share": round(statistics.mean(shares.values()), 4) if shares else None,
            "train_step_share_by_gpu": shares,
        }


def _renamed(name: str) -> Any:
    """A field read under its name or under its name before the rename (busy_fraction...)."""
    return AliasChoices(name, name.replace("in_trial_fraction", "busy_fraction"))


class RunStats(BaseModel):
    """One run's entry of ``study.user_attrs["executor_stats"]``, as the driver stores it:
    who ran it, the executor's figures (`Executor.stats`, kept as unknown keys when not named
    here) and `RunMeter.stats`. Every field is optional: entries of older runs load, and
    what they lack reads None (n/a)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    driver: str | None = None
    host: str | None = None
    ended: str | None = None  # ISO 8601, UTC
    executor: str | None = None
    wall_s: float | None = None
    in_trial_fraction: float | None = Field(None, validation_alias=_renamed("in_trial_fraction"))
    in_trial_fraction_by_worker: dict[str, float] = Field(
        {}, validation_alias=_renamed("in_trial_fraction_by_worker")
    )
    in_trial_fraction_by_gpu: dict[str, float] = Field(
        {}, validation_alias=_renamed("in_trial_fraction_by_gpu")
    )
    in_trial_fraction_to_end: float | None = Field(
        None, validation_alias=_renamed("in_trial_fraction_to_end")
    )
    in_trial_fraction_to_end_by_gpu: dict[str, float] = Field(
        {}, validation_alias=_renamed("in_trial_fraction_to_end_by_gpu")
    )
    nvml_util_mean: float | None = None
    nvml_util_by_gpu: dict[str, float | None] = {}
    nvml_memory_peak_gib_by_gpu: dict[str, float] = {}
    nvml_samples: int | None = None
    nvml_note: str | None = None
    nvml_trace: dict[str, Any] = {}
    train_step_share: float | None = None
    train_step_share_by_gpu: dict[str, float] = {}

    @classmethod
    def read(cls, entry: Mapping[str, Any]) -> RunStats:
        """An entry as stored (or as `Driver.run` returns it); one that does not parse reads
        as an empty record (every figure n/a) rather than stopping a reader."""
        try:
            return cls.model_validate(dict(entry))
        except ValidationError:
            return cls()

    def lines(self) -> list[str]:
        """The search summary's lines for the driver's figures (NVML utilisation, training-
        step share), n/a with the reason where the run has none."""
        out = []
        if self.nvml_util_mean is None:
            why = self.nvml_note or "not recorded by the sqa-nas that ran this search"
            out.append(f"GPU utilisation (NVML): n/a ({why})")
        else:
            out.append(
                f"GPU utilisation (NVML): {self.nvml_util_mean:.1%}"
                + (f" over {self.wall_s:g} s" if self.wall_s is not None else "")
                + f" ({_each(self.nvml_util_by_gpu)})"
                + (f"; peak memory {peak:g} GiB" if (peak := self._peak_gib()) else "")
                + (f"; {self.nvml_note}" if self.nvml_note else "")
            )
        if self.train_step_share is None:
            why = (
                "no trial of this run trained"
                if "train_step_share" in self.model_fields_set
                else "not recorded by the sqa-nas that ran this search"
            )
            out.append(f"training-step share: n/a ({why})")
        else:
            out.append(
                f"training-step share: {self.train_step_share:.1%} of the wall time "
                f"({_each(self.train_step_share_by_gpu)})"
            )
        return out

    def _peak_gib(self) -> float | None:
        return max(self.nvml_memory_peak_gib_by_gpu.values(), default=None)


# The driver's keys: `RunStats.lines` shows them (samples and trace stay in the record); a
# summary prints the executor's other keys as they are.
SHOWN = (
    "wall_s",
    "nvml_util_mean",
    "nvml_util_by_gpu",
    "nvml_memory_peak_gib_by_gpu",
    "nvml_samples",
    "nvml_note",
    "nvml_trace",
    "train_step_share",
    "train_step_share_by_gpu",
)


def _each(values: Mapping[str, float | None]) -> str:
    return ", ".join(f"{k} {'n/a' if v is None else f'{v:.1%}'}" for k, v in values.items())


def run_stats(entries: Any) -> list[RunStats]:
    """The runs of a study's ``executor_stats`` attribute (`study.user_attrs.get(...)`),
    oldest first; anything but a list of entries reads as no run."""
    if not isinstance(entries, list):
        return []
    return [RunStats.read(e) for e in entries if isinstance(e, Mapping)]
