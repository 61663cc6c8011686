"""Analytics against numbers worked out by hand, for layers where H_q != H_kv (GQA, MQA, rSQA)
and for a mixed per-layer model, plus the KV-cache constraint of a search space and the
memory estimate's parts.

Every expected value below is written as the arithmetic of the formula it checks, with
literal sizes, so that it does not depend on the library. The shapes: d_model D = 64,
H = 8 reference heads, head_dim d = 64 / 8 = 8, ffn_dim F = 128, vocabulary V = 256, and a
sequence of N = 16 tokens (small enough to count the visible (query, key) pairs by hand).

Per layer, projections: q D x (H_q d), k and v D x (H_kv d) each, o (max(H_q, H_kv) d) x D;
two RMSNorm weights of D; SwiGLU 3 D F. Model: embedding V D, LM head V D unless tied, final
norm D. Forward FLOPs per token: 2 per weight of the projections and the FFN, 2 D V for the LM
head, and 4 max(H_q, H_kv) d (visible pairs) / N for Q K^T and P V. KV cache per token: K and
V, H_kv d values each, 2 bytes (bf16) per value.
"""

from __future__ import annotations

import pytest

from sqa_nas.analytics import analyze, memory_estimate
from sqa_nas.model import ModelConfig
from sqa_nas.search.space import parse_space

SHAPE = dict(vocab_size=256, d_model=64, n_heads=8, ffn_dim=128)
N = 16

# Visible (query, key) pairs at N = 16, counted by hand:
CAUSAL_PAIRS = 16 * 17 // 2  # query i sees keys 0..i: 1 + 2 + ... + 16 = 136
# window 3, causal: query i sees keys max(0, i - 3)..i: 1, 2, 3, then 4 for i = 3..15
WINDOW3_PAIRS = 1 + 2 + 3 + 4 * 13  # 58
# window 3 + 2 global tokens, causal: the window, plus keys 0 and 1 once they left it:
# i = 0..3 as the window (1, 2, 3, 4); i = 4 adds key 0 (5); i >= 5 adds keys 0 and 1 (6)
FLEX3_2_PAIRS = 1 + 2 + 3 + 4 + 5 + 6 * 11  # 81

# The dense MHA layer every model is compared to: 4 projections of 64 x 64.
MHA_LAYER_PARAMS = 4 * 64 * 64 + 2 * 64 + 3 * 64 * 128
MHA_LAYER_FLOPS = 2 * (4 * 64 * 64) + 2 * (3 * 64 * 128) + 4 * 8 * 8 * CAUSAL_PAIRS / 16


def config(n_layers: int, layers=None, **fields) -> ModelConfig:
    return ModelConfig(**SHAPE, n_layers=n_layers, layers=layers, **fields)


def check(cost, *, layer_params, layer_attn, layer_proj_params, kv_heads, n_layers=2):
    """Every field of a uniform model's cost against its hand-computed layer."""
    ffn_params = 3 * 64 * 128
    layer_flops = layer_attn + 2 * layer_proj_params + 2 * ffn_params
    assert cost.params == n_layers * layer_params + 256 * 64 + 64  # tied head, final norm
    assert cost.attn_flops == pytest.approx(n_layers * layer_attn, rel=1e-12)
    assert cost.flops == pytest.approx(n_layers * layer_flops + 2 * 64 * 256, rel=1e-12)
    assert cost.train_flops == pytest.approx(3 * cost.flops, rel=1e-12)
    assert cost.kv_bytes == n_layers * 2 * kv_heads * 8 * 2
    mha_flops = n_layers * MHA_LAYER_FLOPS + 2 * 64 * 256
    mha_attn = n_layers * 4 * 8 * 8 * CAUSAL_PAIRS / 16
    assert cost.speedup_vs_mha == pytest.approx(mha_flops / cost.flops, rel=1e-12)
    assert cost.attn_speedup_vs_mha == pytest.approx(mha_attn / cost.attn_flops, rel=1e-12)
    for layer in cost.layers:
        assert layer.params == layer_params
        assert layer.attn_flops == pytest.approx(layer_attn, rel=1e-12)
        assert layer.proj_flops == 2 * layer_proj_params
        assert layer.ffn_flops == 2 * ffn_params
        assert layer.kv_bytes == 2 * kv_heads * 8 * 2


