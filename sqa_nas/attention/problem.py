"""`AttentionProblem`: what a kernel backend is asked to compute, without the tensors.

    q: (B, H_q, N, D)    k, v: (B, H_kv, N, D)    ->    out: (B, H_q, N, D)

H_q is a multiple of H_kv and query head i reads KV head ``i // (H_q // H_kv)`` (GQA,
``repeat_interleave``); rSQA's query tiling happens in the layer, so a problem never has
H_q < H_kv. The mask is a `MaskSpec` (True = may attend).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sqa_nas.attention.masks import MaskSpec


@dataclass(frozen=True)
class AttentionProblem:
    """Everything a backend needs to decide whether, and how well, it can run a call.
    Hashable: layers cache their backend choice per problem."""

    mask: MaskSpec
    n_q_heads: int  # H_q as the kernel sees it (H_kv for rSQA, after tiling)
    n_kv_heads: int
    head_dim: int
    seq_len: int
    dtype: torch.dtype
    device_type: str  # "cpu" or "cuda"
    scale: float
    requires_grad: bool = False  # will a backward pass follow?

    @property
    def gqa_group(self) -> int:
        """Query heads per KV head, H_q // H_kv."""
        return self.n_q_heads // self.n_kv_heads
