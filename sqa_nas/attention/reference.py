"""The attention formulas written out plainly, in any dtype: the yardstick for correctness.

`reference_layer(layer, x)` recomputes `SparseQueryAttention.forward` from the layer's own
weights without any fused kernel: explicit ``repeat_interleave`` for GQA, an explicit mask,
softmax in float32 or wider. In float64 it is the reference every backend is checked
against; in the working dtype it measures how far torch's own plain math drifts, which sets
the tolerance (`|out - ref64| <= 2 |ref_lowp - ref64| + atol`, as flash-attention tests do).
"""

from __future__ import annotations

import torch

from sqa_nas.attention.layer import SparseQueryAttention, apply_rope, rope_tables


def reference_attention(q, k, v, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """q (B, H_q, N, D), k and v (B, H_kv, N, D), mask (N, N) bool -> (B, H_q, N, D)."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # query head i reads KV head i // group
    v = v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-2, -1)  # (B, H_q, N, N)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # softmax in float32, as the kernels do
    scores = scores * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    p = scores.softmax(dim=-1).to(v.dtype)
    return p @ v


def reference_layer(layer: SparseQueryAttention, x: torch.Tensor,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The layer's output computed plainly in `dtype`, from the layer's weights."""
    c = layer.config
    b, n, _ = x.shape
    x = x.to(dtype)

    def lin(m, t):
        return torch.nn.functional.linear(t, m.weight.to(dtype),
                                          None if m.bias is None else m.bias.to(dtype))

    q = lin(layer.q_proj, x).view(b, n, c.n_q_heads, c.head_dim).transpose(1, 2)
    k = lin(layer.k_proj, x).view(b, n, c.n_kv_heads, c.head_dim).transpose(1, 2)
    v = lin(layer.v_proj, x).view(b, n, c.n_kv_heads, c.head_dim).transpose(1, 2)
    if c.rope_theta is not None:
        cos, sin = rope_tables(n, c.head_dim, c.rope_theta, x.device, dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if c.is_reverse:
        q = q.repeat(1, c.n_kv_heads // c.n_q_heads, 1, 1)
    mask = layer.mask(n)
    y = reference_attention(q, k, v, None if mask is None else mask.to(x.device), c.scale)
    y = y.transpose(1, 2).reshape(b, n, c.attn_heads * c.head_dim)
    return lin(layer.o_proj, y)
