"""The contract every attention backend fulfils.

A backend computes ``softmax(q k^T * scale + mask) v`` for one `AttentionProblem`:

    q: (B, H_q, N, D)    k, v: (B, H_kv, N, D)    ->    out: (B, H_q, N, D)

with H_q a multiple of H_kv, query head i reading KV head ``i // (H_q // H_kv)`` (GQA /
``repeat_interleave``), and the mask given by a `MaskSpec` (True = may attend). rSQA's query
tiling happens in the layer before the kernel, so kernels only ever see H_q >= H_kv.

Adding a backend = one file here defining a subclass + one `register_backend` call (or an
entry point in the ``sqa_nas.backends`` group). `sqa_nas.testing.BackendContract` is the test
class a new backend must pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from sqa_nas.attention.problem import AttentionProblem


class AttentionBackend(ABC):
    """Base class. Subclasses set `name` and implement `unsupported` and `forward`; they
    override `availability`, `priority` and `kernel_name` where the defaults do not fit."""

    name: str = "?"
    #: One line for tables: what kernel library this is.
    description: str = ""

    def availability(self) -> str | None:
        """None when the backend can run on this machine at all, else why not."""
        return None

    @abstractmethod
    def unsupported(self, problem: AttentionProblem) -> str | None:
        """None when this backend can run `problem`, else a reason in words."""

    def priority(self, problem: AttentionProblem) -> tuple[int, str]:
        """(score, why) for automatic selection; the highest score among backends that
        support the problem wins, unless a measured order applies (`select_backend`, with
        `sqa_nas.kernels.calibration.measured_order`). Each score cites what it rests on."""
        return 0, "no preference"

    def measured_as(self) -> str:
        """The name measured orders (`sqa_nas.kernels.calibration`) know this backend's
        kernel by: its own name, unless what runs depends on what is installed."""
        return self.name

    @abstractmethod
    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, problem: AttentionProblem
    ) -> torch.Tensor:
        """Attention for `problem`.

        Arguments:
            q: (B, H_q, N, D); k, v: (B, H_kv, N, D), in `problem.dtype`.
        Return:
            out: (B, H_q, N, D), same dtype as q.
        """

    def kernel_name(self, problem: AttentionProblem, inputs=None) -> str:
        """Which kernel runs `problem`, for result tables ('flash-attn-4', 'sdpa/cuDNN').
        `inputs`, the (q, k, v) a call would get, lets a backend that dispatches on the
        tensors themselves (SDPA) ask its dispatcher; without them it may answer less
        precisely."""
        return self.name

    def __repr__(self) -> str:
        return f"<backend {self.name}>"
