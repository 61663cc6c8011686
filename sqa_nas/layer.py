"""`SparseQueryAttention`: the attention layer of every variant, run through a kernel backend.

It sits above the registry (it asks `select_backend` for a kernel) and below the model.
"""

from __future__ import annotations

import torch
from torch import nn

from sqa_nas.attention.config import AttentionConfig
from sqa_nas.attention.masks import MaskSpec, dense_mask
from sqa_nas.attention.problem import AttentionProblem
from sqa_nas.attention.rope import apply_rope, rope_tables
from sqa_nas.kernels.base import AttentionBackend
from sqa_nas.registry import get_backend, select_backend


class SparseQueryAttention(nn.Module):
    """Multi-head attention with H_q query heads and H_kv key/value heads.

    x: (B, N, d_model) -> (B, N, d_model). Projections (paper section 3.2, and the authors'
    code): ``q_proj`` d_model -> H_q * D, ``k_proj`` / ``v_proj`` d_model -> H_kv * D,
    ``o_proj`` max(H_q, H_kv) * D -> d_model. The kernel is chosen per device and dtype by
    `sqa_nas.registry.select_backend`; `backend_name` / `backend_reason` say which and why.
    """

    rope_cos: torch.Tensor  # (L, D) float64 buffers of rotary layers, L >= any seq_len seen
    rope_sin: torch.Tensor

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.config = c = config
        d = c.head_dim
        assert d is not None  # AttentionConfig fills it
        self.q_proj = nn.Linear(c.d_model, c.n_q_heads * d, bias=c.bias)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_heads * d, bias=c.bias)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_heads * d, bias=c.bias)
        # H_q (or H_kv for rSQA), not H, sets W_O's input: paper section 3.2.
        self.o_proj = nn.Linear(c.attn_heads * d, c.d_model, bias=c.bias)
        self.mask_spec = MaskSpec.of(c)
        # (seq_len, device type, dtype, requires_grad) -> (backend, reason, problem): filled
        # outside any trace (`choose`), so a compiled forward only looks its choice up.
        self._choices: dict[tuple, tuple[AttentionBackend, str, AttentionProblem]] = {}
        self._last: tuple[AttentionBackend, str] | None = None
        if c.rope_theta is not None:  # float64, cast per call; `choose` sizes them
            self.register_buffer("rope_cos", torch.empty(0, d, dtype=torch.float64), False)
            self.register_buffer("rope_sin", torch.empty(0, d, dtype=torch.float64), False)
        if c.backend != "auto":
            get_backend(c.backend)  # unknown names fail here, not at the first forward

    def problem(
        self, seq_len: int, device_type: str, dtype: torch.dtype, requires_grad: bool = False
    ) -> AttentionProblem:
        """What this layer asks its backend at length `seq_len` (H_attn query heads)."""
        c = self.config
        assert c.head_dim is not None  # AttentionConfig fills it
        return AttentionProblem(
            self.mask_spec,
            c.attn_heads,
            c.n_kv_heads,
            c.head_dim,
            seq_len,
            dtype,
            device_type,
            c.scale,
            requires_grad,
        )

    def select(self, problem: AttentionProblem) -> tuple[AttentionBackend, str]:
        """(backend, reason) for `problem`, cached per layer."""
        key = (problem.seq_len, problem.device_type, problem.dtype, problem.requires_grad)
        if key not in self._choices:  # the rest of a problem is fixed by the config
            self._choices[key] = (*select_backend(problem, self.config.backend), problem)
        backend, reason, _ = self._choices[key]
        return backend, reason

    def choose(
        self, seq_len: int, device: torch.device, dtype: torch.dtype, requires_grad: bool
    ) -> tuple[AttentionBackend, str]:
        """Choose the backend for calls of length `seq_len` with q in `dtype` on `device` and
        size the RoPE tables, before any trace: a compiled forward then only reads what this
        chose (`torch.compile(..., fullgraph=True)` needs that; `SQATransformer.prepare` calls
        it for every layer). Chooses with and without gradients; returns (backend, reason)
        of `requires_grad`, which `backend_name` reports."""
        self._rope_tables(seq_len)
        for grad in (not requires_grad, requires_grad):  # both: a no-grad call traces too
            choice = self.select(self.problem(seq_len, device.type, dtype, grad))
        self._last = choice
        return choice

    def _current_choice(self) -> tuple[AttentionBackend, str]:
        if self._last is None:  # before any forward: what a training call here would use
            w = self.q_proj.weight
            return self.select(self.problem(1024, w.device.type, w.dtype, w.requires_grad))
        return self._last

    @property
    def backend_name(self) -> str:
        """The name of the backend the last forward used (before any forward: the one a
        training call of length 1024 on the weights' device and dtype would use)."""
        return self._current_choice()[0].name

    @property
    def backend_reason(self) -> str:
        """Why `backend_name` was chosen, in words (same timing as `backend_name`)."""
        return self._current_choice()[1]

    def mask(self, n: int) -> torch.Tensor | None:
        """Which keys each query may see: bool (N, N), True = may attend; None when every
        query sees every key (dense, non-causal)."""
        return dense_mask(self.mask_spec, n, self.q_proj.weight.device)

    def _rope_tables(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` rows of the cos / sin buffers (float64), grown first when shorter:
        outside a trace, as `choose` does it before compiling."""
        if n > self.rope_cos.shape[0]:
            c = self.config
            assert c.head_dim is not None and c.rope_theta is not None  # rotary layers only
            size = 1 << (n - 1).bit_length()  # powers of two: few regrowths
            device = self.rope_cos.device
            self.rope_cos, self.rope_sin = rope_tables(
                size, c.head_dim, c.rope_theta, device, torch.float64
            )
        return self.rope_cos[:n], self.rope_sin[:n]

    def project(self, x: torch.Tensor):
        """q (B, H_attn, N, D), k and v (B, H_kv, N, D): projected, rotated, rSQA-tiled."""
        c = self.config
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, c.n_q_heads, c.head_dim).transpose(1, 2)  # (B, H_q, N, D)
        k = self.k_proj(x).view(b, n, c.n_kv_heads, c.head_dim).transpose(1, 2)  # (B, H_kv, N, D)
        v = self.v_proj(x).view(b, n, c.n_kv_heads, c.head_dim).transpose(1, 2)
        if c.rope_theta is not None:
            cos, sin = self._rope_tables(n)
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if c.is_reverse:
            # rSQA: tile the queries so KV head j is read by query head j % H_q.
            q = q.repeat(1, c.n_kv_heads // c.n_q_heads, 1, 1)  # (B, H_kv, N, D)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, d_model) -> (B, N, d_model)."""
        b, n, _ = x.shape
        q, k, v = self.project(x)
        grad = torch.is_grad_enabled() and q.requires_grad
        key = (n, q.device.type, q.dtype, grad)
        if key not in self._choices:  # in a trace, a graph break: `choose` comes first
            self.select(self.problem(n, q.device.type, q.dtype, grad))
        backend, reason, problem = self._choices[key]
        if not torch.compiler.is_compiling():  # a traced forward writes no Python state
            self._last = backend, reason
        y = backend.forward(q, k, v, problem)  # (B, H_attn, N, D)
        assert self.config.head_dim is not None  # AttentionConfig fills it
        y = y.transpose(1, 2).reshape(b, n, self.config.attn_heads * self.config.head_dim)
        return self.o_proj(y)

    def extra_repr(self) -> str:
        """Head counts, head_dim, mask and requested backend, for ``print(model)``."""
        c = self.config
        return (
            f"H={c.n_heads}, H_q={c.n_q_heads}, H_kv={c.n_kv_heads}, head_dim={c.head_dim}, "
            f"{self.mask_spec.describe()}, backend={c.backend}"
        )
