"""Rotary position embeddings (RoPE), rotate-half layout as in LLaMA / GPT-NeoX.

Dimension d < D/2 of a head is paired with d + D/2 and the pair is rotated by the angle
``pos * theta ** (-2 d / D)`` (Su et al., RoFormer, eq. 34, in the rotate-half layout).
"""

from __future__ import annotations

import torch


def rope_tables(
    n: int, head_dim: int, theta: float, device=None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for positions 0..n-1.

    Arguments:
        n: sequence length N.
        head_dim: D, even.
        theta: the RoPE base (10000 in LLaMA).
    Return:
        (cos, sin), each (N, D) in `dtype`; the angles are computed in float64.
    """
    inv_freq = theta ** (
        -torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim
    )
    angles = torch.arange(n, device=device, dtype=torch.float64)[:, None] * inv_freq  # (N, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (N, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, N, D) by position: ``x * cos + rotate_half(x) * sin``, with cos and
    sin (N, D) from `rope_tables`. Returns (B, H, N, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin
