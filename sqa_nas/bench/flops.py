"""FLOPs of a benchmark row, from the keys each query really sees (`count_visible`), so a
windowed row's TFLOP/s compare with a dense one's."""

from __future__ import annotations

from sqa_nas.analytics import analyze
from sqa_nas.attention.masks import count_visible
from sqa_nas.layer import SparseQueryAttention
from sqa_nas.model import ModelConfig

# Backward costs 2.5x the forward (flash-attention's convention: 5 matmuls vs 2).
_MODE_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}
_PROJ_FACTOR = {"fwd": 1.0, "bwd": 2.0, "fwd+bwd": 3.0}


def kernel_flops(layer: SparseQueryAttention, batch: int, n: int, mode: str) -> float:
    """Attention products alone: 4 * B * H_attn * d_head * (visible pairs), times the
    mode's factor."""
    c = layer.config
    assert c.head_dim is not None  # AttentionConfig fills it
    return (
        4.0
        * batch
        * c.attn_heads
        * c.head_dim
        * count_visible(layer.mask_spec, n)
        * _MODE_FACTOR[mode]
    )


def projection_flops(layer: SparseQueryAttention, batch: int, n: int, mode: str) -> float:
    """The layer's projections: 2 * B * N * parameters, times the mode's matmul factor."""
    params = sum(p.numel() for p in layer.parameters())
    return 2.0 * batch * n * params * _PROJ_FACTOR[mode]


def model_flops(config: ModelConfig, batch: int, n: int, mode: str = "fwd") -> float:
    """Whole-model FLOPs (`sqa_nas.analytics`, LM head included); the attention products
    scale by the backward factor of attention, the rest by that of matmuls."""
    cost = analyze(config, n)
    tokens = batch * n
    return tokens * (
        cost.attn_flops * _MODE_FACTOR[mode] + (cost.flops - cost.attn_flops) * _PROJ_FACTOR[mode]
    )
