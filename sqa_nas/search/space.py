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
from typing import Annotated, Any

import optuna
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sqa_nas.analytics import MAX_BLOCKS, ModelCost, analyze, mha_baseline
from sqa_nas.attention import BlockSparseLayout
from sqa_nas.data import DataSpec
from sqa_nas.errors import UserError, first_error
from sqa_nas.model import ModelConfig
from sqa_nas.registry import get_backend, get_variant, heads_of
from sqa_nas.search.choices import HeadsChoice, MaskChoice
from sqa_nas.search.memory import check_fits
from sqa_nas.search.records import OBJECTIVES, Direction
from sqa_nas.search.sections import (
    Budget,
    Constraints,
    Execution,
    ModelSection,
    Objective,
    SamplerSection,
    SearchSection,
    Section,
)
from sqa_nas.search.storage import check_study_name
from sqa_nas.search.yamlfile import read_yaml


class SearchSpec(Section):
    """A validated search space file: its sections, plus the checks that span sections and
    what derives from them (the Optuna distributions, seed trials, params -> model)."""

    study: Annotated[str, AfterValidator(check_study_name)] | None = None
    model: ModelSection = ModelSection()
    search: SearchSection = SearchSection()
    constraints: Constraints = Constraints()
    objectives: Annotated[list[Objective], Field(min_length=1)] = [
        "val_loss",
        "throughput_tokens_per_s",
    ]
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
                raise ValueError(
                    f"search.windows: {w} is not below model.seq_len={m.seq_len}"
                    " (a window that wide is dense attention)"
                )
        if s.group_size is not None and m.n_layers % s.group_size:  # set iff tying 'groups'
            raise ValueError(
                f"search.group_size: {s.group_size} does not divide model.n_layers={m.n_layers}"
            )
        if s.block_sparse is not None and s.block_sparse.block_size > m.seq_len:
            raise ValueError(
                f"search.block_sparse.block_size: {s.block_sparse.block_size} "
                f"exceeds model.seq_len={m.seq_len}"
            )
        for field in ("n_q_heads", "n_kv_heads"):
            for i, h in enumerate(getattr(s, field)):
                n = heads_of(h, m.n_heads, exact=True)
                if n is None:
                    raise ValueError(
                        f"search.{field}[{i}]: {h!r} is not a whole number of "
                        f"heads in 1..{m.n_heads} at model.n_heads={m.n_heads}"
                    )
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
        for mask in self.mask_choices():
            layout = self._block_layout(MaskChoice.parse(mask))
            size = layout["block_size"] if layout else m.seq_len
            if -(-m.seq_len // size) > MAX_BLOCKS:
                raise ValueError(
                    f"search.block_sparse.block_size: {size} cuts model.seq_len={m.seq_len:,} "
                    f"into {-(-m.seq_len // size):,} blocks, more than {MAX_BLOCKS:,} (the "
                    f"layout is a blocks x blocks matrix): use blocks of at least "
                    f"{-(-m.seq_len // MAX_BLOCKS):,} tokens"
                )
        if not self.head_choices():
            raise ValueError(
                "search: no valid (n_q_heads, n_kv_heads) pair: H_q must be a "
                "multiple of H_kv (or allow_reverse with H_kv a multiple of H_q)"
            )
        stopping = self.budget.early_stopping.scheduler
        if stopping != "none" and "val_loss" not in self.objectives:
            raise ValueError(
                f"budget.early_stopping: {stopping} compares trials by the val_loss they reach "
                "at each rung: add val_loss to objectives (or use scheduler: none)"
            )
        for o in ("kv_cache_bytes", "params", "attention_flops"):
            if self.objectives == [o]:
                raise ValueError(
                    f"objectives: {o} alone is analytic: add a measured objective "
                    "(val_loss or throughput_tokens_per_s)"
                )
        return self

    # ------------------------------------------------------------------ derived structure
    @property
    def study_name(self) -> str:
        """The study's name: `study`, else "search"."""
        return self.study or "search"

    def ladder(self) -> list[int]:
        """MO-ASHA's rungs in tokens (`EarlyStopping.rungs`), whole training steps apart;
        [] when the scheduler is off."""
        stopping, train = self.budget.early_stopping, self.budget.train
        if stopping.scheduler == "none":
            return []
        return stopping.rungs(train.tokens or 0, train.batch_size * self.model.seq_len)

    @property
    def directions(self) -> list[Direction]:
        """ "minimize" or "maximize" per objective, in order."""
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
        """The "H_q/H_kv" choices of a layer: valid pairs from the searched counts at
        model.n_heads (H_q a multiple of H_kv, or the reverse with `allow_reverse`), then any
        seed variant's pair not among them."""
        h = self.model.n_heads
        qs = sorted(
            {q for x in self.search.n_q_heads if (q := heads_of(x, h, exact=True)) is not None},
            reverse=True,
        )
        kvs = sorted(
            {kv for x in self.search.n_kv_heads if (kv := heads_of(x, h, exact=True)) is not None},
            reverse=True,
        )
        pairs = [
            (q, kv)
            for q, kv in itertools.product(qs, kvs)
            if (q >= kv and q % kv == 0) or (self.search.allow_reverse and q < kv and kv % q == 0)
        ]
        choices = [str(HeadsChoice(q, kv)) for q, kv in pairs]
        for heads, _ in self._seed_choices():
            if str(heads) not in choices:
                choices.append(str(heads))
        return choices

    def mask_choices(self) -> list[str]:
        """The mask choices of a layer: each pattern with each searched size, then any seed
        variant's mask not among them."""
        s = self.search
        out: list[str] = []
        for p in s.patterns:
            sizes = (
                [{}]
                if p in ("dense", "block_sparse")
                else [{"window": w} for w in s.windows]
                if p == "window"
                else [
                    {"window": w, "global_tokens": g} for w in s.windows for g in s.global_tokens
                ]
            )
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
        """The Optuna search space: ``model.<field>`` per searched model field, and per unit
        (`units`) ``<unit>.heads``, plus ``<unit>.mask`` / ``<unit>.backend`` when there is more
        than one choice."""
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

    def layouts(self) -> int:
        """Distinct layer layouts a trial can draw (heads x mask x backend choices of a
        unit): each is one compiled block graph per batch shape."""
        first = self.units()[0][0] + "."
        return math.prod(
            len(d.choices) for k, d in self.distributions().items() if k.startswith(first)
        )

    def cardinality(self) -> int:
        """How many distinct architectures the space holds (product of the choice counts)."""
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
            layer: dict[str, Any] = {
                "n_q_heads": heads.n_q,
                "n_kv_heads": heads.n_kv,
                **mask.layer_fields(self._block_layout(mask)),
            }
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
        layout = self.search.block_sparse or BlockSparseLayout(
            block_size=max(1, min(64, seq_len // 8))
        )
        return layout.model_dump()

    def mha_cost(self, config: ModelConfig) -> ModelCost:
        """The analytic cost of the same-shape MHA model at model.seq_len."""
        return analyze(mha_baseline(config), self.model.seq_len)

    def space_hash(self) -> str:
        """What makes trials comparable: the model, the choices, objectives, data and the
        per-trial budget (not n_trials, storage, sampler or execution)."""
        keep = self.model_dump(
            mode="json", include={"model", "search", "objectives", "data", "constraints"}
        )
        keep["budget"] = self.budget.model_dump(mode="json", include={"train", "throughput"})
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def parse_space(data: Any, source: str = "search space") -> SearchSpec:
    """Validate `data` (a parsed YAML mapping) as a `SearchSpec`, and check that its largest
    trial fits the device of the run (`memory.check_fits`); any problem is a `UserError`
    starting with `source`."""
    if not isinstance(data, dict):
        raise UserError(
            f"{source}: expected a mapping of sections (model, search, ...), got "
            f"{type(data).__name__}"
        )
    try:
        spec = SearchSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {first_error(exc)}") from None
    check_fits(spec, source)
    return spec


def load_space(path: str | Path) -> SearchSpec:
    """Read and validate a YAML search space. Any problem is a `UserError` naming the file
    and the key path (or the line: `yamlfile.read_yaml` refuses duplicate keys, deep
    nesting, alias bombs and binary files); YAML tags that would construct Python objects
    are refused."""
    path = Path(path)
    data = read_yaml(path, "search space")
    if data is None:
        raise UserError(
            f"{path} holds no settings: a search space is a mapping of sections "
            "(model, search, ...); see search_spaces/reference.yaml"
        )
    spec = parse_space(data, str(path))
    if spec.study is None:
        spec = spec.model_copy(update={"study": path.stem})
    return spec


def layout_key(config: ModelConfig) -> str:
    """What makes two trials the same architecture: 16 hex digits of sha256 over the
    resolved model (every layer's heads, mask and backend, searched model fields), so
    different params that tie or order to the same layers give the same key."""
    text = json.dumps(config.resolved(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
