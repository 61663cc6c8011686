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

from .base import AttentionBackend, AttentionProblem


@functools.cache
def _load():
    """(function, flavour, error): the best flash-attn entry point installed."""
    errors = []
    for module, flavour in (("flash_attn.cute", "flash-attn-4"),
                            ("flash_attn_interface", "flash-attn-3"),
                            ("flash_attn", "flash-attn-2")):
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
    name = "flash_attn"
    description = "flash-attn (FA4 CuTe DSL, else FA3/FA2), GQA and windows native"

    def availability(self) -> str | None:
        fn, _, error = _load()
        if fn is None:
            return error
        if not torch.cuda.is_available():
            return "flash-attn needs a CUDA GPU; none is visible"
        return None

    @property
    def flavour(self) -> str | None:
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
        return None

    def priority(self, problem: AttentionProblem) -> tuple[int, str]:
        if self.flavour == "flash-attn-4":
            return 100, "flash-attn-4: the fastest measured kernel for dense and window masks"
        return 75, f"{self.flavour}: native GQA and sliding windows"

    def forward(self, q, k, v, problem: AttentionProblem) -> torch.Tensor:
        fn, flavour, _ = _load()
        w = problem.mask.window
        none = None if flavour == "flash-attn-4" else -1  # "no limit" spelled per version
        window = (none, none) if w is None else (w, 0 if problem.mask.causal else w)
        out = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),  # (B, N, H, D)
                 softmax_scale=problem.scale, causal=problem.mask.causal, window_size=window)
        if isinstance(out, tuple):  # flash-attn-4 returns (out, lse)
            out = out[0]
        return out.transpose(1, 2)  # (B, H_q, N, D)
