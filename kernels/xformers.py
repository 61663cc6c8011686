"""xFormers `memory_efficient_attention`, grouped 5-D layout for GQA, local-attention biases.

Layout (B, N, G, H, D) with G = H_kv groups and H = H_q // H_kv query heads per group, so
query head ``g * H + h`` reads KV head g (the GQA convention). Masks map onto xFormers'
bias classes (see `attn_bias_for`); global tokens and block-sparse layouts go to FlexAttention.
"""

from __future__ import annotations

import functools
import logging

import torch

from sqa_nas.attention.masks import MaskSpec
from sqa_nas.attention.problem import AttentionProblem

from .base import AttentionBackend


@functools.cache
def _import():
    # xformers is optional (sqa-nas[xformers]): imported on first use, not with this module.
    logging.getLogger("xformers").setLevel(logging.ERROR)
    import xformers.ops as xops

    return xops


def attn_bias_for(spec: MaskSpec):
    """The xFormers bias for a dense / causal / window mask (None = no mask)."""
    from xformers.ops.fmha import attn_bias

    if spec.pattern not in ("dense", "window"):
        raise ValueError(f"xformers has no bias for {spec.pattern} masks")
    if spec.window is None:
        return attn_bias.LowerTriangularMask() if spec.causal else None
    right = 0 if spec.causal else spec.window
    return attn_bias.LocalAttentionFromBottomRightMask(window_left=spec.window, window_right=right)


class XformersBackend(AttentionBackend):
    """xFormers' `memory_efficient_attention` for dense, causal and window masks, on CUDA."""

    name = "xformers"
    description = "xFormers memory_efficient_attention (grouped GQA layout)"

    def availability(self) -> str | None:
        try:
            _import()
        except Exception as exc:
            return f"xformers is not installed ({type(exc).__name__}: {exc})".splitlines()[0]
        import xformers

        if not getattr(xformers, "_has_cpp_library", True):
            return "xformers has no compiled kernels for this torch / Python build"
        if not torch.cuda.is_available():
            return "xformers kernels need a CUDA GPU; none is visible"
        return None

    def unsupported(self, problem: AttentionProblem) -> str | None:
        if problem.device_type != "cuda":
            return "xformers' kernels run on CUDA only"
        if problem.mask.pattern not in ("dense", "window"):
            return f"xformers has no {problem.mask.pattern} bias here; use 'flex'"
        return None

    def priority(self, problem: AttentionProblem) -> tuple[int, str]:
        return 50, "xFormers cutlass/flash kernels"

    def forward(self, q, k, v, problem: AttentionProblem) -> torch.Tensor:
        """The contract's forward, through the grouped (B, N, G, H, D) layout of the module
        docstring; K and V are broadcast over each group, not copied."""
        xops = _import()
        b, hq, n, d = q.shape
        g, h = problem.n_kv_heads, problem.gqa_group
        q5 = q.transpose(1, 2).reshape(b, n, g, h, d)  # (B, N, G, H, D)
        k5 = k.transpose(1, 2)[:, :, :, None].expand(b, n, g, h, d)
        v5 = v.transpose(1, 2)[:, :, :, None].expand(b, n, g, h, d)
        out = xops.memory_efficient_attention(
            q5, k5, v5, attn_bias=attn_bias_for(problem.mask), scale=problem.scale
        )
        return out.reshape(b, n, hq, d).transpose(1, 2)  # (B, H_q, N, D)
