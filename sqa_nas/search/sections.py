"""The sections of a search space file, one pydantic model each (`model`, `search`,
`constraints`, `sampler`, `budget`, `execution`); `space.SearchSpec` holds them and checks
what spans sections. Every key is validated here; unknown keys are errors naming the path."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from sqa_nas.analytics import MAX_SEQ_LEN, ModelCost
from sqa_nas.attention import BlockSparseLayout
from sqa_nas.errors import first_error
from sqa_nas.model import MAX_LAYERS
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
SeqLen = Annotated[int, Field(gt=0, le=MAX_SEQ_LEN)]
MAX_SEEDS = 100  # seeds a trial trains with: repeats, not a sweep (each is a whole training)
MAX_REPEATS = 10_000  # calls a throughput round queues (a pair of CUDA events each)
PositiveNumber = Annotated[float, Field(gt=0)]


class Section(BaseModel):
    """A section of the file: frozen, unknown keys refused, values never coerced."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ModelSection(Section):
    """The fixed part of the model; ``searched`` lists model fields searched too."""

    d_model: Positive = 64
    n_layers: Annotated[int, Field(gt=0, le=MAX_LAYERS)] = 4
    n_heads: Positive = 8
    head_dim: Positive | None = None
    ffn_dim: Positive = 192
    vocab_size: Positive | None = None  # None: the data's vocabulary
    causal: bool = True
    seq_len: SeqLen = 128
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
    # torch.compile the blocks on GPU: true, false, or auto (each trial weighs the compile
    # cost of its new block shapes against the time it saves; `sqa_nas.compiling.decide`)
    compile: bool | Literal["auto"] = "auto"
    eval_batches: Positive = 8
    eval_batch_size: Positive | None = None  # default: batch_size

    @model_validator(mode="after")
    def _default_steps(self) -> TrainBudget:
        if self.steps is None and self.tokens is None and self.seconds is None:
            object.__setattr__(self, "steps", 50)
        return self


class ThroughputBudget(Section):
    """How a trial's throughput is timed (`sqa_nas.throughput`): batch, length, warm-up
    calls, calls per round, fwd or fwd+bwd, and when the rounds (paired with the same-shape
    MHA model) stop: both 95% intervals within `ci_target`, or `max_seconds`."""

    seq_len: SeqLen | None = None  # default: model.seq_len
    batch_size: Positive = 8
    warmup: Positive = 2  # at least one: first calls pay one-time initialisation
    repeats: Annotated[int, Field(gt=0, le=MAX_REPEATS)] = 5  # calls per round; their median
    mode: Literal["fwd", "fwd+bwd"] = "fwd+bwd"
    ci_target: Annotated[float, Field(gt=0, lt=1)] = 0.03  # relative 95% half-width
    max_seconds: PositiveNumber = 20.0  # then the trial is flagged noisy_throughput


