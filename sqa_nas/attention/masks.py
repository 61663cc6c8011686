"""Attention masks: causal, sliding window, global tokens and block-sparse layouts.

One mask function (`mask_mod`, FlexAttention's signature) is the single definition; the dense
(N, N) mask, the FlexAttention block mask and the backends' native window arguments all
derive from it or are tested against it. `count_visible` counts the visible (query, key)
pairs analytically in O(N) memory, so FLOP accounting works at a million tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sqa_nas.attention.config import AttentionConfig, BlockSparseLayout, Pattern, pattern_of

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MaskSpec:
    """The part of an `AttentionConfig` that decides which keys a query sees."""

    causal: bool = True
    window: int | None = None
    global_tokens: int = 0
    block_sparse: BlockSparseLayout | None = None

    @classmethod
    def of(cls, config: AttentionConfig) -> MaskSpec:
        """The mask fields of `config`."""
        return cls(config.causal, config.window, config.global_tokens, config.block_sparse)

    @property
    def pattern(self) -> Pattern:
        """The mask family: dense (maybe causal), window, flex (window + globals), block_sparse."""
        return pattern_of(self.window, self.global_tokens, self.block_sparse)

    @property
    def is_full(self) -> bool:
        """Every query sees every key: no mask at all."""
        return not self.causal and self.pattern == "dense"

    def describe(self) -> str:
        """The mask in words for tables and errors, e.g. "causal, window 512, 16 global"."""
        parts = ["causal" if self.causal else "bidirectional"]
        if self.window is not None:
            parts.append(f"window {self.window}")
        if self.global_tokens:
            parts.append(f"{self.global_tokens} global")
        if self.block_sparse is not None:
            b = self.block_sparse
            parts.append(
                f"block-sparse {b.block_size} (local {b.local_blocks}, global "
                f"{b.global_blocks}, random {b.random_blocks})"
            )
        return ", ".join(parts)


def block_layout(layout: BlockSparseLayout, n: int, causal: bool, device=None) -> torch.Tensor:
    """Which key blocks each query block sees: bool (n_blocks, n_blocks)."""
    nb = -(-n // layout.block_size)
    r = torch.arange(nb, device=device)
    visible = (r[:, None] - r[None, :]).abs() <= layout.local_blocks
    visible |= r[None, :] < layout.global_blocks
    visible |= r[:, None] < layout.global_blocks
    if layout.random_blocks:
        gen = torch.Generator().manual_seed(layout.seed)
        # Row r draws among key blocks 0..r when causal (later blocks are masked anyway).
        span = (r + 1) if causal else torch.full_like(r, nb)
        u = torch.rand(nb, layout.random_blocks, generator=gen).to(device)
        cols = (u * span[:, None]).long().clamp_(max=nb - 1)
        visible[r[:, None].expand_as(cols), cols] = True
    return visible


def mask_mod(spec: MaskSpec, n: int, device=None) -> MaskMod | None:
    """FlexAttention mask function for `spec` at length n; None when every key is visible."""
    if spec.is_full:
        return None
    causal, w, g = spec.causal, spec.window, spec.global_tokens
    if spec.block_sparse is not None:
        bs = spec.block_sparse.block_size
        layout = block_layout(spec.block_sparse, n, causal, device)

        def block_sparse(b, h, q, kv):
            ok = layout[q // bs, kv // bs]
            return ok & (kv <= q) if causal else ok

        return block_sparse

    def windowed(b, h, q, kv):
        if w is None:
            return kv <= q  # plain causal (globals need a window)
        if causal:
            ok = (kv <= q) & (q - kv <= w)
            return ok | ((kv < g) & (kv <= q)) if g else ok
        ok = (q - kv).abs() <= w
        return ok | (kv < g) | (q < g) if g else ok

    return windowed


def dense_mask(spec: MaskSpec, n: int, device=None) -> torch.Tensor | None:
    """The (N, N) bool mask, True = may attend; None when every key is visible."""
    mod = mask_mod(spec, n, device)
    if mod is None:
        return None
    i = torch.arange(n, device=device)
    zero = torch.zeros((), dtype=torch.long, device=device)
    return mod(zero, zero, i[:, None], i[None, :])


def visible_per_query(spec: MaskSpec, n: int) -> torch.Tensor:
    """How many keys each query sees, int64 (N,), without building the N x N mask."""
    i = torch.arange(n, dtype=torch.long)
    if spec.is_full:
        return torch.full((n,), n, dtype=torch.long)
    if spec.block_sparse is not None:
        bs = spec.block_sparse.block_size
        layout = block_layout(spec.block_sparse, n, spec.causal)
        nb = layout.shape[0]
        block_len = torch.full((nb,), bs, dtype=torch.long)
        block_len[-1] = n - bs * (nb - 1)
        rows = i // bs
        if not spec.causal:
            return (layout.long() @ block_len)[rows]
        # Causal: blocks left of the diagonal are whole; the diagonal block is cut at the query.
        strictly_left = torch.tril(layout, diagonal=-1).long() @ block_len
        return strictly_left[rows] + (i - rows * bs + 1)
    w, g = spec.window, spec.global_tokens
    if w is None:  # causal, no window
        return i + 1
    if spec.causal:
        lo = (i - w).clamp(min=0)
        return (i - lo + 1) + torch.minimum(lo, torch.tensor(g))
    lo = (i - w).clamp(min=0)
    hi = (i + w).clamp(max=n - 1)
    count = (hi - lo + 1) + torch.minimum(lo, torch.tensor(g)) + (g - hi - 1).clamp(min=0)
    return torch.where(i < g, torch.tensor(n), count)


def count_visible(spec: MaskSpec, n: int) -> int:
    """Visible (query, key) pairs at length n; attention FLOPs scale with this."""
    return int(visible_per_query(spec, n).sum())


def density(spec: MaskSpec, n: int) -> float:
    """Fraction of the N x N score matrix that is computed."""
    return count_visible(spec, n) / (n * n)
