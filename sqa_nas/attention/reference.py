"""The attention formulas written out plainly, in any dtype: the yardstick for correctness.

Written from the definitions (`AttentionConfig`'s and `BlockSparseLayout`'s docstrings, the
paper's section 3.2), not from the code it checks: the mask is built pair by pair from its
definition (not with `sqa_nas.attention.masks`), RoPE from its formula (not with
`sqa_nas.attention.rope`), the head mapping by explicit index, the layer from its four
projections. In float64 it is the reference every backend and layer is checked against; in
the working dtype it measures how far torch's own plain math drifts, which sets the
tolerance (`error_and_tolerance`: ``|out - ref64| <= 2 |ref_lowp - ref64| + floor``, as
flash-attention's tests do).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from sqa_nas.attention.config import AttentionConfig, BlockSparseLayout
from sqa_nas.attention.masks import MaskSpec


class ProjectedLayer(Protocol):
    """What `reference_layer` reads of a layer: its config and four projections."""

    config: AttentionConfig
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear


def reference_mask(spec: MaskSpec | AttentionConfig, n: int, device=None) -> torch.Tensor:
    """The (N, N) bool mask of `spec` (True = query i may attend key j), from the definition.
    Never None: full attention is all True."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    w, g = spec.window, spec.global_tokens
    if spec.block_sparse is not None:
        bs = spec.block_sparse.block_size
        allowed = reference_block_layout(spec.block_sparse, n, spec.causal)
        allowed = allowed.to(device)[i // bs, j // bs]
    elif w is None:
        allowed = torch.ones(n, n, dtype=torch.bool, device=device)
    elif spec.causal:
        allowed = (i - j <= w) | (j < g)  # the causal cut comes below
    else:
        allowed = ((i - j).abs() <= w) | (j < g) | (i < g)
    return allowed & (j <= i) if spec.causal else allowed


def reference_block_layout(layout: BlockSparseLayout, n: int, causal: bool) -> torch.Tensor:
    """Which key blocks each query block sees, bool (n_blocks, n_blocks), from the rules in
    `BlockSparseLayout`'s docstring: local band, global rows and columns, seeded draws."""
    nb = -(-n // layout.block_size)
    row, col = torch.arange(nb)[:, None], torch.arange(nb)[None, :]
    visible = (
        ((row - col).abs() <= layout.local_blocks)
        | (col < layout.global_blocks)
        | (row < layout.global_blocks)
    )
    gen = torch.Generator().manual_seed(layout.seed)
    u = torch.rand(nb, layout.random_blocks, generator=gen)
    for r in range(nb):
        span = r + 1 if causal else nb
        for draw in u[r].tolist():
            visible[r, int(draw * span)] = True
    return visible


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Plain attention, softmax in float32 or wider.

    Arguments:
        q: (B, H_q, N, D); k, v: (B, H_kv, N, D), H_q a multiple of H_kv.
        mask: (N, N) bool, True = may attend; None = every key visible.
        scale: the score scale, usually D ** -0.5.
    Return:
        (B, H_q, N, D): query head i reads KV head i // (H_q // H_kv).
    """
    kv_head = torch.arange(q.shape[1], device=q.device) // (q.shape[1] // k.shape[1])
    k, v = k[:, kv_head], v[:, kv_head]  # (B, H_q, N, D)
    scores = q @ k.transpose(-2, -1)  # (B, H_q, N, N)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # softmax in float32, as the kernels do
    scores = scores * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1).to(v.dtype) @ v


def reference_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x (B, H, N, D) with dimension d < D/2 paired with d + D/2 and the pair rotated by
    ``pos * theta ** (-2 d / D)`` (rotate-half RoPE); angles in float64, then x's dtype."""
    n, d = x.shape[-2], x.shape[-1]
    half = d // 2
    pos = torch.arange(n, dtype=torch.float64, device=x.device)[:, None]
    angle = pos * theta ** (-2.0 * torch.arange(half, dtype=torch.float64, device=x.device) / d)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)  # (N, D/2)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def reference_layer(
    layer: ProjectedLayer, x: torch.Tensor, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """One SQA layer computed plainly in `dtype` from `layer`'s config and projections
    (gradients flow to their weights and biases).

    Arguments:
        layer: a `SparseQueryAttention`, or anything with its config and four nn.Linear.
        x: (B, N, d_model).
    Return:
        (B, N, d_model).
    """
    c = layer.config
    assert c.head_dim is not None  # AttentionConfig fills it
    b, n, _ = x.shape
    x = x.to(dtype)

    def lin(m: nn.Linear, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(
            t, m.weight.to(dtype), None if m.bias is None else m.bias.to(dtype)
        )

    q = lin(layer.q_proj, x).view(b, n, c.n_q_heads, c.head_dim).transpose(1, 2)  # (B, H_q, N, D)
    k = lin(layer.k_proj, x).view(b, n, c.n_kv_heads, c.head_dim).transpose(1, 2)
    v = lin(layer.v_proj, x).view(b, n, c.n_kv_heads, c.head_dim).transpose(1, 2)
    if c.rope_theta is not None:
        q, k = reference_rope(q, c.rope_theta), reference_rope(k, c.rope_theta)
    if c.n_q_heads < c.n_kv_heads:
        # rSQA: attention head j pairs query head j % H_q with KV head j.
        q = q[:, torch.arange(c.n_kv_heads, device=x.device) % c.n_q_heads]  # (B, H_kv, N, D)
    mask = None if not c.causal and c.pattern == "dense" else reference_mask(c, n, x.device)
    y = reference_attention(q, k, v, mask, c.head_dim**-0.5)  # (B, H_attn, N, D)
    y = y.transpose(1, 2).reshape(b, n, c.attn_heads * c.head_dim)
    return lin(layer.o_proj, y)


def error_and_tolerance(
    out: torch.Tensor,
    ref64: torch.Tensor,
    plain: torch.Tensor,
    floor: float = 1e-6,
    scale: float | None = None,
) -> tuple[float, float]:
    """(error, tolerance): max |out - ref64| against twice torch's own error, max |plain -
    ref64| (plain: the same formula in the working dtype), plus `floor` times `scale`.

    `scale` defaults to max |ref64|. Pass the scale of the whole computation where a tensor
    is near zero by symmetry: a key bias's gradient vanishes without RoPE (it shifts every
    score of a query equally), leaving only rounding noise of the other gradients' size.
    """
    out, ref64, plain = out.double(), ref64.double(), plain.double()
    if scale is None:
        scale = ref64.abs().max().item() or 1.0
    return (
        (out - ref64).abs().max().item(),
        2 * (plain - ref64).abs().max().item() + floor * scale,
    )
