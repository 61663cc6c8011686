"""What a study stores, in one place: the contract between the search (which writes), and the
dashboard and export (which read). Plain Optuna storage, so `optuna-dashboard` and
`optuna trials` open it too.

Study
  - metric names (`study.set_metric_names`) = the objective names, in order.
  - user attrs, small (`study_attrs.USER_ATTRS_BOUND`): ``sqa_nas`` {"format", "version"},
    ``space_hash``, ``objectives`` (names), ``corpus`` {"kind", "fingerprint"},
    ``compile_choice`` {device name: bool}, ``method`` (how trials are measured:
    `METHOD`), ``noise`` (`noise.Noise`: the study's measured noise floor),
    ``mha_reference`` (studies before paired timing).
  - records, Optuna artifacts beside the storage (`study_attrs`; format 1 kept them as user
    attrs): ``space`` (the resolved search space), ``units`` {unit: [layers]}, the corpus
    summary, one per run [`figures.RunStats`: the executor's and the driver's figures
    (in-trial fraction, NVML, training-step share)], ``confirm`` (the last `sqa-nas
    confirm`). `study_attrs.read_study_attrs` is their one reader.
Trial
  - params: per unit (``layer3``, ``layers0-3`` or ``all``): ``<unit>.heads`` = "H_q/H_kv",
    ``<unit>.mask`` = "dense" | "window:W" | "flex:W+G" | "block_sparse", ``<unit>.backend``.
  - user attrs: `TrialAttrs` (pydantic, one model per part: `Analytics`, `Metrics`,
    `Device`, `LayerRecord`, `Corpus`, `Timings`): the resolved model config, per-layer
    allocation, analytics, metrics, training curve, device, versions, corpus fingerprint,
    timings, failure reason. Written by `trial_attrs`, read by `trial_records`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeGuard

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sqa_nas.errors import UserError
from sqa_nas.search.choices import MaskChoice
from sqa_nas.search.storage import (
    check_readable,
    check_storage,
    check_study_name,
    default_storage,
    open_storage,
    storage_file,
)

FORMAT = 2  # 2: the large study records are artifacts (`study_attrs`)
READS_FORMATS = (1, 2)  # 1: every study record a user attr
# How trials are measured: 2 = paired throughput, common random numbers (1: before). Values
# measured one way never share a front with values measured the other.
METHOD = 2

Direction = Literal["minimize", "maximize"]  # an Optuna study direction

# objective name -> Optuna direction
OBJECTIVES: dict[str, Direction] = {
    "val_loss": "minimize",
    "throughput_tokens_per_s": "maximize",
    "speedup_vs_mha": "maximize",
    "kv_cache_bytes": "minimize",
    "params": "minimize",
    "attention_flops": "minimize",
}


class _Record(BaseModel):
    """A part of a trial's stored attrs. Unknown keys are kept (a newer writer, an executor's
    extras) and every field is optional: format-1 studies written before a field existed
    still load."""

    model_config = ConfigDict(extra="allow")

    def stored(self) -> dict[str, Any]:
        """This part as stored: the keys it was written or read with, JSON values."""
        return self.model_dump(mode="json", exclude_unset=True)

    def value(self, name: str) -> Any:
        """The value stored under `name` (a field or an unknown key), else None."""
        if name in type(self).model_fields:
            return getattr(self, name)
        return (self.model_extra or {}).get(name)


class Analytics(_Record):
    """Costs from the formulas (`sqa_nas.analytics.analyze`) at the space's seq_len."""

    params: int | None = None
    flops_per_token: float | None = None  # forward, whole model
    train_flops_per_token: float | None = None  # forward + backward
    attention_flops_per_token: float | None = None  # forward, Q K^T and P V only
    kv_cache_bytes_per_token: int | None = None  # all layers, bf16
    analytic_speedup_vs_mha: float | None = None  # forward FLOPs of MHA / this model's


class Metrics(_Record):
    """What the trial measured, plus the analytic objectives under their objective names."""

    val_loss: float | None = None  # token-weighted cross-entropy on held-out batches (mean
    val_loss_std: float | None = None  # over the trial's seeds, and their std: seeds >= 2)
    val_loss_seeds: list[float] | None = None  # one per seed, in `TrialAttrs.seeds` order
    perplexity: float | None = None  # exp(val_loss)
    accuracy: float | None = None  # next-token accuracy on the same tokens (seeds' mean)
    val_tokens: int | None = None
    throughput_tokens_per_s: float | None = None
    throughput_rel_ci95: float | None = None  # relative half-width of its 95% interval
    mha_throughput_tokens_per_s: float | None = None  # the same-shape MHA model, paired
    speedup_vs_mha: float | None = None  # paired with that MHA step (`sqa_nas.throughput`)
    speedup_ci95: tuple[float, float] | None = None
    throughput_rounds: int | None = None
    noisy_throughput: bool | None = None  # an interval stayed wider than the target
    train_steps: int | None = None
    train_tokens: int | None = None
    train_tokens_per_s: float | None = None  # achieved in the step loop
    kv_cache_bytes: int | None = None
    params: int | None = None
    attention_flops: float | None = None


