"""Does every trial of a search space fit the device it runs on? Checked when the space is
validated (`space.parse_space`), before a study or anything else exists.

The space's most demanding trial is priced by `analytics.memory_estimate` (formulas only:
nothing is built or allocated) and compared with the memory of the device of the run:

- a GPU (``execution.device`` cuda, or auto with a GPU visible): the smallest visible GPU's
  total memory, divided among the trials that share it (`trials_per_gpu`, more local
  workers than GPUs, or a Ray fraction `gpus_per_trial`);
- the CPU: this machine's RAM (physical pages x page size), divided among local workers;
- a device that is not on this machine (a Ray cluster at `execution.ray.address`, or cuda
  asked for where no GPU is visible) or whose memory the driver does not tell:
  `NO_DEVICE_HOLDS`, so that a typo (a billion somewhere) is refused anyway.

The vocabulary is the one the space states (`model.vocab_size`, the data's ``vocab_size``,
256 for byte-level data); data whose vocabulary only loading tells (``hf``, ``tokens``
without ``vocab_size``) is priced at 256, and its logits may need more.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
import torch

from sqa_nas.analytics import (
    MemoryEstimate,
    format_bytes,
    memory_estimate,
    mha_baseline,
    param_count,
)
from sqa_nas.data import DataSpec
from sqa_nas.errors import UserError
from sqa_nas.machine import memory_bytes
from sqa_nas.model import ModelConfig
from sqa_nas.search.sections import Budget, Execution, ModelSection, Objective
from sqa_nas.search.utilisation import load_nvml, nvml_index, visible_entries

# More than any one GPU (an H200 holds 141 GB, a B300 288 GB) or common machine holds.
NO_DEVICE_HOLDS = 4 * 10**12
BYTE_VOCAB = 256  # embedded and text data: bytes


class SearchSpec(Protocol):
    """What this module reads of a search space: `space.SearchSpec` has it. Described here,
    not imported, because space.py calls `check_fits` while it validates."""

    @property
    def model(self) -> ModelSection: ...
    @property
    def data(self) -> DataSpec: ...
    @property
    def budget(self) -> Budget: ...
    @property
    def execution(self) -> Execution: ...
    @property
    def objectives(self) -> list[Objective]: ...
    def units(self) -> list[tuple[str, list[int]]]: ...
    def distributions(self) -> dict[str, optuna.distributions.CategoricalDistribution]: ...
    def build_config(self, params: dict[str, Any], vocab_size: int) -> ModelConfig: ...


@dataclass(frozen=True)
class Room:
    """The memory one trial may use, on which kind of device, in words for messages."""

    bytes: int
    device_type: str  # "cuda" or "cpu": sets the activation dtype of the estimate
    words: str  # "this machine's 24 GB of RAM"
    known: bool = True  # False: the device is not on this machine (`NO_DEVICE_HOLDS`)


def known_vocab(spec: SearchSpec) -> int:
    """The vocabulary the space states (`module docstring`), else `BYTE_VOCAB`."""
    data = spec.data.root
    return spec.model.vocab_size or getattr(data, "vocab_size", None) or BYTE_VOCAB


def largest_trial(spec: SearchSpec, device_type: str) -> tuple[dict[str, Any], MemoryEstimate]:
    """The params of the space's trial that needs the most memory on `device_type`, and its
    estimate. Every unit offers the same choices and memory adds up over layers, so the
    largest trial gives every unit one choice: each (heads, mask, backend) choice is priced
    with each combination of the searched model fields."""
    dists = spec.distributions()
    units = [u for u, _ in spec.units()]
    first = units[0] + "."
    per_unit = {k.removeprefix(first): d.choices for k, d in dists.items() if k.startswith(first)}
    searched = {k: d.choices for k, d in dists.items() if k.startswith("model.")}
    train, timed = spec.budget.train, spec.budget.throughput
    throughput = bool({"throughput_tokens_per_s", "speedup_vs_mha"} & set(spec.objectives))
    best: tuple[dict[str, Any], MemoryEstimate] | None = None
    for unit_choice in itertools.product(*per_unit.values()):
        for model_choice in itertools.product(*searched.values()):
            params = dict(zip(searched, model_choice))
            for unit in units:
                params |= {f"{unit}.{k}": v for k, v in zip(per_unit, unit_choice)}
            config = spec.build_config(params, known_vocab(spec))
            estimate = memory_estimate(
                config,
                spec.model.seq_len,
                train.batch_size,
                device_type=device_type,
                eval_batch_size=train.eval_batch_size,
                eval_batches=train.eval_batches,
                throughput_batch=timed.batch_size if throughput else None,
                throughput_seq_len=timed.seq_len,
                throughput_backward=timed.mode == "fwd+bwd",
                reference=mha_baseline(config) if throughput else None,
            )
            if best is None or estimate.total > best[1].total:
                best = params, estimate
    assert best is not None  # a unit has at least one choice of heads
    return best


def _decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)  # old pynvml: bytes


def gpu_memory(n: int) -> list[tuple[int | None, str]]:
    """(total bytes or None, name) of this process's CUDA devices 0..n-1, read through NVML
    (CUDA_VISIBLE_DEVICES mapped as `utilisation.GpuSampler` maps it), so that validating a
    space never starts CUDA in the driver (a context holds GPU memory for the whole search).
    Without NVML: through torch, which starts it."""
    try:
        nvml = load_nvml()
        nvml.nvmlInit()
    except Exception:  # no NVML (a trimmed install, no driver): ask CUDA itself
        return [(memory_bytes(f"cuda:{i}"), "a CUDA GPU") for i in range(n)]
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        uuids = [_decoded(nvml.nvmlDeviceGetUUID(h)) for h in handles]
        entries = visible_entries(os.environ.get("CUDA_VISIBLE_DEVICES"))
        entries = [str(i) for i in range(len(handles))] if entries is None else entries
        out: list[tuple[int | None, str]] = []
        for ordinal in range(n):
            index = nvml_index(entries[ordinal], uuids) if ordinal < len(entries) else None
            if index is None:  # a MIG slice, a typo: its size is not known here
                out.append((None, f"cuda:{ordinal}"))
            else:
                h = handles[index]
                out.append(
                    (
                        int(nvml.nvmlDeviceGetMemoryInfo(h).total),
                        _decoded(nvml.nvmlDeviceGetName(h)),
                    )
                )
        return out
    finally:
        nvml.nvmlShutdown()


def room(execution: Execution) -> Room:
    """The memory a trial of `execution` may use (see the module docstring)."""
    e = execution
    local = e.executor == "local" or e.ray.address is None
    gpus = torch.cuda.device_count() if e.device != "cpu" and local else 0
    if e.executor == "ray" and e.ray_gpus_per_trial == 0:
        gpus = 0  # CPU trials on the Ray workers
    found = gpu_memory(gpus)
    sizes = [size for size, _ in found]
    where = None  # where trials run when it is not a device of this machine
    if not local:
        where = "a Ray cluster's workers"
    elif e.device == "cuda" and gpus == 0:
        where = "a GPU, none visible here"
    elif None in sizes:
        where = "GPUs whose memory the driver does not tell"
    if where is not None:
        kind = "cpu" if e.device == "cpu" else "cuda"
        words = (
            f"the {format_bytes(NO_DEVICE_HOLDS)} that no one device holds (trials run on {where})"
        )
        return Room(NO_DEVICE_HOLDS, kind, words, known=False)
    if gpus:
        total, name = min((s, n) for s, n in found if s is not None)
        if len(set(sizes)) > 1:  # a trial may land on any of them: the smallest bounds it
            name += f", the smallest of {gpus}"
        if e.executor == "ray":
            share = min(1.0, e.ray_gpus_per_trial)
        else:
            share = 1 / (-(-e.workers // gpus) if e.workers else e.trials_per_gpu)
        words = f"this machine's {format_bytes(total)} GPU ({name})"
        if share < 1:
            words += f", {share:.2g} of it per trial"
        return Room(int(total * share), "cuda", words)
    ram = memory_bytes("cpu") or NO_DEVICE_HOLDS
    workers = (e.workers or 1) if e.executor == "local" else 1
    words = f"this machine's {format_bytes(ram)} of RAM"
    if workers > 1:
        words += f", shared by {workers} workers"
    return Room(ram // workers, "cpu", words)


def check_fits(spec: SearchSpec, source: str) -> MemoryEstimate:
    """The largest trial's estimate; `UserError` (naming the sizes behind it, the estimate
    and the limit) when it needs more than the device of the run holds."""
    space = room(spec.execution)
    params, estimate = largest_trial(spec, space.device_type)
    if estimate.total <= space.bytes:
        return estimate
    raise UserError(
        f"{source}: {_cause(spec, params, estimate)}: a trial needs ~"
        f"{format_bytes(estimate.total)} ({estimate.describe()}), more than "
        f"{space.words}"
    )


def _cause(spec: SearchSpec, params: dict[str, Any], estimate: MemoryEstimate) -> str:
    """The sizes behind the estimate's largest part, as the space's keys, with the model's
    widths (one of which may be the culprit)."""
    m, train, timed = spec.model, spec.budget.train, spec.budget.throughput
    config = spec.build_config(params, known_vocab(spec))
    widths = (
        f"(d_model {m.d_model:,}, n_layers {m.n_layers:,}, n_heads {m.n_heads:,}, head_dim "
        f"{m.head_dim_:,}, ffn_dim {config.ffn_dim:,}, vocabulary {config.vocab_size:,})"
    )
    if estimate.weights + estimate.gradients + estimate.optimizer > estimate.activations:
        return f"{param_count(config):,} parameters {widths}"
    if estimate.batch in ("throughput", "reference"):
        length = "budget.throughput.seq_len" if timed.seq_len else "model.seq_len"
        return (
            f"{length} {timed.seq_len or m.seq_len:,} x budget.throughput.batch_size "
            f"{timed.batch_size:,} {widths}"
        )
    if estimate.batch == "eval":
        batch = train.eval_batch_size or train.batch_size
        return (
            f"model.seq_len {m.seq_len:,} x eval batch {batch:,} x budget.train.eval_batches "
            f"{train.eval_batches:,} {widths}"
        )
    return f"model.seq_len {m.seq_len:,} x budget.train.batch_size {train.batch_size:,} {widths}"
