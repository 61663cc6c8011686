"""flash-attn: flash-attn-4 (`flash_attn.cute`, CuTe DSL) when present, else FA3 / FA2.

Layout (B, N, H, D); GQA native (query head i reads KV head i // (H_q // H_kv)); sliding
windows native through ``window_size=(left, right)``: query i sees keys i - left .. i + right,
the convention `AttentionConfig.window` follows. Global tokens and block-sparse layouts go to
FlexAttention (on flash-attn-4's FLASH backend when installed).

Measured on the H200: flash-attn-4 is the fastest kernel for dense and windowed attention
(618-708 TFLOP/s causal at head_dim 128, 1.55x cuDNN at head_dim 16).
"""

from __future__ import annotations

import functools
import importlib

import torch

from sqa_nas.attention.problem import AttentionProblem

from .base import AttentionBackend

#: Below this head_dim flash-attn-4's backward is wrong (experiments/fa4_backward_check.py
#: on an H200, 4.0.0b36: head_dim 16 wrong; 32, 64 and 128 within bf16 error for every
#: layout), so training there goes to the next backend.
FA4_MIN_BACKWARD_HEAD_DIM = 32


@functools.cache
def _load():
    """(function, flavour, error): the best flash-attn entry point installed."""
    errors = []
    for module, flavour in (
        ("flash_attn.cute", "flash-attn-4"),
        ("flash_attn_interface", "flash-attn-3"),
        ("flash_attn", "flash-attn-2"),
    ):
        try:
            return importlib.import_module(module).flash_attn_func, flavour, None
        except ModuleNotFoundError:
            continue
        except Exception as exc:  # installed, but a broken CUDA extension
            errors.append(f"{module}: {type(exc).__name__}: {exc}".splitlines()[0])
    if errors:
        return None, None, "flash-attn failed to import (" + "; ".join(errors) + ")"
    return None, None, "flash-attn is not installed (pip install flash-attn-4, or sqa-nas[flash])"


class FlashAttnBackend(AttentionBackend):
    """flash-attn's `flash_attn_func`.

    ``pack_gqa`` (flash-attn-4 only): fold the H_q / H_kv query heads that share a KV head
    into one tile row, so each KV tile is loaded once per group. None keeps flash-attn-4's
    own rule (pack whenever H_q > H_kv); False / True force it, for measuring. Split-KV
    (``num_splits``), the other remedy for grids too small to fill the GPU, is refused by
    flash-attn-4 on SM90 ("SplitKV not supported on SM 9.0"), so a small head count at
    batch 1 is filled by batching or packing only.
    """

    name = "flash_attn"
    description = "flash-attn (FA4 CuTe DSL, else FA3/FA2), GQA and windows native"

    def __init__(self, *, pack_gqa: bool | None = None) -> None:
        self.pack_gqa = pack_gqa

    def availability(self) -> str | None:
        fn, _, error = _load()
        if fn is None:
            return error
        if not torch.cuda.is_available():
            return "flash-attn needs a CUDA GPU; none is visible"
        return None

    @property
    def flavour(self) -> str | None:
        """The flash-attn installed: "flash-attn-4", "flash-attn-3", "flash-attn-2", or None."""
        return _load()[1]

    def unsupported(self, problem: AttentionProblem) -> str | None:
        if problem.device_type != "cuda":
            return "flash-attn runs on CUDA only"
        if problem.dtype not in (torch.float16, torch.bfloat16):
            return f"flash-attn needs float16 or bfloat16, got {problem.dtype}"
        if problem.head_dim % 8 or not 8 <= problem.head_dim <= 256:
            return f"flash-attn needs head_dim in 8..256 divisible by 8, got {problem.head_dim}"
        if problem.mask.pattern in ("flex", "block_sparse"):
            return f"flash_attn_func has no {problem.mask.pattern} mask here; use 'flex'"
        if (
            problem.requires_grad
            and problem.head_dim < FA4_MIN_BACKWARD_HEAD_DIM
            and self.flavour == "flash-attn-4"
        ):
            return (
                f"flash-attn-4's backward gives wrong gradients at head_dim "
                f"{problem.head_dim} (measured on an H200 with 4.0.0b36 at head_dim 16: "
                f"dQ off by ~100% for every head layout, dK/dV too with GQA; "
                f"experiments/fa4_backward_check.py); it runs forward-only below head_dim "
                f"{FA4_MIN_BACKWARD_HEAD_DIM}"
            )
        return None

    def priority(self, problem: AttentionProblem) -> tuple[int, str]:
        if self.flavour == "flash-attn-4":
            return 100, "flash-attn-4: the fastest measured kernel for dense and window masks"
        return 75, f"{self.flavour}: native GQA and sliding windows"

    def measured_as(self) -> str:
        # The measured orders name flash-attn-4 "flash_attn"; FA2 / FA3 were not measured.
        return self.name if self.flavour == "flash-attn-4" else str(self.flavour)

    def _packs(self, problem: AttentionProblem) -> bool:
        return self.pack_gqa if self.pack_gqa is not None else problem.gqa_group > 1

    def kernel_name(self, problem: AttentionProblem, inputs=None) -> str:
        flavour = self.flavour or self.name
        if flavour == "flash-attn-4" and problem.gqa_group > 1:
            return f"{flavour} (pack_gqa={self._packs(problem)})"
        return flavour

    def forward(self, q, k, v, problem: AttentionProblem) -> torch.Tensor:
        """The contract's forward; q, k, v are transposed to flash-attn's (B, N, H, D) layout and
        the output back to (B, H_q, N, D). GQA and windows are passed natively."""
        fn, flavour, _ = _load()
        w = problem.mask.window
        fa4 = flavour == "flash-attn-4"
        none = None if fa4 else -1  # "no limit" spelled per version
        window = (none, none) if w is None else (w, 0 if problem.mask.causal else w)
        extra = {"pack_gqa": self.pack_gqa} if fa4 and self.pack_gqa is not None else {}
        out = fn(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),  # (B, N, H, D)
            softmax_scale=problem.scale,
            causal=problem.mask.causal,
            window_size=window,
            **extra,
        )
        if isinstance(out, tuple):  # flash-attn-4 returns (out, lse)
            out = out[0]
        return out.transpose(1, 2)  # (B, H_q, N, D)
