"""torch's `scaled_dot_product_attention`: cuDNN / flash / efficient / math sub-kernels.

The reference path on CPU. Dense and causal problems run without a mask tensor; windows,
global tokens and block-sparse layouts are passed as a materialised (N, N) bool mask, which
is exact but costs O(N^2) memory and time, so it is refused past `MAX_MASKED_SEQ_LEN`.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sqa_nas.attention.masks import MaskSpec, dense_mask
from sqa_nas.attention.problem import AttentionProblem

from .base import AttentionBackend

# 16k x 16k bool mask = 256 MiB; beyond that use a backend that never builds it.
MAX_MASKED_SEQ_LEN = 16_384

# On Hopper cuDNN is the fastest SDPA kernel (555-678 TFLOP/s fwd at head_dim 128 on the
# H200 vs ~340 for torch's flash), but torch does not try it first: ask for it explicitly.
_CUDA_ORDER = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


_SDPA_NAMES = {
    SDPBackend.CUDNN_ATTENTION: "cuDNN",
    SDPBackend.FLASH_ATTENTION: "flash",
    SDPBackend.EFFICIENT_ATTENTION: "efficient",
    SDPBackend.MATH: "math",
}


def _cached_mask(spec: MaskSpec, n: int, device: torch.device) -> torch.Tensor | None:
    return _make_mask(spec, n, device)


@functools.cache
def _mask_is_a_trace_constant() -> None:
    """A trace takes `_cached_mask`'s result as a constant instead of tracing its making
    (a graph break). Marked when a backend is first chosen, not at import: the marking
    imports dynamo, which changes warning filters."""
    torch.compiler.assume_constant_result(_cached_mask)


@functools.lru_cache(maxsize=8)
def _make_mask(spec: MaskSpec, n: int, device: torch.device) -> torch.Tensor | None:
    with torch.inference_mode(False):  # cached: must stay usable by a later training step
        return dense_mask(spec, n, device)


class SdpaBackend(AttentionBackend):
    """torch's `scaled_dot_product_attention`, on CUDA with cuDNN asked for first; every mask
    family, masked ones through a materialised (N, N) mask."""

    name = "sdpa"
    description = "torch scaled_dot_product_attention (cuDNN > flash > efficient > math)"

    def unsupported(self, problem: AttentionProblem) -> str | None:
        if _needs_mask_tensor(problem.mask) and problem.seq_len > MAX_MASKED_SEQ_LEN:
            return (
                f"sdpa would materialise an N x N mask for {problem.mask.pattern} "
                f"attention; N={problem.seq_len} > {MAX_MASKED_SEQ_LEN}"
            )
        return None

    def priority(self, problem: AttentionProblem) -> tuple[int, str]:
        _mask_is_a_trace_constant()  # asked when choosing, before any trace: see there
        masked = _needs_mask_tensor(problem.mask)
        if problem.device_type == "cuda":
            if masked:
                return 10, "sdpa with a materialised mask (O(N^2) memory): last resort"
            return 80, "cuDNN through SDPA: the fastest torch kernel for dense attention"
        if masked:
            return 90, "CPU: SDPA with a materialised mask (exact, fine at CPU sizes)"
        return 100, "CPU: SDPA's fused CPU kernel"

    def kernel_name(self, problem: AttentionProblem, inputs=None) -> str:
        """'sdpa/cuDNN', 'sdpa/flash', ...: torch's own dispatcher asked which kernel it
        would run for `inputs`, in the order `forward` requests (needs the tensors: the
        choice depends on their strides and sizes)."""
        if inputs is None:
            return "sdpa"
        q, k, v = inputs
        spec = problem.mask
        mask = _cached_mask(spec, problem.seq_len, q.device) if _needs_mask_tensor(spec) else None
        gqa = problem.gqa_group > 1 and not (mask is not None and q.is_cuda)
        if mask is not None and problem.gqa_group > 1 and q.is_cuda:
            k = k.repeat_interleave(problem.gqa_group, dim=1)  # as `forward` does
            v = v.repeat_interleave(problem.gqa_group, dim=1)
        try:
            with sdpa_kernel(_CUDA_ORDER, set_priority=True) if q.is_cuda else nullcontext():
                choice = torch._fused_sdp_choice(
                    q,
                    k,
                    v,
                    attn_mask=mask,
                    dropout_p=0.0,
                    is_causal=spec.causal and mask is None,
                    scale=problem.scale,
                    enable_gqa=gqa,
                )
            return f"sdpa/{_SDPA_NAMES.get(SDPBackend(choice), SDPBackend(choice).name)}"
        except Exception:  # a private torch API: never let the label break a benchmark
            return "sdpa"

    def forward(self, q, k, v, problem: AttentionProblem) -> torch.Tensor:
        """The contract's forward. With a mask tensor on CUDA, K and V are expanded to H_q heads
        (``repeat_interleave``), since the masked CUDA kernels refuse ``enable_gqa``."""
        spec = problem.mask
        gqa = problem.gqa_group > 1
        mask = None
        if _needs_mask_tensor(spec):
            mask = _cached_mask(spec, problem.seq_len, q.device)
            if gqa and q.is_cuda:
                # The masked CUDA kernels refuse enable_gqa; expanding K/V costs only K/V memory.
                k = k.repeat_interleave(problem.gqa_group, dim=1)  # (B, H_q, N, D)
                v = v.repeat_interleave(problem.gqa_group, dim=1)
                gqa = False
        kwargs: dict[str, Any] = dict(
            attn_mask=mask,
            is_causal=spec.causal and mask is None,
            scale=problem.scale,
            enable_gqa=gqa,
        )
        if q.is_cuda:
            with sdpa_kernel(_CUDA_ORDER, set_priority=True):
                return F.scaled_dot_product_attention(q, k, v, **kwargs)
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def _needs_mask_tensor(spec: MaskSpec) -> bool:
    """Plain causal and full attention run without a mask tensor."""
    return spec.pattern != "dense"
