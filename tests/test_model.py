"""The model: per-layer attention, config formats, and analytics that match the real model."""

from __future__ import annotations

import pytest
import torch
import yaml

from sqa_nas.analytics import analyze, attention_flops
from sqa_nas.compiling import RECOMPILE_LIMIT, allow_recompiles
from sqa_nas.errors import UserError
from sqa_nas.model import ModelConfig, build_model, load_config

pytestmark = pytest.mark.usefixtures("seeded")

MIXED = {
    "vocab_size": 97,
    "d_model": 64,
    "n_layers": 4,
    "n_heads": 8,
    "ffn_dim": 96,
    "attention": {"variant": "SQA"},
    "layers": [
        {"variant": "MHA"},
        {"variant": "xSQA", "window": 8},
        {"n_q_heads": 2, "n_kv_heads": 4},
        {"variant": "Flex-SQA", "window": 4},
    ],
}


def test_mixed_model_builds_each_layer_as_asked():
    model = build_model(MIXED)
    heads = [
        (b.attn.config.n_q_heads, b.attn.config.n_kv_heads, b.attn.config.pattern)
        for b in model.layers
    ]
    assert heads == [(8, 8, "dense"), (2, 2, "window"), (2, 4, "dense"), (4, 4, "flex")]
    tokens = torch.randint(0, 97, (2, 19))
    assert model(tokens).shape == (2, 19, 97)


def test_yaml_file_preset_and_resolved_round_trip(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(MIXED))
    a, b = build_model(path), build_model(MIXED)
    assert a.config == b.config
    resolved = a.config.resolved()
    assert all("variant" not in layer for layer in resolved["layers"])
    again = load_config(resolved)
    assert [c for c in again.layer_configs] == list(a.config.layer_configs)
    torch.manual_seed(0)
    m1 = build_model(resolved)
    m1.load_state_dict(a.state_dict())  # same keys and shapes
    paper = ModelConfig.from_name("paper", attention={"variant": "xSQA"})
    assert (paper.d_model, paper.n_layers, paper.n_heads, paper.vocab_size) == (256, 8, 16, 10000)


@pytest.mark.parametrize(
    "bad,pattern",
    [
        ({"layers": [{"variant": "MHA"}]}, "layers has 1 entries but n_layers=4"),
        (
            {"layers": [{"variant": "MHA"}] * 3 + [{"n_q_heads": 3, "n_kv_heads": 2}]},
            r"layers\[3\]: n_kv_heads=2 does not divide n_q_heads=3",
        ),
        (
            {"layers": [{"variant": "MHA"}] * 3 + [{"d_model": 32}]},
            r"layers\[3\].d_model is set for the whole model",
        ),
        ({"attention": {"variant": "Nope"}}, r"layers\[2\]: unknown variant 'Nope'"),
        ({"n_heads": 7}, "n_heads=7 does not divide d_model=64"),
        ({"dropout": 0.1}, "dropout"),
    ],
)
def test_bad_model_configs_name_the_field(bad, pattern):
    with pytest.raises(UserError, match=pattern):
        load_config({**MIXED, **bad})


def test_unreadable_config_file(tmp_path):
    with pytest.raises(UserError, match="cannot read model config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("d_model: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("tie", [True, False])
def test_parameter_count_matches_the_model(tie):
    config = load_config(
        {
            **MIXED,
            "tie_embeddings": tie,
            "layers": MIXED["layers"][:3] + [{"variant": "SQA", "bias": True}],
        }
    )
    model = build_model(config)
    assert analyze(config, 128).params == sum(p.numel() for p in model.parameters())


def test_attention_flops_follow_head_counts_and_masks():
    paper = {"d_model": 256, "n_heads": 16, "n_layers": 8, "ffn_dim": 768, "vocab_size": 10000}
    mha = analyze(load_config({**paper, "attention": {"variant": "MHA"}}), 131072)
    xsqa = analyze(load_config({**paper, "attention": {"variant": "xSQA"}}), 131072)
    assert mha.attn_flops / xsqa.attn_flops == pytest.approx(4.0)
    assert xsqa.attn_speedup_vs_mha == pytest.approx(4.0)
    assert 1.0 < xsqa.speedup_vs_mha < 4.0
    assert xsqa.kv_bytes == mha.kv_bytes / 4  # xSQA: H/4 KV heads
    assert xsqa.train_flops == 3 * xsqa.flops
    # A causal dense layer sees (N + 1) / 2 keys per query on average.
    layer = load_config({**paper, "n_layers": 1}).layer_configs[0]
    assert attention_flops(layer, 1024) == pytest.approx(4 * 16 * 16 * 1025 / 2)
    windowed = load_config(
        {**paper, "n_layers": 1, "attention": {"variant": "MHA", "window": 63}}
    ).layer_configs[0]
    assert attention_flops(windowed, 1 << 16) < attention_flops(layer, 1 << 16) / 100


def test_allow_recompiles_raises_dynamos_limit_and_never_lowers_it():
    dynamo = torch._dynamo.config
    knobs = [k for k in ("cache_size_limit", "recompile_limit") if hasattr(dynamo, k)]
    assert knobs
    # Restored by hand: pytest's monkeypatch undoes a config-module attribute by deleting
    # it, which hides torch's `recompile_limit` from every later test in the process.
    saved = {k: getattr(dynamo, k) for k in knobs}
    try:
        for knob in knobs:
            setattr(dynamo, knob, 8)
        allow_recompiles()
        assert all(getattr(dynamo, k) == RECOMPILE_LIMIT for k in knobs)
        for knob in knobs:
            setattr(dynamo, knob, 1000)
        allow_recompiles()
        assert all(getattr(dynamo, k) == 1000 for k in knobs)
    finally:
        for knob, value in saved.items():
            setattr(dynamo, knob, value)
