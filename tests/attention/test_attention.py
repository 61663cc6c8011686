"""Every variant x mask x CPU backend against the float64 reference, forward and backward.

The reference (`sqa_nas.attention.reference`) is written from the definitions, not from the
layer, the masks or the RoPE code it checks. Tolerance relative to torch's own error:
|out - ref64| <= 2 |ref32 - ref64| + 1e-6 max|ref64|, where ref32 is the same plain formula in
float32 (the flash-attention test habit); gradients share one scale, the largest. Lengths are
odd and larger than the windows and block sizes, so a mask bug changes the output; RoPE and
biases are on in some cases and off in others; gradients are compared for the input and every
parameter, biases included.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.attention.flex_attention as fa

from sqa_nas.attention import AttentionConfig, BlockSparseLayout, MaskSpec
from sqa_nas.attention.reference import reference_layer
from sqa_nas.kernels import flex
from sqa_nas.layer import SparseQueryAttention
from sqa_nas.registry import variant
from sqa_nas.testing import MASKS, assert_within_torch_error

pytestmark = pytest.mark.usefixtures("seeded")

HEADS = ["MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "lSQA", "rSQA"]
SIZES = [(13, 16), (97, 40), (257, 8)]  # (N, head_dim): odd lengths, head_dim not a power of 2


def _options(name: str, mask: str) -> tuple[bool, bool]:
    """(rope, bias): each mask meets both settings of each, over the head layouts."""
    i, j = HEADS.index(name), list(MASKS).index(mask)
    return i % 2 == 0, (i + j) % 2 == 1


def _layer(name, mask: MaskSpec, head_dim, backend, rope, bias=False, seed=0):
    torch.manual_seed(seed)
    cfg = variant(
        name,
        d_model=8 * head_dim,
        n_heads=8,
        head_dim=head_dim,
        backend=backend,
        rope_theta=10_000.0 if rope else None,
        bias=bias,
        causal=mask.causal,
        window=mask.window,
        global_tokens=mask.global_tokens,
        block_sparse=mask.block_sparse,
    )
    layer = SparseQueryAttention(cfg)
    if bias:  # nn.Linear's default biases are small; make them matter
        with torch.no_grad():
            for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
                getattr(layer, p).bias.normal_()
    return layer


@pytest.mark.parametrize("n,head_dim", SIZES)
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("name", HEADS)
def test_forward_and_backward_sdpa(name, mask, n, head_dim):
    rope, bias = _options(name, mask)
    layer = _layer(name, MASKS[mask], head_dim, "sdpa", rope, bias)
    x = torch.randn(2, n, layer.config.d_model, requires_grad=True)
    out = layer(x)
    assert layer.backend_name == "sdpa"
    ref64 = reference_layer(layer, x, torch.float64)
    ref32 = reference_layer(layer, x, torch.float32)
    assert_within_torch_error(out, ref64, ref32, "output")

    # Backward: gradients of the input and of every parameter (weights and biases).
    names, params = zip(*[("x", x), *layer.named_parameters()])
    assert len(params) == 1 + 4 * (2 if bias else 1)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, params, g)
    grads64 = torch.autograd.grad(ref64, params, g.double())
    grads32 = torch.autograd.grad(ref32, params, g)
    # One scale for the backward pass: the key bias's gradient is zero by symmetry without
    # RoPE (`error_and_tolerance`), its own size says nothing about the rounding it carries.
    scale = max(r.abs().max().item() for r in grads64)
    for what, a, r64, r32 in zip(names, grads, grads64, grads32):
        assert_within_torch_error(a, r64, r32, f"d{what}", scale=scale)


@pytest.mark.parametrize("n,head_dim", SIZES)
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("name", HEADS)
def test_forward_flex(name, mask, n, head_dim):
    """FlexAttention on CPU (eager; torch has no flex backward on CPU)."""
    rope, bias = _options(name, mask)
    layer = _layer(name, MASKS[mask], head_dim, "flex", not rope, bias)
    x = torch.randn(2, n, layer.config.d_model)
    with torch.no_grad():
        out = layer(x)
        ref64 = reference_layer(layer, x, torch.float64)
        ref32 = reference_layer(layer, x, torch.float32)
    assert layer.backend_name == "flex"
    assert_within_torch_error(out, ref64, ref32, "output")


def test_flex_refuses_backward_on_cpu_with_reason():
    layer = _layer("SQA", MASKS["causal"], 8, "flex", rope=False)
    x = torch.randn(1, 16, layer.config.d_model, requires_grad=True)
    with pytest.raises(ValueError, match="no backward on CPU.*backends that can: sdpa"):
        layer(x)


def test_auto_backend_on_cpu_is_recorded_with_reason():
    layer = _layer("xSQA", MASKS["flex-causal"], 8, "auto", rope=True)
    layer(torch.randn(1, 33, layer.config.d_model))
    assert layer.backend_name == "sdpa"
    assert "CPU" in layer.backend_reason


def test_mask_shape_and_none_for_full_attention():
    full = _layer("MHA", MASKS["full"], 8, "auto", rope=False)
    assert full.mask(10) is None
    causal = _layer("MHA", MaskSpec(True, window=7), 8, "auto", rope=False)
    m = causal.mask(10)
    assert m.dtype == torch.bool and m.shape == (10, 10)
    assert m[9, 2] and not m[9, 1] and not m[2, 3]  # window 7: 9 sees 2..9


def test_projection_shapes_follow_the_paper():
    c = AttentionConfig(d_model=256, n_heads=16, n_q_heads=8, n_kv_heads=4)
    layer = SparseQueryAttention(c)
    assert layer.q_proj.weight.shape == (8 * 16, 256)
    assert layer.k_proj.weight.shape == (4 * 16, 256)
    assert layer.v_proj.weight.shape == (4 * 16, 256)
    assert layer.o_proj.weight.shape == (256, 8 * 16)  # H_q, not H, feeds W_O
    rsqa = SparseQueryAttention(variant("rSQA", d_model=256, n_heads=16))
    assert rsqa.o_proj.weight.shape == (256, 8 * 16)  # rSQA: H_kv = 8 heads feed W_O


@pytest.mark.parametrize(
    "name,heads", [("SQA", (8, 4, 2)), ("MQA", (16, 1, 16)), ("rSQA", (8, 8, 1))]
)
def test_the_problem_a_backend_is_asked(name, heads):
    """Kernels see the heads after rSQA's tiling (H_attn = max(H_q, H_kv)), never H_q < H_kv,
    and the layer's mask and the paper's scale 1 / sqrt(D)."""
    layer = SparseQueryAttention(variant(name, d_model=256, n_heads=16, window=5))
    p = layer.problem(33, "cpu", torch.float32, requires_grad=True)
    assert (p.n_q_heads, p.n_kv_heads, p.gqa_group) == heads
    assert (p.head_dim, p.seq_len, p.dtype, p.device_type, p.requires_grad) == (
        16,
        33,
        torch.float32,
        "cpu",
        True,
    )
    assert p.mask == MaskSpec(True, window=5) and p.scale == 16**-0.5


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "window,global_tokens",
    [
        (None, 0),
        (1, 0),
        (5, 0),
        (127, 0),
        (128, 0),
        (300, 0),
        (5, 2),
        (64, 16),
        (100, 200),
        (129, 130),
    ],
)
@pytest.mark.parametrize("n", [1, 77, 128, 300, 513])
def test_band_tiles_are_the_dense_masks_tiles(causal, window, global_tokens, n):
    """Causal / window / global-token block masks are classified tile by tile without the
    N x N mask; every tile agrees with the dense mask's, tails and globals included."""
    if window is None and not causal:
        pytest.skip("bidirectional without a window is full attention: no block mask")
    spec = MaskSpec(causal, window=window, global_tokens=global_tokens if window else 0)
    for ours, dense in zip(flex._band_tiles(spec, n, None), flex._dense_tiles(spec, n, None)):
        assert torch.equal(ours, dense)


def test_only_long_block_sparse_masks_compile_create_block_mask(monkeypatch):
    """Band masks never compile `create_block_mask` (it stalled on the H200 for window
    4096 + 16 global tokens), even at 200k tokens; block-sparse ones do past the limit."""
    calls = []
    assert flex.create_block_mask is fa.create_block_mask
    monkeypatch.setattr(
        flex, "create_block_mask", lambda *a, **k: calls.append(a[3]) or "compiled"
    )
    flex._block_mask.cache_clear()
    cpu = torch.device("cpu")
    long = flex._block_mask(MaskSpec(True, window=4096, global_tokens=16), 200_000, cpu, True)
    assert calls == [] and long.seq_lengths == (200_000, 200_000)
    sparse = MaskSpec(True, block_sparse=BlockSparseLayout(block_size=128, local_blocks=1))
    assert flex._block_mask(sparse, 300, cpu, True).seq_lengths == (300, 300) and calls == []
    n = flex.DENSE_BLOCK_MASK_MAX_LEN + 1
    assert flex._block_mask(sparse, n, cpu, True) == "compiled" and calls == [n]
    flex._block_mask.cache_clear()
