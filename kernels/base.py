"""The contract every attention backend fulfils.

A backend computes ``softmax(q k^T * scale + mask) v`` for one attention problem:

    q: (B, H_q, N, D)    k, v: (B, H_kv, N, D)    ->    out: (B, H_q, N, D)

with H_q a multiple of H_kv, query head i reading KV head ``i // (H_q // H_kv)`` (GQA /
``repeat_interleave``), and the mask given by a `MaskSpec` (True = may attend). rSQA's query
tiling happens in the layer before the kernel, so kernels only ever see H_q >= H_kv.

Adding a backend = one file here defining a subclass + one `register_backend` call (or an
entry point in the ``sqa_nas.backends`` group). `tests/test_backend_contract.py` holds the
test class a new backend must pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sqa_nas.attention.masks import MaskSpec


@dataclass(frozen=True)
class AttentionProblem:
    """Everything a backend needs to decide whether, and how well, it can run a call."""

    mask: MaskSpec
    n_q_heads: int
    n_kv_heads: int
    head_dim: int
    seq_len: int
    dtype: torch.dtype
    device_type: str  # "cpu" or "cuda"
    scale: float
    requires_grad: bool = False  # will a backward pass follow?

    @property
    def gqa_group(self) -> int:
        return self.n_q_heads // self.n_kv_heads

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor, mask: MaskSpec, scale: float):
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k))
        return cls(mask, q.shape[1], k.shape[1], q.shape[-1], q.shape[2], q.dtype,
                   q.device.type, scale, grad)


class AttentionBackend:
    """Base class. Subclasses set `name` and override `availability`, `unsupported`,
    `priority` and `forward`."""

    name: str = "?"
    #: One line for tables: what kernel library this is.
    description: str = ""

    def availability(self) -> str | None:
        """None when the backend can run on this machine at all, else why not."""
        return None

    def unsupported(self, problem: AttentionProblem) -> str | None:
        """None when this backend can run `problem`, else a reason in words."""
        raise NotImplementedError

    def priority(self, problem: AttentionProblem) -> tuple[int, str]:
        """(score, why) for automatic selection; the highest score among backends that
        support the problem wins, unless a measured order applies (`select_backend`, with
        `sqa_nas.kernels.calibration.measured_order`). Each score cites what it rests on."""
        return 0, "no preference"

    def measured_as(self) -> str:
        """The name measured orders (`sqa_nas.kernels.calibration`) know this backend's
        kernel by: its own name, unless what runs depends on what is installed."""
        return self.name

    def forward(self, q, k, v, problem: AttentionProblem) -> torch.Tensor:
        raise NotImplementedError

    def kernel_name(self, problem: AttentionProblem, inputs=None) -> str:
        """Which kernel runs `problem`, for result tables ('flash-attn-4', 'sdpa/cuDNN').
        `inputs`, the (q, k, v) a call would get, lets a backend that dispatches on the
        tensors themselves (SDPA) ask its dispatcher; without them it may answer less
        precisely."""
        return self.name

    def __repr__(self) -> str:
        return f"<backend {self.name}>"
