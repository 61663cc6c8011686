"""What a benchmark row needs in memory, from formulas, so that `BenchSettings.validate`
refuses a row no device of the run can hold before anything is allocated (`--seq-lens
1000000000`, `--batch 1000000000`, a huge `--head-dim`).

An upper bound per row, with e the bytes of the row's dtype, B the batch, N the length,
H_q / H_kv the layer's heads and D its head_dim; the row's parts run one after another, so
it needs its weights plus the largest of:

- the timed call: q, k, v and the output, e B N D (2 H_q + 2 H_kv), doubled with a backward
  (their gradients); a masked GQA row on CUDA adds K and V expanded to H_q heads; the layer
  scope adds its projections' inputs and outputs (e B N d_model 4, doubled with a
  backward); the model scope counts its activations as `analytics.activation_bytes` does;
  masks: a masked row's dense (N, N) mask, built through int64 temporaries (17 bytes a pair,
  up to sdpa's `MAX_MASKED_SEQ_LEN`), FlexAttention's eager path on the CPU its float32
  scores and probabilities (8 B H_q N^2, doubled with a backward); and the density count's
  three int64 vectors of N;
- the correctness check at L = min(N, check_len): the float64 reference's (H_q, L, L) scores
  and probabilities, and the working dtype's (H_q L^2 (16 + 2 e), doubled with a backward),
  and its mask's int64 index temporaries (24 L^2).

Weights: the layer's parameters in the row's dtype, twice (the timed layer and the checked
one); the model scope's float32 model, with gradients for a backward, and autocast's copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqa_nas.analytics import (
    MASK_BUILD_BYTES,
    RUNTIME_BYTES,
    activation_bytes,
    format_bytes,
    layer_params,
    param_count,
)
from sqa_nas.attention.config import AttentionConfig
from sqa_nas.kernels.sdpa import MAX_MASKED_SEQ_LEN
from sqa_nas.model import ModelConfig


class BenchSettings(Protocol):
    """What a row's estimate reads of the benchmark's settings: `settings.BenchSettings` has
    it. Described here, not imported, because settings.py calls `row_memory` to validate."""

    @property
    def batch(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def scope(self) -> str: ...
    @property
    def check(self) -> bool: ...
    @property
    def check_len(self) -> int: ...

    def layer_config(self, name: str) -> AttentionConfig: ...
    def model_config(self, name: str) -> ModelConfig: ...


@dataclass(frozen=True)
class RowMemory:
    """A row's estimate by part (`module docstring`), in bytes."""

    weights: int
    timed: int  # the timed call's tensors and masks
    check: int  # the correctness check
    runtime: int = RUNTIME_BYTES

    @property
    def total(self) -> int:
        """Weights, the larger of the timed call and the check (they run in turn), runtime."""
        return self.weights + max(self.timed, self.check) + self.runtime

    def describe(self) -> str:
        """The parts in words, e.g. "weights 67 MB, timed call 8.6 GB, check 34 MB"."""
        parts = (("weights", self.weights), ("timed call", self.timed), ("check", self.check))
        return ", ".join(f"{name} {format_bytes(b)}" for name, b in parts if b)


def row_memory(settings: BenchSettings, name: str, n: int, dtype_bytes: int) -> RowMemory:
    """The memory the row of variant `name` at `n` tokens of `settings` needs (an upper
    bound: see the module docstring); formulas only."""
    c = settings.layer_config(name)
    assert c.head_dim is not None  # AttentionConfig fills it
    e, b, grad = dtype_bytes, settings.batch, settings.mode != "fwd"
    cuda = settings.device.startswith("cuda")
    if settings.scope == "model":
        config = settings.model_config(name)
        params = param_count(config)
        weights = params * (4 + (4 if grad else 0) + (e if e < 4 else 0))
        timed = activation_bytes(
            config, n, b, device_type="cuda" if cuda else "cpu", backward=grad, dtype_bytes=e
        )
    else:
        weights = 2 * e * layer_params(c, 0)
        timed = _kernel_tensors(c, n, b, e, cuda) * (2 if grad else 1)
        if settings.scope == "layer":
            timed += 4 * e * b * n * c.d_model * (2 if grad else 1)
        timed += _masks(c, n, b, cuda, grad)
    timed += 24 * n  # the density count (`count_visible`)
    check = 0
    if settings.check:
        length = min(n, settings.check_len)
        check = c.attn_heads * length * length * (16 + 2 * e) * (2 if grad else 1)
        check += 24 * length * length
    return RowMemory(weights, timed, check)


def _kernel_tensors(c: AttentionConfig, n: int, b: int, e: int, cuda: bool) -> int:
    """q, k, v and the output of one call (K and V expanded for sdpa's masked CUDA GQA)."""
    assert c.head_dim is not None
    heads = 2 * c.attn_heads + 2 * c.n_kv_heads
    if cuda and c.pattern != "dense" and c.n_kv_heads < c.attn_heads:
        heads += 2 * c.attn_heads
    return e * b * n * c.head_dim * heads


def _masks(c: AttentionConfig, n: int, b: int, cuda: bool, grad: bool) -> int:
    """A masked row's dense mask (sdpa), and the eager FlexAttention scores on the CPU."""
    scores = 0
    if not cuda and c.backend == "flex":
        scores = 8 * b * c.attn_heads * n * n * (2 if grad else 1)
    if c.pattern == "dense" or n > MAX_MASKED_SEQ_LEN:
        return scores
    return scores + (MASK_BUILD_BYTES + 1) * n * n
