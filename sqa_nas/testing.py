"""`BackendContract`: the test class every attention backend must pass.

A plugin author subclasses it in their own test suite (optuna's `BasicSamplerTestCase`
habit)::

    from sqa_nas.testing import BackendContract

    class TestMyBackend(BackendContract):
        backend = MyBackend()
        device = "cuda"
        dtype = torch.bfloat16

For every mask family and head layout the backend either runs and matches the float64
reference within twice the error of the plain formula in the working dtype, or refuses in
words through `unsupported()`, and an explicit request for it then fails with that reason.
"""

from __future__ import annotations

import pytest
import torch

from sqa_nas.attention.config import BlockSparseLayout
from sqa_nas.attention.masks import MaskSpec
from sqa_nas.attention.problem import AttentionProblem
from sqa_nas.attention.reference import error_and_tolerance, reference_attention, reference_mask
from sqa_nas.errors import UserError
from sqa_nas.kernels.base import AttentionBackend
from sqa_nas.registry import list_backends, select_backend

#: One mask of each family, causal and not, with windows and layouts smaller than the
#: lengths tested (so the mask decides), and global tokens inside the sequence.
MASKS = {
    "full": MaskSpec(False),
    "causal": MaskSpec(True),
    "window": MaskSpec(False, window=9),
    "window-causal": MaskSpec(True, window=17),
    "flex": MaskSpec(False, window=5, global_tokens=4),
    "flex-causal": MaskSpec(True, window=12, global_tokens=8),
    "block": MaskSpec(
        False,
        block_sparse=BlockSparseLayout(
            block_size=32, local_blocks=0, global_blocks=1, random_blocks=1, seed=1
        ),
    ),
    "block-causal": MaskSpec(
        True,
        block_sparse=BlockSparseLayout(
            block_size=16, local_blocks=1, global_blocks=1, random_blocks=2, seed=2
        ),
    ),
}
CONTRACT_HEADS = [(8, 8), (8, 2), (8, 1), (4, 4)]  # (H_q, H_kv) as the kernel sees them


def assert_within_torch_error(
    out: torch.Tensor,
    ref64: torch.Tensor,
    plain: torch.Tensor,
    what: str,
    scale: float | None = None,
) -> None:
    """Fail unless |out - ref64| <= 2 |plain - ref64| + 1e-6 scale (`error_and_tolerance`:
    `plain` is the same formula evaluated in out's dtype; `scale` defaults to max|ref64|)."""
    err, tol = error_and_tolerance(out, ref64, plain, scale=scale)
    assert err <= tol, f"{what}: error {err:.3g} > tolerance {tol:.3g}"


class BackendContract:
    """Subclass with `backend` set (and `device`, `dtype` where the CPU float32 defaults do not
    fit); pytest then runs the tests below for it (the module docstring says what they check).
    Inputs are (2, H, seq_len, head_dim) with seq_len 131 and head_dim 32 unless overridden."""

    backend: AttentionBackend
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    seq_len: int = 131
    head_dim: int = 32

    @pytest.fixture(autouse=True)
    def _available(self):
        why_not = self.backend.availability()
        if why_not:
            pytest.skip(f"{self.backend.name}: {why_not}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")

    def _problem(self, mask: MaskSpec, hq: int, hkv: int, grad: bool) -> AttentionProblem:
        return AttentionProblem(
            mask,
            hq,
            hkv,
            self.head_dim,
            self.seq_len,
            self.dtype,
            torch.device(self.device).type,
            self.head_dim**-0.5,
            grad,
        )

    def _inputs(self, hq: int, hkv: int, grad: bool):
        gen = torch.Generator().manual_seed(hq * 31 + hkv)
        shape = (2, None, self.seq_len, self.head_dim)
        return [
            torch.randn(shape[0], h, *shape[2:], generator=gen)
            .to(self.device, self.dtype)
            .requires_grad_(grad)
            for h in (hq, hkv, hkv)
        ]

    def test_describes_itself(self):
        """The backend has a name and a one-line description for tables."""
        assert self.backend.name and self.backend.name != "?"
        assert isinstance(self.backend.description, str) and self.backend.description

    @pytest.mark.parametrize("heads", CONTRACT_HEADS, ids=lambda h: f"{h[0]}q{h[1]}kv")
    @pytest.mark.parametrize("mask", list(MASKS))
    def test_forward_matches_reference_or_refuses(self, mask, heads):
        """Every mask family x (H_q, H_kv) layout: a forward within tolerance of float64, or a
        refusal in words."""
        hq, hkv = heads
        self._run(MASKS[mask], hq, hkv, grad=False)

    @pytest.mark.parametrize("mask", ["causal", "window-causal", "flex-causal"])
    def test_backward_matches_reference_or_refuses(self, mask):
        """dq, dk, dv for causal, window and flex masks at 8 query / 2 KV heads: within tolerance
        of float64, or a refusal in words."""
        self._run(MASKS[mask], 8, 2, grad=True)

    def _run(self, mask: MaskSpec, hq: int, hkv: int, grad: bool) -> None:
        problem = self._problem(mask, hq, hkv, grad)
        why_not = self.backend.unsupported(problem)
        if why_not is not None:
            assert isinstance(why_not, str) and why_not.strip(), "refusals must say why"
            if self.backend.name in {b.name for b in list_backends()}:
                with pytest.raises(UserError, match="cannot run this layer"):
                    select_backend(problem, self.backend.name)
            return
        score, why = self.backend.priority(problem)
        assert isinstance(score, int | float) and isinstance(why, str) and why
        q, k, v = self._inputs(hq, hkv, grad)
        out = self.backend.forward(q, k, v, problem)
        assert out.shape == q.shape and out.dtype == q.dtype
        m = reference_mask(mask, self.seq_len, q.device)
        q64, k64, v64 = (t.detach().double().requires_grad_(grad) for t in (q, k, v))
        ref64 = reference_attention(q64, k64, v64, m, problem.scale)
        q_low, k_low, v_low = (t.detach().requires_grad_(grad) for t in (q, k, v))
        ref_low = reference_attention(q_low, k_low, v_low, m, problem.scale)
        assert_within_torch_error(out, ref64, ref_low, "out")
        if grad:
            gen = torch.Generator().manual_seed(7)
            g = torch.randn(out.shape, generator=gen).to(out)  # seeded upstream gradient
            grads = torch.autograd.grad(out, (q, k, v), g)
            grads64 = torch.autograd.grad(ref64, (q64, k64, v64), g.double())
            grads_low = torch.autograd.grad(ref_low, (q_low, k_low, v_low), g)
            for name, a, r64, rl in zip("qkv", grads, grads64, grads_low):
                assert_within_torch_error(a, r64, rl, f"d{name}")