class EarlyStopping(Section):
    """Multi-fidelity search (`sqa_nas.search.asha`): ``mo_asha`` trains a trial to rungs of
    `min_tokens` * eta^k tokens (then the full budget) and continues it only while it is in
    the top 1/eta of the trials at its rung by non-dominated sorting; ``none`` trains every
    trial to the full budget. Paused trials keep a checkpoint in `checkpoint_dir` (default:
    ``runs/STUDY/checkpoints``), which every worker must read (a shared path on a cluster)."""

    scheduler: Literal["none", "mo_asha"] = "none"
    eta: Annotated[int, Field(ge=2)] = 3
    min_tokens: Positive | None = None
    checkpoint_dir: str | None = None

    def rungs(self, tokens: int, step_tokens: int = 1) -> list[int]:
        """The ladder for a full budget of `tokens`: min_tokens * eta^k below it, then it.
        Training stops at whole steps of `step_tokens` (batch x sequence length), so a rung
        that ends at the full budget's step is the full budget and is left out: 200M tokens
        with min_tokens 200M // 9 would otherwise end with rungs at 199,999,998 and at
        200,000,000, the same 3,052 steps of 65,536 tokens."""
        last_step = -(-tokens // step_tokens)
        ladder, at = [], self.min_tokens or tokens
        while -(-at // step_tokens) < last_step:
            ladder.append(at)
            at *= self.eta
        return ladder + [tokens]


class Budget(Section):
    """How many trials, the search's wall-clock limit, each trial's time limit and budgets."""

    n_trials: Positive = 10
    max_wall_seconds: PositiveNumber | None = None
    trial_timeout_s: PositiveNumber = 1800
    # Every trial trains with these many seeds (weights and data order, the same seeds for
    # every trial: common random numbers); its val_loss is their mean, with their std.
    seeds: Annotated[int, Field(gt=0, le=MAX_SEEDS)] = 1
    # The study's noise floor: its first baseline trains with this many seeds (>= 2; 0: off)
    # and the study stores the spread (`noise`); auto: 3 on a GPU, off on the CPU.
    noise_seeds: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    train: TrainBudget = TrainBudget()
    throughput: ThroughputBudget = ThroughputBudget()
    early_stopping: EarlyStopping = EarlyStopping()

    @model_validator(mode="after")
    def _check(self) -> Budget:
        if self.noise_seeds == 1:
            raise ValueError("noise_seeds: 1 seed measures no spread; use 0 (off), >= 2 or auto")
        if isinstance(self.noise_seeds, int) and self.noise_seeds > MAX_SEEDS:
            raise ValueError(f"noise_seeds: {self.noise_seeds:,} is more than {MAX_SEEDS} seeds")
        stopping, train = self.early_stopping, self.train
        if stopping.scheduler == "mo_asha":
            if train.tokens is None or train.steps is not None or train.seconds is not None:
                raise ValueError(
                    "early_stopping: mo_asha needs the budget in train.tokens (and no steps "
                    "or seconds): its rungs are token counts"
                )
            if stopping.min_tokens is None or stopping.min_tokens >= train.tokens:
                raise ValueError(
                    f"early_stopping.min_tokens: give a number below train.tokens "
                    f"({train.tokens:,}), the tokens of the first rung"
                )
            if self.seeds > 1:
                raise ValueError(
                    "early_stopping: mo_asha trains one seed per trial; use seeds: 1 and "
                    "`sqa-nas confirm` for repeats"
                )
        return self


class RaySection(Section):
    """The Ray cluster and what each trial asks of it."""

    address: str | None = None  # None: start a local Ray instance on loopback
    # None: 1 / execution.trials_per_gpu (1 GPU by default); a fraction shares a GPU
    gpus_per_trial: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    cpus_per_trial: PositiveNumber = 1.0
    max_concurrent: Positive | None = None
    max_retries: Annotated[int, Field(ge=0)] = 2
    include_dashboard: bool = False


class Execution(Section):
    """Where trials run: the local executor or Ray, on which device, and how many trials train
    on one GPU at once (`trials_per_gpu`; each still times its throughput alone, see
    `sqa_nas.gpu_share`)."""

    executor: Literal["local", "ray"] = "local"
    workers: Positive | None = None  # local: default trials_per_gpu per visible GPU, else 1
    trials_per_gpu: Positive = 1  # local: workers per GPU; Ray: gpus_per_trial 1 / this
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray: RaySection = RaySection()

    @model_validator(mode="after")
    def _check(self) -> Execution:
        k, asked = self.trials_per_gpu, self.ray.gpus_per_trial
        if k > 1 and self.workers is not None:
            raise ValueError(
                f"trials_per_gpu: {k} starts {k} local workers per GPU, but workers is "
                f"also set ({self.workers}); set one of execution.workers and "
                "execution.trials_per_gpu"
            )
        # Consistent: a share that puts k trials on a GPU (0.3 and 0.33 both fit 3).
        if k > 1 and asked is not None and (asked == 0 or int(1 / asked + 1e-6) != k):
            raise ValueError(
                f"trials_per_gpu: {k} means ray.gpus_per_trial 1/{k}, but "
                f"ray.gpus_per_trial is {asked:g}; set one of them"
            )
        return self

    @property
    def ray_gpus_per_trial(self) -> float:
        """GPUs each Ray trial asks for: `ray.gpus_per_trial`, else 1 / `trials_per_gpu`,
        rounded down to Ray's resource step of 0.0001 so that that many fit on a GPU
        (Ray's docs: "the precision of the fractional resource requirement is 0.0001")."""
        if self.ray.gpus_per_trial is not None:
            return float(self.ray.gpus_per_trial)
        return math.floor(10_000 / self.trials_per_gpu) / 10_000
