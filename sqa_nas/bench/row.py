"""The benchmark's records: `BenchRow` (one variant at one length in one cell) and
`BenchResult` (the rows under their machine header), with the one conversion to and from
the JSON a result file holds.

A row's JSON keys are its field names, except `speedups`, written as one
``speedup_vs_<baseline>`` key each, and `extra`, whose keys are written beside the fields
(columns an experiment adds, such as paper_table3's ``paper_a100_s``; unknown keys of an
older file land there too, so they survive a rewrite). A key absent from a row stays absent
when the row is written again; absent optional fields read as None.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA = "sqa-nas/bench/2"
#: How the files' samples were taken (see `time_call`); files without it synchronised the
#: device before every CUDA repeat, adding the host's launch time to each sample.
TIMING = "CUDA events around each call; warm-up calls alone, repeats queued back to back"
SPEEDUP_PREFIX = "speedup_vs_"
OUT_OF_MEMORY = "out of memory"  # how a row's `error` starts when an allocation failed


class BenchRow(BaseModel):
    """One benchmark row. Only `variant` and `seq_len` are always there: a row that failed
    early holds its configuration and `error`; a timed row holds `ms` and `tflops`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # the cell: what was asked
    variant: str
    seq_len: int
    batch: int | None = None
    n_heads: int | None = None
    head_dim: int | None = None
    mode: str | None = None  # fwd, bwd or fwd+bwd
    scope: str | None = None  # kernel, layer or model
    dtype: str | None = None
    causal: bool | None = None
    pattern: str | None = None
    backend_requested: str | None = None
    baseline: bool | None = None  # the variant is one of the cell's baselines
    # the layer that was built
    n_q_heads: int | None = None
    n_kv_heads: int | None = None
    window: int | None = None
    global_tokens: int | None = None
    mask: str | None = None  # MaskSpec.describe()
    density: float | None = None  # visible (query, key) pairs / N^2
    model: str | None = None  # model scope: the preset's name
    # what ran
    backend: str | None = None
    backend_reason: str | None = None
    kernel: str | None = None
    # the correctness check against the float64 reference
    check_error: float | None = None
    check_tolerance: float | None = None
    check_ok: bool | None = None
    check_len: int | None = None
    error: str | None = None  # why the row has no timing
    # the timing (ms: median of the repeats)
    ms: float | None = None
    ms_min: float | None = None
    ms_spread: float | None = None
    repeats: int | None = None
    flops: float | None = None
    tflops: float | None = None  # from the mask's real density
    tokens_per_s: float | None = None
    # comparisons within the cell
    speedups: dict[str, float] = Field(default_factory=dict)  # baseline -> its ms / ours
    best_backend: str | None = None
    fraction_of_best: float | None = None  # our TFLOP/s / best_backend's
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def timed(self) -> bool:
        """Whether the row holds a timing (False for rows refused or failed: see `error`)."""
        return self.ms is not None

    @property
    def out_of_memory(self) -> bool:
        """Whether the row failed for want of memory (its `error` says how much was asked)."""
        return self.error is not None and self.error.startswith(OUT_OF_MEMORY)

    def speedup(self, baseline: str) -> float | None:
        """Time of `baseline` over this row's in the same cell (None: not measured)."""
        return self.speedups.get(baseline)

    def value(self, key: str) -> Any:
        """The value under a JSON key (a field, ``speedup_vs_X`` or an extra column), None
        when absent: for grouping rows by keys that are data (plot panels, cells)."""
        if key.startswith(SPEEDUP_PREFIX):
            return self.speedups.get(key.removeprefix(SPEEDUP_PREFIX))
        if key in BenchRow.model_fields and key not in ("speedups", "extra"):
            return getattr(self, key)
        return self.extra.get(key)

    def update(self, **values: Any) -> BenchRow:
        """A copy with `values` set, by JSON key (``speedup_vs_X`` and extra columns too)."""
        return BenchRow.from_dict(self.to_dict() | values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | BenchRow) -> BenchRow:
        """A row from its JSON form (a `BenchRow` is returned as it is)."""
        if isinstance(data, BenchRow):
            return data
        known, speedups, extra = {}, {}, {}
        for key, value in data.items():
            if key.startswith(SPEEDUP_PREFIX):
                speedups[key.removeprefix(SPEEDUP_PREFIX)] = value
            elif key in cls.model_fields and key not in ("speedups", "extra"):
                known[key] = value
            else:
                extra[key] = value
        return cls(**known, speedups=speedups, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the fields that were set, in declaration order, each speedup as
        ``speedup_vs_<baseline>`` after the timing, then the extra columns."""
        out: dict[str, Any] = {}
        for key in BenchRow.model_fields:
            if key == "speedups":
                out |= {SPEEDUP_PREFIX + b: s for b, s in self.speedups.items()}
            elif key == "extra":
                out |= self.extra
            elif key in self.model_fields_set:
                out[key] = getattr(self, key)
        return out


def as_rows(rows: Iterable[Mapping[str, Any] | BenchRow]) -> list[BenchRow]:
    """Rows as `BenchRow`s, whether read from a file (dicts) or made here."""
    return [BenchRow.from_dict(r) for r in rows]


@dataclass(frozen=True)
class BenchResult:
    """A benchmark run: the machine header, the settings (of the first cell), what varied
    across cells (`grid`; None for one cell) and the rows. `partial` marks a result saved
    while the run goes on; `running` names the row in flight then (see `run_grid`)."""

    machine: dict
    settings: dict
    rows: list[BenchRow]
    grid: dict | None = None
    partial: bool = False
    running: dict | None = None
    schema: str = SCHEMA
    timing: str = TIMING

    def replace(self, **changes: Any) -> BenchResult:
        """A copy with `changes` applied (a frozen dataclass's ``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON a result file holds: {"schema", "machine", "timing", "settings",
        ["grid"], "rows", ["partial", "running"]}."""
        out: dict[str, Any] = {
            "schema": self.schema,
            "machine": self.machine,
            "timing": self.timing,
            "settings": self.settings,
        }
        if self.grid is not None:
            out["grid"] = self.grid
        out["rows"] = [r.to_dict() for r in self.rows]
        if self.partial:
            out["partial"] = True
        if self.running is not None:
            out["running"] = self.running
        return out
