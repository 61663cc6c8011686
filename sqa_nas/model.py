"""A small LLaMA-style transformer with a different attention layer in every block.

Token embedding -> n_layers x [RMSNorm -> SparseQueryAttention (RoPE inside) -> residual,
RMSNorm -> SwiGLU -> residual] -> RMSNorm -> LM head (tied to the embedding by default).
Decoder (causal) or encoder (bidirectional). Built from a plain dict or YAML file:

    d_model: 256
    n_layers: 8
    n_heads: 16            # the reference H of every layer
    ffn_dim: 768
    vocab_size: 10000
    causal: true
    rope_theta: 10000.0
    attention: {variant: SQA}          # default for every layer
    layers:                            # optional, one entry per layer, overrides the default
      - {variant: MHA}
      - {n_q_heads: 8, n_kv_heads: 4, window: 256}
      ...

A layer entry holds `AttentionConfig` fields (n_q_heads, n_kv_heads, window, global_tokens,
block_sparse, bias, backend), optionally starting from a named `variant`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from torch import nn

from sqa_nas.attention.config import AttentionConfig
from sqa_nas.errors import UserError, first_error
from sqa_nas.layer import SparseQueryAttention
from sqa_nas.registry import get_variant

# The most layers a model may have: every layer is a config, a module and, in a search, a
# unit of choices; a typo (a billion) must be refused before any of them is made.
MAX_LAYERS = 4096

# Fields of AttentionConfig that the model sets for every layer.
_MODEL_LEVEL = ("d_model", "n_heads", "head_dim", "causal", "rope_theta")

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's benchmark model (Table 3): ~10M parameters, head_dim 16.
    "paper": dict(vocab_size=10_000, d_model=256, n_layers=8, n_heads=16, ffn_dim=768),
    # The same family where attention kernels are efficient (head_dim 64 and 128).
    "paper-hd64": dict(vocab_size=10_000, d_model=1024, n_layers=8, n_heads=16, ffn_dim=3072),
    "paper-hd128": dict(vocab_size=10_000, d_model=2048, n_layers=8, n_heads=16, ffn_dim=6144),
    # A CPU-sized model for quick searches and tests.
    "tiny": dict(vocab_size=256, d_model=64, n_layers=4, n_heads=8, ffn_dim=192),
}


class ModelConfig(BaseModel):
    """The whole model. `layer_configs` holds one resolved `AttentionConfig` per layer."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    vocab_size: int = Field(256, gt=0)
    d_model: int = Field(256, gt=0)
    n_layers: int = Field(8, gt=0, le=MAX_LAYERS)
    n_heads: int = Field(16, gt=0)
    head_dim: int | None = Field(None, gt=0)
    ffn_dim: int = Field(768, gt=0)
    causal: bool = True
    rope_theta: float | None = Field(10_000.0, gt=0)
    tie_embeddings: bool = True
    norm_eps: float = Field(1e-6, gt=0)
    attention: dict[str, Any] = Field(default_factory=lambda: {"variant": "MHA"})
    layers: list[dict[str, Any]] | None = None
    # Where a config came from (study, trial, objectives, versions); never affects the model.
    provenance: dict[str, Any] | None = None

    _layer_configs: tuple[AttentionConfig, ...] = PrivateAttr()

    @model_validator(mode="after")
    def _resolve_layers(self) -> ModelConfig:
        if self.layers is not None and len(self.layers) != self.n_layers:
            raise ValueError(
                f"layers has {len(self.layers)} entries but n_layers="
                f"{self.n_layers}: give one entry per layer or none"
            )
        overrides = self.layers or [{}] * self.n_layers
        self._layer_configs = tuple(
            self._resolve(i, {**self.attention, **o}) for i, o in enumerate(overrides)
        )
        return self

    def _resolve(self, i: int, spec: dict[str, Any]) -> AttentionConfig:
        where = f"layers[{i}]" if self.layers is not None else "attention"
        clash = sorted(set(spec) & set(_MODEL_LEVEL))
        if clash:
            raise ValueError(f"{where}.{clash[0]} is set for the whole model; remove it here")
        spec = dict(spec)
        name = spec.pop("variant", None)
        base = {k: getattr(self, k) for k in _MODEL_LEVEL}
        try:
            if name is None:
                return AttentionConfig(**base, **spec)
            if not isinstance(name, str):
                raise ValueError(f"variant must be a name, got {name!r}")
            return get_variant(name).config(**base, **spec)
        except ValidationError as exc:
            raise ValueError(f"{where}: {first_error(exc)}") from None
        except (UserError, TypeError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    @property
    def layer_configs(self) -> tuple[AttentionConfig, ...]:
        """One resolved `AttentionConfig` per layer, from `attention` and `layers`."""
        return self._layer_configs

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """A preset by name (`PRESETS`), e.g. ``ModelConfig.from_name("paper",
        attention={"variant": "xSQA"})``."""
        if name not in PRESETS:
            raise UserError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def resolved(self) -> dict[str, Any]:
        """This config with every layer written out explicitly (no variant names): the
        form `export` writes, which rebuilds exactly the same model."""
        data = self.model_dump(exclude={"attention", "layers", "provenance"})
        data["layers"] = [layer_dict(c) for c in self.layer_configs]
        return data

    def with_layers(self, layers: list[dict[str, Any]]) -> ModelConfig:
        """A copy of this config with `layers` replaced (one dict of `AttentionConfig` fields, or a
        `variant` name, per layer); validated as a new config."""
        return ModelConfig(**{**self.model_dump(exclude={"layers"}), "layers": layers})


def layer_dict(c: AttentionConfig) -> dict[str, Any]:
    """The per-layer fields of an AttentionConfig, defaults left out."""
    out: dict[str, Any] = {"n_q_heads": c.n_q_heads, "n_kv_heads": c.n_kv_heads}
    if c.window is not None:
        out["window"] = c.window
    if c.global_tokens:
        out["global_tokens"] = c.global_tokens
    if c.block_sparse is not None:
        out["block_sparse"] = c.block_sparse.model_dump()
    if c.bias:
        out["bias"] = True
    if c.backend != "auto":
        out["backend"] = c.backend
    return out


def load_config(source: ModelConfig | dict | str | Path) -> ModelConfig:
    """A `ModelConfig` from a config, a dict, a preset name or a YAML file path."""
    if isinstance(source, ModelConfig):
        return source
    if isinstance(source, str | Path) and not isinstance(source, dict):
        text = str(source)
        if text in PRESETS:
            return ModelConfig.from_name(text)
        path = Path(text)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise UserError(f"cannot read model config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise UserError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of model settings")
        source = data
    try:
        return ModelConfig(**source)
    except ValidationError as exc:
        raise UserError(f"model config: {first_error(exc)}") from None


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, ffn_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, ffn_dim, bias=False)
        self.w3 = nn.Linear(d_model, ffn_dim, bias=False)
        self.w2 = nn.Linear(ffn_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, d_model) -> (B, N, d_model)."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """One pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, attn: AttentionConfig, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = SparseQueryAttention(attn)
        self.ffn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.ffn = FeedForward(config.d_model, config.ffn_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, d_model) -> (B, N, d_model)."""
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class SQATransformer(nn.Module):
    """tokens (B, N) int64 -> logits (B, N, vocab_size)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(a, config) for a in config.layer_configs)
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.apply(self._init)
        # GPT-2's scaled init of the projections that write into the residual stream.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "w2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(
        self, tokens: torch.Tensor, blocks: Sequence[Callable[[torch.Tensor], torch.Tensor]] = ()
    ) -> torch.Tensor:
        """Logits for every position.

        Arguments:
            tokens: (B, N) int64 token ids in [0, vocab_size).
            blocks: callables run in place of the layers, one per layer (their compiled
                forms: `sqa_nas.compiling.compile_blocks`); empty: the layers themselves.
        Return:
            logits: (B, N, vocab_size).
        """
        x = self.embed(tokens)  # (B, N, d_model)
        for block in blocks or self.layers:
            x = block(x)
        return self.lm_head(self.norm(x))  # (B, N, vocab)

    def prepare(
        self, seq_len: int, dtype: torch.dtype | None = None, requires_grad: bool = True
    ) -> list[tuple[str, str]]:
        """Choose every layer's backend for calls of length `seq_len` with activations in
        `dtype` (default: the weights'; under autocast, its dtype) and size the RoPE tables,
        on the weights' device: call it before `torch.compile`, so that the traced forward
        only reads these choices (no graph breaks). Returns (backend, reason) per layer."""
        w = self.embed.weight
        blocks = cast(Iterable[Block], self.layers)  # nn.ModuleList yields nn.Module
        return [
            (b.name, why)
            for b, why in (
                block.attn.choose(seq_len, w.device, dtype or w.dtype, requires_grad)
                for block in blocks
            )
        ]

    def backends(self) -> list[tuple[str, str]]:
        """(backend, reason) per layer, for the last forward (or the default device)."""
        blocks = cast(Iterable[Block], self.layers)  # nn.ModuleList yields nn.Module
        return [(b.attn.backend_name, b.attn.backend_reason) for b in blocks]


