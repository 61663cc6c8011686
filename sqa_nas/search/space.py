"""Search spaces: YAML -> a validated `SearchSpec` -> Optuna distributions and model configs.

Every key is checked by pydantic; unknown keys and bad values are errors naming the key path
(``model.n_heads: 7 does not divide d_model=64``). `search_spaces/reference.yaml` shows and
documents every key.

Per-layer choices become categorical parameters per *unit* (a layer, a group of consecutive
layers, or all layers, by ``search.tying``): ``<unit>.heads`` ("H_q/H_kv", only valid pairs),
``<unit>.mask`` ("dense", "window:W", "flex:W+G", "block_sparse") and ``<unit>.backend`` when
several backends are searched. Optuna needs static choice lists, so invalid head pairs are
removed up front, and the seed variants' own choices are always added.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sqa_nas.analytics import ModelCost, analyze, mha_baseline
from sqa_nas.attention import BlockSparseLayout
from sqa_nas.data import DataSpec
from sqa_nas.errors import UserError, first_error
from sqa_nas.model import ModelConfig
from sqa_nas.registry import HEAD_COUNT, get_backend, get_variant, heads_of
from sqa_nas.search.choices import HeadsChoice, MaskChoice, MaskPattern
from sqa_nas.search.records import OBJECTIVES, Direction

Objective = Literal["val_loss", "throughput_tokens_per_s", "speedup_vs_mha", "kv_cache_bytes",
                    "params", "attention_flops"]
HeadCount = int | str  # a string is checked against registry.HEAD_COUNT
Positive = Annotated[int, Field(gt=0)]
PositiveNumber = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ModelSection(_Section):
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
    searched: dict[Literal["ffn_dim", "rope_theta", "tie_embeddings"],
                   Annotated[list[Any], Field(min_length=1)]] = {}

    @model_validator(mode="after")
    def _check(self) -> ModelSection:
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"n_heads: {self.n_heads} does not divide d_model={self.d_model}"
                             " (or set model.head_dim)")
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
        return self.head_dim or self.d_model // self.n_heads


class SearchSection(_Section):
    n_q_heads: Annotated[list[HeadCount], Field(min_length=1)] = ["H", "H/2", "H/4"]
    n_kv_heads: Annotated[list[HeadCount], Field(min_length=1)] = ["H", "H/2", "H/4", 1]

    @model_validator(mode="before")
    @classmethod
    def _head_counts(cls, data: Any) -> Any:
        for key in ("n_q_heads", "n_kv_heads"):
            values = data.get(key) if isinstance(data, dict) else None
            for i, v in enumerate(values if isinstance(values, list) else []):
                if isinstance(v, str) and not HEAD_COUNT.match(v):
                    raise ValueError(f"{key}[{i}]: {v!r} is not a head count: an integer, or "
                                     "H, H/k, mH/k with whole m, k >= 1 (H = model.n_heads)")
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


class Constraints(_Section):
    """Checked analytically before a trial trains; violators are recorded infeasible."""

    max_kv_cache_bytes: PositiveNumber | None = None  # per token, all layers, bf16
    max_kv_cache_vs_mha: PositiveNumber | None = None  # fraction of the MHA model's
    max_params: PositiveNumber | None = None
    max_attention_flops: PositiveNumber | None = None  # per token, forward, at seq_len
    max_attention_flops_vs_mha: PositiveNumber | None = None

    def violations(self, cost: ModelCost, mha: ModelCost) -> list[str]:
        checks = [
            ("max_kv_cache_bytes", cost.kv_bytes),
            ("max_kv_cache_vs_mha", cost.kv_bytes / mha.kv_bytes),
            ("max_params", cost.params),
            ("max_attention_flops", cost.attn_flops),
            ("max_attention_flops_vs_mha", cost.attn_flops / mha.attn_flops),
        ]
        return [f"{name}: {value:.4g} > {getattr(self, name):.4g}"
                for name, value in checks
                if getattr(self, name) is not None and value > getattr(self, name)]

    def values(self, cost: ModelCost, mha: ModelCost) -> dict[str, float]:
        """Optuna constraint values (<= 0 feasible): value - limit, relative to the limit."""
        measured = {"max_kv_cache_bytes": cost.kv_bytes,
                    "max_kv_cache_vs_mha": cost.kv_bytes / mha.kv_bytes,
                    "max_params": cost.params, "max_attention_flops": cost.attn_flops,
                    "max_attention_flops_vs_mha": cost.attn_flops / mha.attn_flops}
        return {k: measured[k] / getattr(self, k) - 1 for k in measured
                if getattr(self, k) is not None}


class SamplerSection(_Section):
    name: Literal["nsga2", "tpe", "random", "grid", "gp"] | None = None  # None: by objectives
    population: Annotated[int, Field(ge=2)] = 8  # NSGA-II population
    seed: int | None = 0


class TrainBudget(_Section):
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


class ThroughputBudget(_Section):
    seq_len: Positive | None = None  # default: model.seq_len
    batch_size: Positive = 8
    warmup: Positive = 2  # at least one: first calls pay one-time initialisation
    repeats: Positive = 5
    mode: Literal["fwd", "fwd+bwd"] = "fwd+bwd"


class Budget(_Section):
    n_trials: Positive = 10
    max_wall_seconds: PositiveNumber | None = None
    trial_timeout_s: PositiveNumber = 1800
    train: TrainBudget = TrainBudget()
    throughput: ThroughputBudget = ThroughputBudget()


class RaySection(_Section):
    address: str | None = None  # None: start a local Ray instance on loopback
    gpus_per_trial: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    cpus_per_trial: PositiveNumber = 1.0
    max_concurrent: Positive | None = None
    max_retries: Annotated[int, Field(ge=0)] = 2
    include_dashboard: bool = False


class Execution(_Section):
    executor: Literal["local", "ray"] = "local"
    workers: Positive | None = None  # local: default one per visible GPU, else 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray: RaySection = RaySection()


class SearchSpec(_Section):
    study: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    model: ModelSection = ModelSection()
    search: SearchSection = SearchSection()
    constraints: Constraints = Constraints()
    objectives: Annotated[list[Objective], Field(min_length=1)] = [
        "val_loss", "throughput_tokens_per_s"]
    sampler: SamplerSection = SamplerSection()
    seed_trials: list[str] = ["MHA", "GQA", "SQA", "sSQA", "xSQA"]
    budget: Budget = Budget()
    data: DataSpec = DataSpec(kind="embedded")
    storage: str | None = None
    execution: Execution = Execution()

    @field_validator("objectives")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"an objective is listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> SearchSpec:
        m, s = self.model, self.search
        for w in s.windows:
            if w >= m.seq_len:
                raise ValueError(f"search.windows: {w} is not below model.seq_len={m.seq_len}"
                                 " (a window that wide is dense attention)")
        if s.group_size is not None and m.n_layers % s.group_size:  # set iff tying 'groups'
            raise ValueError(f"search.group_size: {s.group_size} does not divide "
                             f"model.n_layers={m.n_layers}")
        if s.block_sparse is not None and s.block_sparse.block_size > m.seq_len:
            raise ValueError(f"search.block_sparse.block_size: {s.block_sparse.block_size} "
                             f"exceeds model.seq_len={m.seq_len}")
        for field in ("n_q_heads", "n_kv_heads"):
            for i, h in enumerate(getattr(s, field)):
                n = heads_of(h, m.n_heads, exact=True)
                if n is None:
                    raise ValueError(f"search.{field}[{i}]: {h!r} is not a whole number of "
                                     f"heads in 1..{m.n_heads} at model.n_heads={m.n_heads}")
        for i, name in enumerate(self.seed_trials):
            try:
                get_variant(name)
            except UserError as exc:
                raise ValueError(f"seed_trials[{i}]: {exc}") from None
        for i, name in enumerate(s.backends):
            if name != "auto":
                try:
                    get_backend(name)
                except UserError as exc:
                    raise ValueError(f"search.backends[{i}]: {exc}") from None
        if not self.head_choices():
            raise ValueError("search: no valid (n_q_heads, n_kv_heads) pair: H_q must be a "
                             "multiple of H_kv (or allow_reverse with H_kv a multiple of H_q)")
        if self.data.root.kind == "mqar" and "val_loss" not in self.objectives:
            pass  # accuracy is still recorded
        for o in ("kv_cache_bytes", "params", "attention_flops"):
            if self.objectives == [o]:
                raise ValueError(f"objectives: {o} alone is analytic: add a measured objective "
                                 "(val_loss or throughput_tokens_per_s)")
        return self

    # ------------------------------------------------------------------ derived structure
    @property
    def study_name(self) -> str:
        return self.study or "search"

    @property
    def directions(self) -> list[Direction]:
        return [OBJECTIVES[o] for o in self.objectives]

    def units(self) -> list[tuple[str, list[int]]]:
        """(unit name, its layers): per layer, groups of consecutive layers, or all."""
        n = self.model.n_layers
        if self.search.tying == "all":
            return [("all", list(range(n)))]
        if self.search.tying == "groups":
            g = self.search.group_size
            assert g is not None  # SearchSection requires it with tying 'groups'
            return [(f"layers{a}-{a + g - 1}", list(range(a, a + g))) for a in range(0, n, g)]
        return [(f"layer{i}", [i]) for i in range(n)]

    def head_choices(self) -> list[str]:
        h = self.model.n_heads
        qs = sorted({q for x in self.search.n_q_heads
                     if (q := heads_of(x, h, exact=True)) is not None}, reverse=True)
        kvs = sorted({kv for x in self.search.n_kv_heads
                      if (kv := heads_of(x, h, exact=True)) is not None}, reverse=True)
        pairs = [(q, kv) for q, kv in itertools.product(qs, kvs)
                 if (q >= kv and q % kv == 0)
                 or (self.search.allow_reverse and q < kv and kv % q == 0)]
        choices = [str(HeadsChoice(q, kv)) for q, kv in pairs]
        for heads, _ in self._seed_choices():
            if str(heads) not in choices:
                choices.append(str(heads))
        return choices

    def mask_choices(self) -> list[str]:
        s = self.search
        out: list[str] = []
        for p in s.patterns:
            sizes = ([{}] if p in ("dense", "block_sparse") else
                     [{"window": w} for w in s.windows] if p == "window" else
                     [{"window": w, "global_tokens": g}
                      for w in s.windows for g in s.global_tokens])
            out += [str(MaskChoice.of(p, **kw)) for kw in sizes]
        for _, mask in self._seed_choices():
            if str(mask) not in out:
                out.append(str(mask))
        return out

    def _seed_choices(self) -> list[tuple[HeadsChoice, MaskChoice]]:
        """(heads, mask) of each seed variant at this model's H; windowed variants take the
        first searched window (their window is a free parameter)."""
        w = self.search.windows[0] if self.search.windows else self.model.seq_len // 4
        g = self.search.global_tokens[0]
        out = []
        for name in self.seed_trials:
            v = get_variant(name)
            mask = MaskChoice.of(v.pattern, window=w, global_tokens=g)
            out.append((HeadsChoice(*v.heads(self.model.n_heads)), mask))
        return out

    def distributions(self) -> dict[str, optuna.distributions.CategoricalDistribution]:
        cat = optuna.distributions.CategoricalDistribution
        out: dict[str, optuna.distributions.CategoricalDistribution] = {}
        for name, values in self.model.searched.items():
            out[f"model.{name}"] = cat(values)
        heads, masks = self.head_choices(), self.mask_choices()
        for unit, _ in self.units():
            out[f"{unit}.heads"] = cat(heads)
            if len(masks) > 1:
                out[f"{unit}.mask"] = cat(masks)
            if len(self.search.backends) > 1:
                out[f"{unit}.backend"] = cat(self.search.backends)
        return out

    def cardinality(self) -> int:
        return math.prod(len(d.choices) for d in self.distributions().values())

    def seed_params(self) -> list[tuple[str, dict[str, Any]]]:
        """(variant name, params) for each seed trial: the paper's baselines."""
        dists = self.distributions()
        out = []
        for name, (heads, mask) in zip(self.seed_trials, self._seed_choices()):
            params: dict[str, Any] = {}
            for unit, _ in self.units():
                params[f"{unit}.heads"] = str(heads)
                if f"{unit}.mask" in dists:
                    params[f"{unit}.mask"] = str(mask)
                if f"{unit}.backend" in dists:
                    params[f"{unit}.backend"] = self.search.backends[0]
            for key in self.model.searched:
                params[f"model.{key}"] = dists[f"model.{key}"].choices[0]
            out.append((name, params))
        return out

    # ------------------------------------------------------------------ params -> model
    def build_config(self, params: dict[str, Any], vocab_size: int) -> ModelConfig:
        """The model a trial's params describe (vocab from the data unless set)."""
        m = self.model
        fields = m.model_dump(exclude={"searched", "seq_len", "vocab_size"})
        fields["vocab_size"] = m.vocab_size or vocab_size
        for key in m.searched:
            fields[key] = params[f"model.{key}"]
        masks = self.mask_choices()
        layers: list[dict[str, Any]] = [{} for _ in range(m.n_layers)]
        for unit, idx in self.units():
            heads = HeadsChoice.parse(params[f"{unit}.heads"])
            mask = MaskChoice.parse(params.get(f"{unit}.mask", masks[0]))
            layer: dict[str, Any] = {"n_q_heads": heads.n_q, "n_kv_heads": heads.n_kv,
                                     **mask.layer_fields(self._block_layout(mask))}
            backend = params.get(f"{unit}.backend", self.search.backends[0])
            if backend != "auto":
                layer["backend"] = backend
            for i in idx:
                layers[i] = layer
        return ModelConfig(**fields, layers=layers)

    def _block_layout(self, mask: MaskChoice) -> dict[str, Any] | None:
        """The block layout a block-sparse choice uses: the searched one, else blocks of
        seq_len / 8 tokens (1..64)."""
        if mask.pattern != "block_sparse":
            return None
        seq_len = self.model.seq_len
        layout = (self.search.block_sparse
                  or BlockSparseLayout(block_size=max(1, min(64, seq_len // 8))))
        return layout.model_dump()

    def mha_cost(self, config: ModelConfig) -> ModelCost:
        return analyze(mha_baseline(config), self.model.seq_len)

    def space_hash(self) -> str:
        """What makes trials comparable: the model, the choices, objectives, data and the
        per-trial budget (not n_trials, storage, sampler or execution)."""
        keep = self.model_dump(mode="json", include={"model", "search", "objectives", "data",
                                                     "constraints"})
        keep["budget"] = self.budget.model_dump(mode="json", include={"train", "throughput"})
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def parse_space(data: Any, source: str = "search space") -> SearchSpec:
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of sections (model, search, ...), got "
                        f"{type(data).__name__}")
    try:
        return SearchSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {first_error(exc)}") from None


def load_space(path: str | Path) -> SearchSpec:
    """Read and validate a YAML search space. Any problem is a `UserError` naming the file
    and the key path; YAML tags that would construct Python objects are refused."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    spec = parse_space(data, str(path))
    if spec.study is None:
        spec = spec.model_copy(update={"study": path.stem})
    return spec
