"""An independent float64 reference of SQA attention, written from the formulas in the spec
(not from the library's code): masks by their definitions, GQA by explicit index mapping."""

from __future__ import annotations

import torch


def mask_from_definition(n: int, causal: bool, window=None, global_tokens=0,
                         block_sparse=None) -> torch.Tensor:
    """(N, N) bool, True = query i may attend key j."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    if block_sparse is not None:
        bs = block_sparse.block_size
        nb = -(-n // bs)
        # Build the block layout by the layout's rules; random blocks are taken from the
        # library's layout only for the random part (the draw itself is not a formula).
        from sqa_nas.attention.masks import block_layout

        rnd = block_layout(block_sparse, n, causal)
        r = torch.arange(nb)
        rule = ((r[:, None] - r[None, :]).abs() <= block_sparse.local_blocks) \
            | (r[None, :] < block_sparse.global_blocks) | (r[:, None] < block_sparse.global_blocks)
        assert bool((rnd | rule).eq(rnd).all()), "layout lost a rule-based block"
        allowed = rnd[i // bs, j // bs]
        return allowed & (j <= i) if causal else allowed
    if causal:
        allowed = j <= i
        if window is not None:
            allowed = allowed & (j >= i - window)
        if global_tokens:
            allowed = allowed | ((j < global_tokens) & (j <= i))
        return allowed
    allowed = torch.ones(n, n, dtype=torch.bool)
    if window is not None:
        allowed = (i - j).abs() <= window
    if global_tokens:
        allowed = allowed | (j < global_tokens) | (i < global_tokens)
    return allowed


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half RoPE on (B, H, N, D): pairs (d, d + D/2) rotated by pos * theta^(-2d/D)."""
    n, d = x.shape[-2], x.shape[-1]
    half = d // 2
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / d)
    ang = (pos * freq).to(x.dtype)
    cos, sin = ang.cos(), ang.sin()
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def sqa_reference(x, wq, wk, wv, wo, config, dtype=torch.float64, biases=None):
    """Output of one SQA layer with weights (out, in) as nn.Linear stores them."""
    c = config
    b, n, _ = x.shape
    x = x.to(dtype)
    wq, wk, wv, wo = (w.to(dtype) for w in (wq, wk, wv, wo))
    bq, bk, bv, bo = (None,) * 4 if biases is None else (t.to(dtype) for t in biases)

    def lin(t, w, bias):
        y = t @ w.T
        return y if bias is None else y + bias

    d = c.head_dim
    q = lin(x, wq, bq).reshape(b, n, c.n_q_heads, d).permute(0, 2, 1, 3)
    k = lin(x, wk, bk).reshape(b, n, c.n_kv_heads, d).permute(0, 2, 1, 3)
    v = lin(x, wv, bv).reshape(b, n, c.n_kv_heads, d).permute(0, 2, 1, 3)
    if c.rope_theta is not None:
        q, k = rope(q, c.rope_theta), rope(k, c.rope_theta)
    mask = mask_from_definition(n, c.causal, c.window, c.global_tokens, c.block_sparse)
    heads = []
    if c.n_q_heads >= c.n_kv_heads:
        group = c.n_q_heads // c.n_kv_heads
        pairs = [(i, i // group) for i in range(c.n_q_heads)]  # query head i -> KV head i // G
    else:
        pairs = [(j % c.n_q_heads, j) for j in range(c.n_kv_heads)]  # KV head j <- query j % H_q
    for qi, kj in pairs:
        s = (q[:, qi] @ k[:, kj].transpose(-1, -2)) * d**-0.5
        if s.dtype != torch.float64:
            s = s.float()
        s = s.masked_fill(~mask, float("-inf"))
        heads.append(s.softmax(-1).to(dtype) @ v[:, kj])
    y = torch.stack(heads, dim=2).reshape(b, n, len(pairs) * d)
    return lin(y, wo, bo)
