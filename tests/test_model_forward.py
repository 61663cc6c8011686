"""sqa_nas.model's wiring, checked against the forward written out here from its parts
(embedding, pre-norm residual blocks with SwiGLU, final norm, LM head), the residual
projections' scaled init, the per-layer record `layer_dict`, and preset overrides."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sqa_nas.attention.config import AttentionConfig
from sqa_nas.model import ModelConfig, build_model, layer_dict

pytestmark = pytest.mark.usefixtures("seeded")


def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def test_the_forward_is_pre_norm_residual_blocks_then_norm_and_head():
    model = build_model(
        {
            "vocab_size": 50,
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "ffn_dim": 48,
            "attention": {"variant": "SQA"},
        }
    )
    with torch.no_grad():  # norms at their init (ones) would hide which norm is used where
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    eps = model.config.norm_eps
    tokens = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        x = model.embed.weight[tokens]
        for block in model.layers:
            h = x + block.attn(_rms(x, block.attn_norm.weight, eps))
            f = block.ffn
            n = _rms(h, block.ffn_norm.weight, eps)
            x = h + (F.silu(n @ f.w1.weight.T) * (n @ f.w3.weight.T)) @ f.w2.weight.T
        logits = _rms(x, model.norm.weight, eps) @ model.embed.weight.T  # tied head
        assert torch.allclose(model(tokens), logits, atol=1e-5)


def test_projections_into_the_residual_stream_start_smaller():
    n_layers = 4
    model = build_model(
        {"vocab_size": 64, "d_model": 64, "n_layers": n_layers, "n_heads": 4, "ffn_dim": 256}
    )
    scaled = 0.02 / math.sqrt(2 * n_layers)
    for block in model.layers:
        assert block.ffn.w2.weight.std().item() == pytest.approx(scaled, rel=0.05)
        assert block.attn.o_proj.weight.std().item() == pytest.approx(scaled, rel=0.1)
        assert block.ffn.w1.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_layer_dict_writes_what_differs_from_the_defaults():
    base = dict(d_model=64, n_heads=8, n_q_heads=4, n_kv_heads=2)
    assert layer_dict(AttentionConfig(**base)) == {"n_q_heads": 4, "n_kv_heads": 2}
    assert layer_dict(
        AttentionConfig(**base, window=16, global_tokens=2, bias=True, backend="sdpa")
    ) == {
        "n_q_heads": 4,
        "n_kv_heads": 2,
        "window": 16,
        "global_tokens": 2,
        "bias": True,
        "backend": "sdpa",
    }


def test_a_preset_takes_overrides():
    config = ModelConfig.from_name("tiny", d_model=32, n_heads=4)
    assert (config.d_model, config.n_heads, config.n_layers) == (32, 4, 4)