def test_gqa_costs_by_hand():
    # GQA at H = 8: 8 query heads, 8 / 4 = 2 KV heads.
    cost = analyze(config(2, attention={"variant": "GQA"}), N)
    proj = 64 * (8 * 8) + 2 * 64 * (2 * 8) + (8 * 8) * 64  # 10240
    check(
        cost,
        layer_params=proj + 2 * 64 + 3 * 64 * 128,
        layer_proj_params=proj,
        layer_attn=4 * 8 * 8 * 136 / 16,
        kv_heads=2,
    )
    assert cost.layers[0].params == 34944
    assert cost.kv_bytes == 128  # a quarter of MHA's 512
    assert cost.attn_speedup_vs_mha == 1.0  # same query heads: same attention FLOPs
    assert cost.speedup_vs_mha == pytest.approx(
        (2 * (2 * 16384 + 2 * 24576 + 2176) + 32768)
        / (2 * (2 * 10240 + 2 * 24576 + 2176) + 32768),
        rel=1e-12,
    )


def test_mqa_costs_by_hand():
    cost = analyze(config(2, attention={"variant": "MQA"}), N)
    proj = 64 * (8 * 8) + 2 * 64 * (1 * 8) + (8 * 8) * 64  # 9216
    check(
        cost,
        layer_params=proj + 2 * 64 + 3 * 64 * 128,
        layer_proj_params=proj,
        layer_attn=4 * 8 * 8 * 136 / 16,
        kv_heads=1,
    )
    assert cost.kv_bytes == 2 * 2 * 1 * 8 * 2 == 64


def test_rsqa_costs_by_hand():
    # rSQA at H = 8: H/4 = 2 query heads tiled over H/2 = 4 KV heads; attention and o_proj
    # run over max(2, 4) = 4 heads (paper section 3.2).
    cost = analyze(config(2, attention={"variant": "rSQA"}), N)
    proj = 64 * (2 * 8) + 2 * 64 * (4 * 8) + (4 * 8) * 64  # 7168
    check(
        cost,
        layer_params=proj + 2 * 64 + 3 * 64 * 128,
        layer_proj_params=proj,
        layer_attn=4 * 4 * 8 * 136 / 16,
        kv_heads=4,
    )
    assert cost.attn_speedup_vs_mha == pytest.approx(2.0, rel=1e-12)  # 8 heads / 4


def test_mixed_per_layer_model_by_hand():
    layers = [
        {"variant": "MHA", "bias": True},
        {"variant": "GQA", "window": 3},
        {"n_q_heads": 2, "n_kv_heads": 4, "window": 3, "global_tokens": 2},
        {"variant": "MQA"},
    ]
    cost = analyze(config(4, layers, tie_embeddings=False), N, kv_bytes_per_value=4)
    # (projection params, bias params, attention heads, visible pairs, KV heads) per layer
    by_hand = [
        (4 * 64 * 64, 8 * 8 + 2 * 8 * 8 + 64, 8, CAUSAL_PAIRS, 8),  # MHA, biased
        (64 * 64 + 2 * 64 * 16 + 64 * 64, 0, 8, WINDOW3_PAIRS, 2),  # GQA, window 3
        (64 * 16 + 2 * 64 * 32 + 32 * 64, 0, 4, FLEX3_2_PAIRS, 4),  # rSQA, window 3 + 2 g
        (64 * 64 + 2 * 64 * 8 + 64 * 64, 0, 8, CAUSAL_PAIRS, 1),  # MQA
    ]
    ffn = 3 * 64 * 128
    for layer, (proj, bias, heads, pairs, kv) in zip(cost.layers, by_hand, strict=True):
        assert layer.params == proj + bias + 2 * 64 + ffn
        assert layer.attn_flops == pytest.approx(4 * heads * 8 * pairs / 16, rel=1e-12)
        assert layer.proj_flops == 2 * proj
        assert layer.ffn_flops == 2 * ffn
        assert layer.kv_bytes == 2 * kv * 8 * 4  # fp32 cache: 4 bytes a value
    assert [x.attn_flops for x in cost.layers] == pytest.approx([2176, 928, 648, 2176])
    params = sum(p + b + 2 * 64 + ffn for p, b, *_ in by_hand) + 2 * 256 * 64 + 64  # untied
    assert cost.params == params == 174912
    attn = sum(4 * h * 8 * pairs / 16 for _, _, h, pairs, _ in by_hand)
    flops = sum(2 * p + 2 * ffn for p, *_ in by_hand) + attn + 2 * 64 * 256
    assert cost.attn_flops == pytest.approx(attn, rel=1e-12)
    assert cost.flops == pytest.approx(flops, rel=1e-12)
    assert cost.kv_bytes == (8 + 2 + 4 + 1) * 2 * 8 * 4 == 960
    # The baseline is the dense, bias-free MHA model of the same shape: no window, no bias.
    mha_attn = 4 * (4 * 8 * 8 * CAUSAL_PAIRS / 16)
    mha_flops = 4 * MHA_LAYER_FLOPS + 2 * 64 * 256
    assert cost.attn_speedup_vs_mha == pytest.approx(mha_attn / attn, rel=1e-12)
    assert cost.speedup_vs_mha == pytest.approx(mha_flops / flops, rel=1e-12)
    assert cost.as_dict()["train_flops"] == pytest.approx(3 * flops, rel=1e-12)