def build_model(
    config: ModelConfig | dict | str | Path, *, seed: int | None = None
) -> SQATransformer:
    """Build the model from a `ModelConfig`, a dict, a preset name or a YAML path; with
    `seed`, its weights are `init_weights(model, seed)` (common random numbers), else drawn
    from torch's global generator in module order."""
    model = SQATransformer(load_config(config))
    if seed is not None:
        init_weights(model, seed)
    return model


def init_weights(model: SQATransformer, seed: int) -> None:
    """Re-draw every weight in place as the model's own init does (linear and embedding
    weights N(0, 0.02), ``o_proj`` and ``w2`` N(0, 0.02 / sqrt(2 n_layers)), biases 0, norm
    weights 1), each parameter from its own generator seeded by `seed`, its name and its
    shape: two models with the same seed start from the same weights wherever their
    parameters have the same name and shape, whatever else differs (common random numbers:
    two layouts that differ in one layer's heads share every other weight)."""
    n_layers = model.config.n_layers
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied weight appears once
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name:
                p.fill_(1.0)
            else:
                std = 0.02
                if name.endswith(("o_proj.weight", "w2.weight")):
                    std /= math.sqrt(2 * n_layers)
                key = hashlib.sha256(f"{seed}:{name}:{tuple(p.shape)}".encode()).digest()
                generator = torch.Generator().manual_seed(int.from_bytes(key[:8], "big"))
                p.copy_(torch.empty(p.shape).normal_(0.0, std, generator=generator))
