"""The sections of a search space file, one pydantic model each (`model`, `search`,
`constraints`, `sampler`, `budget`, `execution`); `space.SearchSpec` holds them and checks
what spans sections. Every key is validated here; unknown keys are errors naming the path."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from sqa_nas.analytics import ModelCost
from sqa_nas.attention import BlockSparseLayout
from sqa_nas.errors import first_error
from sqa_nas.registry import HEAD_COUNT
from sqa_nas.search.choices import MaskPattern

Objective = Literal[
    "val_loss",
    "throughput_tokens_per_s",
    "speedup_vs_mha",
    "kv_cache_bytes",
    "params",
    "attention_flops",
]
HeadCount = int | str  # a string is checked against registry.HEAD_COUNT
Positive = Annotated[int, Field(gt=0)]
PositiveNumber = Annotated[float, Field(gt=0)]


class Section(BaseModel):
    """A section of the file: frozen, unknown keys refused, values never coerced."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ModelSection(Section):
    """The fixed part of the model; ``searched`` lists model fields searched too."""

    d_model: Positive = 64
    n_layers: Positive = 4
    n_heads: Positive = 8
    head_dim: Positive | None = None
    ffn_dim: Positive = 192
    vocab_size: Positive | None = None  # None: the data's vocabulary
    causal: bool = True
    seq_len: Positive = 128
    rope_theta: PositiveNumber | None = 10_000.0
    tie_embeddings: bool = True
    searched: dict[
        Literal["ffn_dim", "rope_theta", "tie_embeddings"],
        Annotated[list[Any], Field(min_length=1)],
    ] = {}

    @model_validator(mode="after")
    def _check(self) -> ModelSection:
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"n_heads: {self.n_heads} does not divide d_model={self.d_model}"
                " (or set model.head_dim)"
            )
        fixed = self.model_dump(exclude={"searched"})
        for key, values in self.searched.items():  # each searched value as the field takes it
            for i, value in enumerate(values):
                try:
                    ModelSection.model_validate({**fixed, key: value})
                except ValidationError as exc:
                    message = first_error(exc).split(": ", 1)[-1]
                    raise ValueError(f"searched.{key}[{i}]: {value!r}: {message}") from None
        return self

    @property
    def head_dim_(self) -> int:
        """The head dimension in effect: `head_dim`, else d_model // n_heads."""
        return self.head_dim or self.d_model // self.n_heads


class SearchSection(Section):
    """What a layer may be: head counts, mask patterns and sizes, backends, and how layers
    share choices (`tying`: per_layer, groups of `group_size`, or all)."""

    n_q_heads: Annotated[list[HeadCount], Field(min_length=1)] = ["H", "H/2", "H/4"]
    n_kv_heads: Annotated[list[HeadCount], Field(min_length=1)] = ["H", "H/2", "H/4", 1]

    @model_validator(mode="before")
    @classmethod
    def _head_counts(cls, data: Any) -> Any:
        for key in ("n_q_heads", "n_kv_heads"):
            values = data.get(key) if isinstance(data, dict) else None
            for i, v in enumerate(values if isinstance(values, list) else []):
                if isinstance(v, str) and not HEAD_COUNT.match(v):
                    raise ValueError(
                        f"{key}[{i}]: {v!r} is not a head count: an integer, or "
                        "H, H/k, mH/k with whole m, k >= 1 (H = model.n_heads)"
                    )
        return data

    allow_reverse: bool = False  # also offer rSQA pairs (H_q < H_kv)
    patterns: Annotated[list[MaskPattern], Field(min_length=1)] = ["dense"]
    windows: list[Annotated[int, Field(ge=0)]] = []
    global_tokens: list[Positive] = [4]
    block_sparse: BlockSparseLayout | None = None
    backends: Annotated[list[str], Field(min_length=1)] = ["auto"]
    tying: Literal["per_layer", "groups", "all"] = "per_layer"
    group_size: Positive | None = None

    @model_validator(mode="after")
    def _check(self) -> SearchSection:
        if {"window", "flex"} & set(self.patterns) and not self.windows:
            raise ValueError("windows: patterns window/flex need at least one window size")
        if self.tying == "groups" and self.group_size is None:
            raise ValueError("group_size: tying 'groups' needs group_size")
        if self.tying != "groups" and self.group_size is not None:
            raise ValueError(f"group_size: only used with tying 'groups', not '{self.tying}'")
        return self