class Device(_Record):
    """Where the trial ran; on Ray also its node and worker."""

    name: str | None = None  # GPU or CPU name: throughput compares within one name
    type: str | None = None  # cuda, cpu
    host: str | None = None
    node: str | None = None
    gpu: int | str | None = None  # CUDA index; on Ray the GPU ids, comma-separated
    ray_node_id: str | None = None
    node_ip: str | None = None
    worker_pid: int | None = None


class LayerRecord(_Record):
    """One layer as built (`sqa_nas.model.layer_dict`) and the backend it ran on."""

    n_q_heads: int
    n_kv_heads: int
    pattern: str | None = None  # dense, window, flex, block_sparse
    window: int | None = None
    global_tokens: int | None = None
    block_sparse: dict[str, Any] | None = None  # a BlockSparseLayout dump
    bias: bool | None = None
    backend: str | None = None  # what ran at the first forward on the device
    backend_reason: str | None = None

    @property
    def mask(self) -> MaskChoice:
        """The layer's mask as a search choice (pattern and sizes)."""
        return MaskChoice.of_layer(self.stored())


class Corpus(_Record):
    """Which data a trial trained on: its kind, fingerprint and token counts."""

    kind: str | None = None
    fingerprint: str | None = None
    tokens: dict[str, int] | int | None = None  # per split (train, val)


class Timings(_Record):
    """Seconds spent in each phase of the trial, and when training ran."""

    build_s: float | None = None
    compile_s: float | None = None  # deciding, compiling, warming the step
    throughput_s: float | None = None
    train_s: float | None = None
    train_window: tuple[float, float] | None = None  # train() ran from, to (time.time())
    train_windows: list[tuple[float, float]] | None = None  # each seed's, with several
    eval_s: float | None = None
    total_s: float | None = None
    window_wait_s: float | None = None  # of throughput_s: waiting to time alone (GPU shared)
    stepped_aside_s: float | None = None  # of train_s: paused for others' timing windows


class Rung(_Record):
    """A trial at one rung of the multi-fidelity scheduler (`budget.early_stopping`).

    decision: ``paused`` (waiting for a promotion, its checkpoint kept), ``promoted``
    (training on to the next rung), ``stopped`` (never promoted: the trial ended PRUNED
    here), ``baseline`` (a seed trial, trained to the full budget whatever its rank) or
    ``complete`` (the full budget)."""

    rung: int  # index in the study's ladder, `EarlyStopping.rungs`
    tokens: int  # training tokens seen when it was evaluated
    values: dict[str, float] = {}  # the objectives there (throughput: measured at rung 0)
    decision: Literal["paused", "promoted", "stopped", "baseline", "complete"] = "paused"


class TrialAttrs(_Record):
    """Everything a trial stores as Optuna user attrs (format 1: these field names are the
    keys). The trial writes it through `trial_attrs`; readers get it through
    `trial_records`; the driver adds the bookkeeping flags (driver ... reaped)."""

    model: dict[str, Any] | None = None  # ModelConfig.resolved(): rebuilds this model
    layers: list[LayerRecord] = []
    allocation: str = ""  # compact per-layer notation, e.g. "8/4 x2, 4/4 w64 x2"
    seed_variant: str | None = None  # "MHA", "xSQA", ... for baseline trials
    analytics: Analytics = Field(default_factory=Analytics)
    metrics: Metrics = Field(default_factory=Metrics)
    curve: list[tuple[int, int, float]] = []  # (step, tokens, train loss), subsampled
    device: Device = Field(default_factory=Device)
    versions: dict[str, str | int | None] = {}  # torch, cuda, cudnn, python, sqa_nas
    corpus: Corpus = Field(default_factory=Corpus)
    timings: Timings = Field(default_factory=Timings)
    compile: dict[str, Any] | None = None  # `compiling.CompileDecision.record()`
    seeds: list[int] = []  # weight-init and data-order seeds it trained with, in order
    layout: str | None = None  # `space.layout_key`: equal exactly for equal architectures
    duplicate_of: int | None = None  # an evaluated trial with the same layout: its values
    noise_trial: bool | None = None  # trained with several seeds for the study's `noise`
    rungs: list[Rung] = []  # multi-fidelity: where it was evaluated and what was decided
    checkpoint: str | None = None  # its latest checkpoint file, while a promotion may need it
    fail_reason: str | None = None  # why a trial is FAIL or PRUNED
    traceback: str | None = None  # the end of a failed trial's traceback
    infeasible: list[str] = []  # constraint violations of trials refused before training
    driver: dict[str, Any] | None = None  # {host, pid, proc_start, id} of its driver
    worker_deaths: int | None = None  # how often its worker or node died under it (Ray)
    lost: bool | None = None  # FAIL: its worker or node died under it (`Executor.failed`)
    retry_of: int | None = None  # the trial number this one re-runs
    interrupted: bool | None = None  # stopped by Ctrl-C, re-enqueued
    reaped: bool | None = None  # left RUNNING by a driver that is gone, re-enqueued