def test_untied_head_and_bidirectional_pairs_by_hand():
    # Bidirectional, window 3: query i sees keys max(0, i-3)..min(15, i+3):
    # 4, 5, 6 for i = 0..2, 7 for i = 3..12, 6, 5, 4 for i = 13..15.
    pairs = 2 * (4 + 5 + 6) + 7 * 10  # 100
    cost = analyze(
        config(1, [{"variant": "GQA", "window": 3}], causal=False, tie_embeddings=False), N
    )
    proj = 64 * 64 + 2 * 64 * 16 + 64 * 64
    assert cost.params == proj + 2 * 64 + 3 * 64 * 128 + 2 * 256 * 64 + 64
    assert cost.attn_flops == pytest.approx(4 * 8 * 8 * pairs / 16, rel=1e-12)
    # its MHA baseline is dense and bidirectional: every query sees all 16 keys
    assert cost.attn_speedup_vs_mha == pytest.approx(256 / pairs, rel=1e-12)


# ------------------------------------------------------------------ KV-cache constraint
def gqa_space(**constraints):
    """A two-layer search space whose layouts are all GQA-like (H_q = 8, H_kv in {2, 4})."""
    return parse_space(
        {
            "model": {
                "d_model": 64,
                "n_layers": 2,
                "n_heads": 8,
                "ffn_dim": 128,
                "seq_len": 16,
                "vocab_size": 256,
            },
            "search": {"n_q_heads": ["H"], "n_kv_heads": ["H/4", "H/2"]},
            "objectives": ["val_loss", "throughput_tokens_per_s"],
            "seed_trials": ["GQA"],
            "constraints": constraints,
        }
    )


def verdict(spec, layer0: str, layer1: str):
    """(violations, optuna constraint values) of a layout, the way the search computes them."""
    config = spec.build_config({"layer0.heads": layer0, "layer1.heads": layer1}, 256)
    cost, mha = analyze(config, spec.model.seq_len), spec.mha_cost(config)
    return spec.constraints.violations(cost, mha), spec.constraints.values(cost, mha)


def test_kv_cache_limit_accepts_a_gqa_layout_at_the_limit_and_refuses_one_over():
    # GQA 8/2 in both layers: 2 layers x (K and V) x 2 heads x 8 dims x 2 bytes = 128 bytes.
    at_limit = gqa_space(max_kv_cache_bytes=128)
    assert verdict(at_limit, "8/2", "8/2") == ([], {"max_kv_cache_bytes": 0.0})
    # one layer with 4 KV heads: 64 + 128 = 192 bytes, refused
    violations, values = verdict(at_limit, "8/2", "8/4")
    assert violations == ["max_kv_cache_bytes: 192 > 128"]
    assert values == {"max_kv_cache_bytes": pytest.approx(192 / 128 - 1)}
    just_under = gqa_space(max_kv_cache_bytes=127)  # one byte short of GQA's 128
    violations, values = verdict(just_under, "8/2", "8/2")
    assert violations == ["max_kv_cache_bytes: 128 > 127"]
    assert (
        values["max_kv_cache_bytes"] == pytest.approx(128 / 127 - 1)
        and values["max_kv_cache_bytes"] > 0
    )


def test_kv_cache_limit_relative_to_mha():
    # MHA: 2 x 2 x 8 x 8 x 2 = 512 bytes; GQA 8/2 holds 128 / 512 = 0.25 of it.
    assert verdict(gqa_space(max_kv_cache_vs_mha=0.25), "8/2", "8/2")[0] == []
    assert verdict(gqa_space(max_kv_cache_vs_mha=0.24), "8/2", "8/2")[0] == [
        "max_kv_cache_vs_mha: 0.25 > 0.24"
    ]
    # 8/2 + 8/4: (64 + 128) / 512 = 0.375
    assert verdict(gqa_space(max_kv_cache_vs_mha=0.375), "8/2", "8/4")[0] == []
    assert verdict(gqa_space(max_kv_cache_vs_mha=0.37), "8/2", "8/4")[0] != []


