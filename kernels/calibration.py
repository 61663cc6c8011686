"""Measured backend order per (GPU, mask pattern, dtype): what ``backend="auto"`` follows.

An entry lists backends fastest first (by `AttentionBackend.measured_as`), as measured on one
GPU model, with the measurement it comes from. `select_backend` follows it when every backend
able to run the problem was measured (`measured_order`): a listed backend that is not
installed is simply absent, so the next in the measured order runs, and the reason names the
order followed. When an able backend was not measured (flash-attn-3 where flash-attn-4 was),
on other GPUs and on the CPU, the backends' own scores decide.

Measured tables override the built-in one: ``sqa-nas bench --backend sdpa,flash_attn,flex
--calibration-out FILE`` writes the order it measured, and the environment variable
``SQA_NAS_CALIBRATION=FILE`` (several files separated by ``os.pathsep``) makes `auto` use it.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sqa_nas.attention.problem import AttentionProblem
from sqa_nas.errors import UserError

from .base import AttentionBackend

ENV_VAR = "SQA_NAS_CALIBRATION"

_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


@dataclass(frozen=True)
class Calibration:
    """One measured order. ``gpu`` matches when it is a substring of the device name
    (``"H200"`` matches ``"NVIDIA H200"``); ``causal`` and ``train`` None match both."""

    gpu: str
    pattern: str  # "dense" | "window" | "flex" | "block_sparse"
    dtype: str  # "bfloat16" | "float16" | "float32"
    order: tuple[str, ...]  # backend names, fastest first
    source: str  # where the order was measured
    causal: bool | None = None
    train: bool | None = None  # forward only (False) or with a backward pass (True)

    def matches(self, gpu: str, pattern: str, dtype: str, causal: bool, train: bool) -> bool:
        """Whether this entry applies to a problem on GPU `gpu` (a device name) with that mask
        pattern, dtype name, causality and training flag."""
        return (
            self.gpu in gpu
            and self.pattern == pattern
            and self.dtype == dtype
            and self.causal in (None, causal)
            and self.train in (None, train)
        )

    @property
    def specificity(self) -> int:
        """How many of the optional keys (causal, train) this entry pins: the higher wins."""
        return (self.causal is not None) + (self.train is not None)

    def as_dict(self) -> dict:
        """The entry as JSON-able data, what `load_file` reads back."""
        return asdict(self) | {"order": list(self.order)}


_H200 = "H200 measurements of 2026-11-29 (experiments/results/bench_*_h200.json)"


def _h200_forward(pattern: str, order: tuple[str, ...], source: str) -> Calibration:
    """Built-in entries were measured forward only: training keeps the backends' scores."""
    return Calibration("H200", pattern, "bfloat16", order, f"{_H200}: {source}", train=False)


BUILTIN: tuple[Calibration, ...] = (
    _h200_forward(
        "dense",
        ("flash_attn", "sdpa", "flex"),
        "forward, head_dim 128, 32k-128k: flash-attn-4 618-708 TFLOP/s causal, cuDNN "
        "(SDPA) 555-678, compiled FlexAttention 360-465; head_dim 16 at 131k: "
        "flash-attn-4 1.55x cuDNN.",
    ),
    _h200_forward(
        "window",
        ("flash_attn", "flex", "sdpa"),
        "window 4096 at 128k, forward: flash-attn-4 553-662 TFLOP/s, FlexAttention "
        "360-465; SDPA needs an N x N mask (O(N^2) memory).",
    ),
    _h200_forward(
        "flex",
        ("flex", "sdpa"),
        "window 4096 + 16 global tokens, causal, 128k: FlexAttention on the "
        "flash-attn-4 FLASH backend 485-630 effective TFLOP/s, Triton backend "
        "369-400; flash_attn_func has no global-token mask.",
    ),
    _h200_forward(
        "block_sparse",
        ("flex", "sdpa"),
        "only FlexAttention runs block-sparse layouts without an N x N mask.",
    ),
)