def trial_attrs(attrs: TrialAttrs) -> dict[str, Any]:
    """The user attrs a trial stores: the fields set on `attrs`, as JSON, under the
    format-1 keys (the one writer of a trial's record)."""
    return attrs.stored()


def parse_attrs(stored: dict[str, Any]) -> tuple[TrialAttrs, dict[str, str]]:
    """A trial's stored user attrs as `TrialAttrs`, and {key: problem} for top-level keys
    whose value did not parse (left out, so one odd trial never stops a reader)."""
    data, problems = dict(stored), dict[str, str]()
    for _ in range(len(data) + 1):
        try:
            return TrialAttrs.model_validate(data), problems
        except ValidationError as exc:
            for err in exc.errors():
                key = str(err["loc"][0]) if err["loc"] else ""
                problems.setdefault(key, f"{'.'.join(map(str, err['loc']))}: {err['msg']}")
                data.pop(key, None)
    return TrialAttrs(), problems


@dataclass
class TrialRecord:
    """One trial as the dashboard and export see it: Optuna's state, values and params, and
    its user attrs typed (`record.metrics.val_loss`, `record.analytics.params`)."""

    number: int
    state: str  # COMPLETE, FAIL, PRUNED, RUNNING, WAITING
    values: dict[str, float] | None
    params: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)  # the user attrs as stored
    datetime_start: datetime | None = None
    datetime_complete: datetime | None = None
    typed: TrialAttrs = field(init=False, repr=False, compare=False)
    problems: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.typed, self.problems = parse_attrs(self.attrs)

    @property
    def feasible(self) -> bool:
        """False when the trial was refused before training for violating a constraint."""
        return not self.typed.infeasible

    @property
    def seed_variant(self) -> str | None:
        """The variant name of a seed (baseline) trial, None for sampled trials."""
        return self.typed.seed_variant

    @property
    def allocation(self) -> str:
        """The compact per-layer notation, e.g. "8/4 x2, 4/4 w64 x2"."""
        return self.typed.allocation

    @property
    def layers(self) -> list[LayerRecord]:
        """Each layer as built, with the backend it ran on."""
        return self.typed.layers

    @property
    def model(self) -> dict[str, Any] | None:
        """The resolved `ModelConfig` dict that rebuilds this trial's model, if stored."""
        return self.typed.model

    @property
    def analytics(self) -> Analytics:
        """The trial's analytic costs."""
        return self.typed.analytics

    @property
    def metrics(self) -> Metrics:
        """What the trial measured."""
        return self.typed.metrics

    @property
    def device(self) -> Device:
        """Where the trial ran."""
        return self.typed.device

    @property
    def timings(self) -> Timings:
        """Seconds per phase of the trial."""
        return self.typed.timings

    @property
    def curve(self) -> list[tuple[int, int, float]]:
        """(step, tokens, train loss) points, subsampled."""
        return self.typed.curve

    @property
    def fail_reason(self) -> str | None:
        """Why the trial is FAIL or PRUNED, if it is."""
        return self.typed.fail_reason

    @property
    def infeasible(self) -> list[str]:
        """The constraint violations of a trial refused before training."""
        return self.typed.infeasible

    @property
    def gpu_type(self) -> str | None:
        """The GPU (or CPU) name it ran on: throughput compares within one name."""
        return self.typed.device.name

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to completion, None while either time is missing."""
        if self.datetime_start and self.datetime_complete:
            return (self.datetime_complete - self.datetime_start).total_seconds()
        return None


def of_gpu_type(
    records: list[TrialRecord], gpu_type: str | None
) -> tuple[list[TrialRecord], list[str]]:
    """(the records measured on `gpu_type`, all for None; the study's GPU types). Throughput
    is comparable only on one GPU type: an unknown one is a `UserError` naming those there."""
    types = sorted({r.gpu_type for r in records if r.gpu_type})
    if gpu_type is None:
        return list(records), types
    if gpu_type not in types:
        raise UserError(
            f"no trial ran on GPU type {gpu_type!r}; GPU types in this study: "
            f"{', '.join(map(repr, types)) or 'none recorded'}"
        )
    return [r for r in records if r.gpu_type == gpu_type], types


def objective_names(study: optuna.Study) -> list[str]:
    """The study's objectives in order: its metric names, else the ``objectives`` attr."""
    names = study.metric_names
    if names:
        return list(names)
    return list(study.user_attrs.get("objectives", []))


def trial_records(
    study: optuna.Study, known: dict[int, TrialRecord] | None = None
) -> list[TrialRecord]:
    """Every trial of `study` as a typed `TrialRecord` (the one reader of trial records);
    `values` by objective name, for COMPLETE trials only. `known`: finished trials' records
    by number, reused, not read again (a finished trial takes no more attributes), and
    those of the finished trials read now are added to it."""
    names = objective_names(study)
    try:
        trials = study.get_trials(deepcopy=False)
    except TypeError:  # Optuna sorts the trials by number: some number is not one
        trials = None
    if trials is None or any(type(t.number) is not int for t in trials):  # shown, exported
        raise UserError(
            f"study {study.study_name!r} holds a trial number that is not an integer: "
            "its storage was not written by Optuna"
        )
    cache: dict[int, TrialRecord] = {} if known is None else known
    out = [cache.get(t.number) or trial_record(t, names) for t in trials]
    cache.update({t.number: r for t, r in zip(trials, out) if t.state.is_finished()})
    return out


def trial_record(t: optuna.trial.FrozenTrial, names: list[str]) -> TrialRecord:
    """Trial `t` as a `TrialRecord`, its values named by `names` (the study's objectives)."""
    values = None
    if t.values is not None and t.state == optuna.trial.TrialState.COMPLETE:
        values = dict(zip(names, t.values))
    start, end = t.datetime_start, t.datetime_complete
    return TrialRecord(
        t.number, t.state.name, values, dict(t.params), dict(t.user_attrs), start, end
    )


def load_study(name: str, storage: str | None = None, *, write: bool = False) -> optuna.Study:
    """Open an existing sqa-nas study; `UserError` when its storage (or, without one, its
    name, which then names the default storage's folder) is malformed
    (`storage.check_storage`), the storage or the study does not exist, or it was written by
    an incompatible version. `write`: the caller writes to the study, so its storage must be
    writable. Nothing is created."""
    if storage is None:  # the name makes the path (runs/NAME): it must be a safe one
        check_study_name(name)
    url = check_storage(default_storage(name) if storage is None else storage)  # "" refused
    path = storage_file(url)
    if path is not None and not path.is_file():
        raise UserError(
            f"no study {name!r}: storage {url} does not exist (pass --storage, "
            f"or run `sqa-nas search` first)"
        )
    store = open_storage(url, write=write)
    try:
        study = optuna.load_study(study_name=name, storage=store)
    except KeyError:
        known = ", ".join(s.study_name for s in optuna.get_all_study_summaries(store)) or "none"
        raise UserError(f"no study {name!r} in {url}; studies there: {known}") from None
    check_readable(study, url)
    check_format(study, url)
    return study


def check_format(study: optuna.Study, where: str) -> None:
    """`UserError` unless `study` was written by sqa-nas in the record format this version
    reads; `where` names the storage in the message. A study without the ``sqa_nas`` mark
    and without trials was left half-created by a driver that stopped (`study.init_or_check`
    finishes it): the message says to rerun the search."""
    meta = study.user_attrs.get("sqa_nas")
    if meta is None:
        if not study.get_trials(deepcopy=False):
            raise UserError(
                f"study {study.study_name!r} in {where} was left half-created (its driver "
                "stopped while creating it): rerun the search command to finish it"
            )
        raise UserError(
            f"study {study.study_name!r} in {where} was not written by sqa-nas "
            "(no 'sqa_nas' attribute)"
        )
    if meta.get("format") not in READS_FORMATS:
        raise UserError(
            f"study {study.study_name!r} in {where} has format "
            f"{meta.get('format')} (sqa-nas {meta.get('version')}); this sqa-nas "
            f"reads formats {', '.join(map(str, READS_FORMATS))}: use a new study name or "
            "that version"
        )


def finite(x: Any) -> TypeGuard[float]:
    """True for an int or float that is neither infinite nor NaN."""
    return isinstance(x, int | float) and math.isfinite(x)