# ----------------------------------------------------------------------- memory estimate
# The dense MHA layer (H_q = H_kv = 8, d = 8) keeps per token, for the backward pass
# (`activation_bytes`), with a bytes per activation (4 on the CPU, 2 under bf16 on a GPU):
# 16 D (float32 norms and residual sums) + a (4 D + (4 H_q + 3 H_kv) d + 4 F) + 4 H_q.
def layer_bytes(a: int) -> int:
    return 16 * 64 + a * (4 * 64 + (4 * 8 + 3 * 8) * 8 + 4 * 128) + 4 * 8


def step_bytes(n_layers: int, tokens: int, a: int, backward: bool) -> int:
    """A dense model's activations: every layer and two more with a backward (two without);
    per token the embedding and final norm (12 D), the logits ((a + 12) V with a backward,
    (a + 8) V without) and the ids (48)."""
    kept = (n_layers + 2 if backward else 2) * layer_bytes(a)
    outer = 12 * 64 + (a + (12 if backward else 8)) * 256 + 48
    return tokens * (kept + outer)


MHA2_PARAMS = 2 * MHA_LAYER_PARAMS + 256 * 64 + 64  # tied head, final norm
MHA3_PARAMS = 3 * MHA_LAYER_PARAMS + 256 * 64 + 64


def test_memory_estimate_parts_by_hand():
    # Training (B 2, N 16) outweighs one evaluation batch: float32 weights (4 bytes each),
    # gradients (4), AdamW's moments and its update's temporary (12), one GB for the process.
    cpu = memory_estimate(config(2), 16, 2)
    assert (cpu.weights, cpu.gradients, cpu.optimizer) == (
        4 * MHA2_PARAMS,
        4 * MHA2_PARAMS,
        12 * MHA2_PARAMS,
    )
    assert (cpu.reference, cpu.runtime, cpu.batch) == (0, 10**9, "train")
    assert cpu.activations == step_bytes(2, 2 * 16, 4, backward=True)
    assert cpu.total == 20 * MHA2_PARAMS + cpu.activations + 10**9
    # A GPU adds autocast's bf16 copy of the weights (6 bytes each) and keeps bf16
    # activations; the MHA reference keeps its weights and gradients (6 + 4 bytes each).
    gpu = memory_estimate(
        config(2), 16, 2, device_type="cuda", throughput_batch=1, reference=config(3)
    )
    assert (gpu.weights, gpu.gradients, gpu.optimizer) == (
        6 * MHA2_PARAMS,
        4 * MHA2_PARAMS,
        12 * MHA2_PARAMS,
    )
    assert gpu.reference == 10 * MHA3_PARAMS and gpu.batch == "train"
    assert gpu.activations == step_bytes(2, 2 * 16, 2, backward=True)


def test_memory_estimate_takes_the_largest_batch_by_hand():
    # Evaluation: 10 batches of 64 held at once (16 bytes of ids a token), no backward.
    ev = memory_estimate(config(2), 16, 2, eval_batch_size=64, eval_batches=10)
    assert ev.batch == "eval"
    assert ev.activations == step_bytes(2, 64 * 16, 4, backward=False) + 16 * 10 * 64 * 16
    # Throughput at its own length (4 x 64 tokens), with a backward: the 3-layer reference
    # keeps one layer more than the model, so its step is the largest; on the CPU it keeps
    # float32 weights and gradients (4 + 4 bytes each).
    timed = memory_estimate(
        config(2), 16, 2, throughput_batch=4, throughput_seq_len=64, reference=config(3)
    )
    assert timed.batch == "reference" and timed.reference == 8 * MHA3_PARAMS
    assert timed.activations == step_bytes(3, 4 * 64, 4, backward=True)
    # Forward only: no backward's layers and logits' gradient.
    forward = memory_estimate(
        config(2), 16, 2, throughput_batch=64, throughput_seq_len=64, throughput_backward=False
    )
    assert forward.batch == "throughput" and forward.reference == 0
    assert forward.activations == step_bytes(2, 64 * 64, 4, backward=False)
