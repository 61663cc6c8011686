"""What a model costs, computed from its config without running anything.

FLOPs count a multiply-add as 2. Attention FLOPs are the score (Q K^T) and value (P V)
products over the keys each query actually sees (`count_visible`), so windows and
block-sparse layouts are accounted for exactly. Training costs 3x the forward pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqa_nas.attention.config import AttentionConfig
from sqa_nas.attention.masks import MaskSpec, count_visible
from sqa_nas.model import ModelConfig


@dataclass(frozen=True)
class LayerCost:
    """What one layer costs: parameters, forward FLOPs per token, KV-cache bytes per token."""

    params: int
    attn_flops: float  # per token, forward: Q K^T and P V
    proj_flops: float  # per token, forward: q, k, v and o projections
    ffn_flops: float  # per token, forward
    kv_bytes: int  # KV-cache bytes per token

    @property
    def flops(self) -> float:
        """Forward FLOPs per token of the whole layer (attention products, projections, FFN)."""
        return self.attn_flops + self.proj_flops + self.ffn_flops


@dataclass(frozen=True)
class ModelCost:
    """What a whole model costs at `seq_len`, per layer and in total, and its speedup over
    the dense MHA model of the same shape (`analyze`)."""

    seq_len: int
    layers: list[LayerCost]
    params: int
    flops: float  # per token, forward, whole model (embedding lookup free, LM head counted)
    attn_flops: float  # per token, forward, attention products only
    kv_bytes: int  # KV-cache bytes per token, all layers
    speedup_vs_mha: float  # forward FLOPs of the MHA model / this model's
    attn_speedup_vs_mha: float  # the same for the attention products alone

    @property
    def train_flops(self) -> float:
        """Training FLOPs per token: forward + backward, counted as 3x the forward."""
        return 3 * self.flops

    def as_dict(self) -> dict:
        """The fields as plain data (layers as dicts), with `train_flops` added."""
        d = asdict(self)
        d["train_flops"] = self.train_flops
        return d


def attention_flops(c: AttentionConfig, seq_len: int) -> float:
    """Forward FLOPs per token of the attention products of one layer."""
    pairs = count_visible(MaskSpec.of(c), seq_len)
    assert c.head_dim is not None  # AttentionConfig fills it
    return 4.0 * c.attn_heads * c.head_dim * pairs / seq_len


def layer_cost(c: AttentionConfig, ffn_dim: int, seq_len: int, kv_bytes_per_value: int = 2):
    """The `LayerCost` of layer `c` with an FFN of width `ffn_dim` at `seq_len` tokens.
    Parameters count the q/k/v/o projections (and biases), the two RMSNorms and the SwiGLU
    FFN; the KV cache stores K and V at `kv_bytes_per_value` bytes per value."""
    d = c.head_dim
    assert d is not None  # AttentionConfig fills it
    proj_out = (c.n_q_heads + 2 * c.n_kv_heads) * d  # q, k, v projections' outputs
    proj_params = c.d_model * proj_out + c.attn_heads * d * c.d_model
    bias = (proj_out + c.d_model) if c.bias else 0
    norms = 2 * c.d_model
    ffn_params = 3 * c.d_model * ffn_dim
    return LayerCost(
        params=proj_params + bias + norms + ffn_params,
        attn_flops=attention_flops(c, seq_len),
        proj_flops=2.0 * proj_params,
        ffn_flops=2.0 * ffn_params,
        kv_bytes=2 * c.n_kv_heads * d * kv_bytes_per_value,
    )


def analyze(
    config: ModelConfig, seq_len: int, kv_bytes_per_value: int = 2, _baseline: bool = True
) -> ModelCost:
    """Parameters, FLOPs per token and KV cache of `config` at `seq_len`, with the speedup
    over the dense MHA model of the same shape (same d_model, layers, causality)."""
    layers = [
        layer_cost(c, config.ffn_dim, seq_len, kv_bytes_per_value) for c in config.layer_configs
    ]
    embed = config.vocab_size * config.d_model
    head = 0 if config.tie_embeddings else embed
    params = sum(x.params for x in layers) + embed + head + config.d_model
    flops = sum(x.flops for x in layers) + 2.0 * config.d_model * config.vocab_size
    attn = sum(x.attn_flops for x in layers)
    speedup = attn_speedup = 1.0
    if _baseline:
        mha = analyze(mha_baseline(config), seq_len, kv_bytes_per_value, _baseline=False)
        speedup, attn_speedup = mha.flops / flops, mha.attn_flops / attn
    return ModelCost(
        seq_len,
        layers,
        params,
        flops,
        attn,
        sum(x.kv_bytes for x in layers),
        speedup,
        attn_speedup,
    )


def mha_baseline(config: ModelConfig) -> ModelConfig:
    """The dense MHA model of the same shape: every variant's reference point."""
    return ModelConfig(
        **{
            **config.model_dump(exclude={"layers", "attention", "provenance"}),
            "attention": {"variant": "MHA"},
        }
    )