def load_file(path: str | Path) -> tuple[Calibration, ...]:
    """Entries from a JSON file: a list of objects with `Calibration`'s fields (or
    ``{"entries": [...]}``, what ``bench --calibration-out`` writes)."""
    try:
        data = json.loads(Path(path).read_text())
        items = data["entries"] if isinstance(data, dict) else data
        return tuple(Calibration(**{**item, "order": tuple(item["order"])}) for item in items)
    except OSError as exc:
        raise UserError(f"{ENV_VAR}: cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(
            f"{ENV_VAR}: {path} is not a calibration file (a list of entries "
            "with gpu, pattern, dtype, order, source; as `sqa-nas bench "
            f"--calibration-out` writes): {type(exc).__name__}: {exc}"
        ) from None


@functools.cache
def _from_env(value: str) -> tuple[Calibration, ...]:
    entries: list[Calibration] = []
    for path in filter(None, value.split(os.pathsep)):
        entries.extend(load_file(path))
    return tuple(entries)


@functools.cache
def gpu_name(index: int | None = None) -> str:
    """The CUDA device name of GPU `index` (default: the current device), cached."""
    idx = torch.cuda.current_device() if index is None else index
    return torch.cuda.get_device_name(idx)


def lookup(problem: AttentionProblem, gpu: str | None = None) -> Calibration | None:
    """The entry for `problem` on `gpu` (default: the current CUDA device), or None: among
    the files named by ``SQA_NAS_CALIBRATION`` if one matches, else among the built-in
    entries; the most specific (causal / train set) of those."""
    if problem.device_type != "cuda":
        return None
    dtype = _DTYPE_NAMES.get(problem.dtype)
    if dtype is None:
        return None
    gpu = gpu if gpu is not None else gpu_name()
    for table in (_from_env(os.environ.get(ENV_VAR, "")), BUILTIN):
        found = [
            c
            for c in table
            if c.matches(
                gpu, problem.mask.pattern, dtype, problem.mask.causal, problem.requires_grad
            )
        ]
        if found:
            return max(found, key=lambda c: c.specificity)  # max keeps the first tie
    return None


def measured_order(
    problem: AttentionProblem, able: list[AttentionBackend], gpu: str | None = None
) -> tuple[list[AttentionBackend], str] | None:
    """`able` (the backends that can run `problem`) sorted by the measured order, and why;
    None when no entry applies or one of them was not measured (then no measurement
    compares it with the others, and the backends' own scores decide)."""
    entry = lookup(problem, gpu)
    if entry is None or not able or any(b.measured_as() not in entry.order for b in able):
        return None
    ranked = sorted(able, key=lambda b: entry.order.index(b.measured_as()))
    return ranked, (
        f"measured order on {entry.gpu} for {entry.pattern} {entry.dtype}: "
        f"{' > '.join(entry.order)} ({entry.source})"
    )


def order_from_rows(rows: list[dict], device: str, source: str) -> list[Calibration]:
    """Measured entries from benchmark rows that timed several backends on the same cells:
    per (pattern, dtype, causal, train), backends ordered by their mean fraction of the
    fastest backend's TFLOP/s over the cells where they ran (a failed cell counts 0)."""
    groups: dict[tuple, dict[tuple, dict[str, float]]] = {}
    for r in rows:
        if r.get("backend_requested", "auto") == "auto":
            continue
        key = (r["pattern"], r["dtype"], r["causal"], r["mode"] != "fwd")
        cell = (r["variant"], r["seq_len"], r["batch"], r["head_dim"], r["mode"], r["scope"])
        groups.setdefault(key, {}).setdefault(cell, {})[r["backend_requested"]] = r.get(
            "tflops", 0.0
        )
    out = []
    for (pattern, dtype, causal, train), cells in sorted(groups.items()):
        names = sorted({b for c in cells.values() for b in c})
        if len(names) < 2:
            continue
        score = dict.fromkeys(names, 0.0)
        for measured in cells.values():
            best = max(measured.values()) or 1.0
            for b in names:
                score[b] += measured.get(b, 0.0) / best / len(cells)
        order = tuple(sorted(names, key=lambda b: -score[b]))
        summary = ", ".join(f"{b} {score[b]:.2f}" for b in order)
        out.append(
            Calibration(
                _gpu_key(device),
                pattern,
                dtype,
                order,
                f"{source}; mean fraction of the best: {summary}",
                causal,
                train,
            )
        )
    return out


def _gpu_key(device: str) -> str:
    """'NVIDIA H200' -> 'H200': the part that names the model, matched as a substring."""
    return device.removeprefix("NVIDIA ").strip()