class Constraints(Section):
    """Checked analytically before a trial trains; violators are recorded infeasible."""

    max_kv_cache_bytes: PositiveNumber | None = None  # per token, all layers, bf16
    max_kv_cache_vs_mha: PositiveNumber | None = None  # fraction of the MHA model's
    max_params: PositiveNumber | None = None
    max_attention_flops: PositiveNumber | None = None  # per token, forward, at seq_len
    max_attention_flops_vs_mha: PositiveNumber | None = None

    def violations(self, cost: ModelCost, mha: ModelCost) -> list[str]:
        """One line per constraint `cost` breaks ("max_params: 1.2e+06 > 1e+06"); `mha` is the
        same-shape MHA model's cost, for the ``*_vs_mha`` limits."""
        checks = [
            ("max_kv_cache_bytes", cost.kv_bytes),
            ("max_kv_cache_vs_mha", cost.kv_bytes / mha.kv_bytes),
            ("max_params", cost.params),
            ("max_attention_flops", cost.attn_flops),
            ("max_attention_flops_vs_mha", cost.attn_flops / mha.attn_flops),
        ]
        return [
            f"{name}: {value:.4g} > {getattr(self, name):.4g}"
            for name, value in checks
            if getattr(self, name) is not None and value > getattr(self, name)
        ]

    def values(self, cost: ModelCost, mha: ModelCost) -> dict[str, float]:
        """Optuna constraint values (<= 0 feasible): value - limit, relative to the limit."""
        measured = {
            "max_kv_cache_bytes": cost.kv_bytes,
            "max_kv_cache_vs_mha": cost.kv_bytes / mha.kv_bytes,
            "max_params": cost.params,
            "max_attention_flops": cost.attn_flops,
            "max_attention_flops_vs_mha": cost.attn_flops / mha.attn_flops,
        }
        return {
            k: measured[k] / getattr(self, k) - 1 for k in measured if getattr(self, k) is not None
        }


class SamplerSection(Section):
    """Which Optuna sampler (None: NSGA-II for several objectives, TPE for one) and its seed."""

    name: Literal["nsga2", "tpe", "random", "grid", "gp"] | None = None  # None: by objectives
    population: Annotated[int, Field(ge=2)] = 8  # NSGA-II population
    seed: int | None = 0


class TrainBudget(Section):
    """Training per trial: steps, tokens or seconds (50 steps when none is set), and the
    optimizer and evaluation settings."""

    steps: Positive | None = None
    tokens: Positive | None = None
    seconds: PositiveNumber | None = None
    batch_size: Positive = 8
    lr: PositiveNumber = 3e-3
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    warmup_steps: Annotated[int, Field(ge=0)] = 10
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    grad_clip: PositiveNumber | None = 1.0
    compile: bool = False  # torch.compile the model on GPU (pays off on long budgets)
    eval_batches: Positive = 8
    eval_batch_size: Positive | None = None  # default: batch_size

    @model_validator(mode="after")
    def _default_steps(self) -> TrainBudget:
        if self.steps is None and self.tokens is None and self.seconds is None:
            object.__setattr__(self, "steps", 50)
        return self


class ThroughputBudget(Section):
    """How a trial's throughput is timed: batch, length, warm-up calls, repeats, fwd or fwd+bwd."""

    seq_len: Positive | None = None  # default: model.seq_len
    batch_size: Positive = 8
    warmup: Positive = 2  # at least one: first calls pay one-time initialisation
    repeats: Positive = 5
    mode: Literal["fwd", "fwd+bwd"] = "fwd+bwd"


class Budget(Section):
    """How many trials, the search's wall-clock limit, each trial's time limit and budgets."""

    n_trials: Positive = 10
    max_wall_seconds: PositiveNumber | None = None
    trial_timeout_s: PositiveNumber = 1800
    train: TrainBudget = TrainBudget()
    throughput: ThroughputBudget = ThroughputBudget()


class RaySection(Section):
    """The Ray cluster and what each trial asks of it."""

    address: str | None = None  # None: start a local Ray instance on loopback
    gpus_per_trial: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    cpus_per_trial: PositiveNumber = 1.0
    max_concurrent: Positive | None = None
    max_retries: Annotated[int, Field(ge=0)] = 2
    include_dashboard: bool = False


class Execution(Section):
    """Where trials run: the local executor or Ray, on which device."""

    executor: Literal["local", "ray"] = "local"
    workers: Positive | None = None  # local: default one per visible GPU, else 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray: RaySection = RaySection()
