"""The exported model.py decodes incrementally: `generate` with the per-layer KV cache gives
the tokens that recomputing the whole prefix gives, for every kind of layer (MHA, GQA, SQA,
xSQA, rSQA, a sliding window, window + global tokens, block-sparse, a mixed allocation); a
layer caches its H_kv heads, and a windowed layer never holds more than its window + 1 and
its global tokens; cached logits equal the full forward's, token by token and in chunks;
the cache's bytes are what `sqa_nas.analytics` prices per token.

The models are built from `sqa_nas.export.model_template` (model.py is that file with the
decode section pasted in: tests/export/test_export.py), and once from a rendered model.py."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from sqa_nas.analytics import analyze
from sqa_nas.export import export_model, model_template
from sqa_nas.export.torch_code import config_fields, layer_fields
from sqa_nas.model import ModelConfig

SHAPE = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, ffn_dim=64)
BS = {"block_size": 4, "local_blocks": 1, "global_blocks": 1, "random_blocks": 1, "seed": 3}
LAYERS = {
    "MHA": [{"n_q_heads": 4, "n_kv_heads": 4}] * 2,
    "GQA": [{"n_q_heads": 4, "n_kv_heads": 1}] * 2,
    "SQA": [{"n_q_heads": 2, "n_kv_heads": 1}] * 2,
    "xSQA": [{"n_q_heads": 1, "n_kv_heads": 1}] * 2,
    "rSQA": [{"n_q_heads": 1, "n_kv_heads": 2}] * 2,
    "window": [{"n_q_heads": 2, "n_kv_heads": 1, "window": 5}] * 2,
    "flex": [{"n_q_heads": 2, "n_kv_heads": 2, "window": 4, "global_tokens": 3}] * 2,
    "block-sparse": [{"n_q_heads": 2, "n_kv_heads": 1, "block_sparse": BS}] * 2,
    "mixed": [
        {"n_q_heads": 4, "n_kv_heads": 4},
        {"n_q_heads": 4, "n_kv_heads": 1, "window": 3},
        {"n_q_heads": 1, "n_kv_heads": 2, "window": 6, "global_tokens": 2},
        {"n_q_heads": 2, "n_kv_heads": 1, "block_sparse": BS},
    ],
}
PROMPT, NEW = 7, 17  # the sequence runs well past every window and block


def build(layers: list[dict], dtype=torch.float64, seed: int = 0):
    """model.py's Transformer with `layers`, weights scaled up so that logits are far apart
    (no near-ties for argmax), in float64 unless told."""
    config = ModelConfig(**{**SHAPE, "n_layers": len(layers)}, layers=layers)
    torch.manual_seed(seed)
    model = model_template.build_model(config_fields(config), layer_fields(config))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8)
    return model.to(dtype).eval(), config


def prompt(batch: int = 2, n: int = PROMPT) -> torch.Tensor:
    return torch.randint(
        0, SHAPE["vocab_size"], (batch, n), generator=torch.Generator().manual_seed(1)
    )


@pytest.mark.parametrize("name", list(LAYERS))
def test_cached_greedy_decoding_gives_the_recomputed_tokens(name):
    model, _ = build(LAYERS[name])
    idx = prompt()
    cached = model.generate(idx, NEW, temperature=0)
    recomputed = model.generate(idx, NEW, temperature=0, use_cache=False)
    assert cached.shape == (2, PROMPT + NEW)
    assert torch.equal(cached[:, :PROMPT], idx)
    assert torch.equal(cached, recomputed)
    # the recomputation, written out: each token is the argmax of the whole prefix's logits
    with torch.no_grad():
        for t in range(PROMPT, PROMPT + NEW):
            assert torch.equal(cached[:, t], model(cached[:, :t])[:, -1].argmax(-1))


@pytest.mark.parametrize("name", list(LAYERS))
def test_cached_logits_equal_the_full_forward_token_by_token_and_in_chunks(name):
    model, _ = build(LAYERS[name], dtype=torch.float32)
    tokens = prompt(n=PROMPT + NEW)
    with torch.no_grad():
        full = model(tokens)
        for cuts in ([PROMPT, *range(PROMPT + 1, PROMPT + NEW)], [1, 2, 9, 10, 16]):
            cache = model.new_cache()
            bounds = [0, *cuts, PROMPT + NEW]
            got = torch.cat([model(tokens[:, a:b], cache) for a, b in zip(bounds, bounds[1:])], 1)
            assert cache.length == PROMPT + NEW
            assert (got - full).abs().max() <= 1e-4 * full.abs().max(), cuts


@pytest.mark.parametrize("name", ["GQA", "SQA", "rSQA", "window", "flex", "mixed"])
def test_a_layer_caches_its_kv_heads_and_a_window_only_its_window(name):
    model, config = build(LAYERS[name])
    cache = model.new_cache()
    tokens = prompt(n=PROMPT + NEW)
    with torch.no_grad():
        model(tokens[:, :PROMPT], cache)
        for t in range(PROMPT, PROMPT + NEW):
            for layer, c in zip(config.layer_configs, cache.layers, strict=True):
                k, v = c.tensors()
                assert k.shape == v.shape == (2, layer.n_kv_heads, c.held, layer.head_dim)
                if layer.window is not None:  # the buffer itself, not only what it holds
                    assert c.k.shape[2] == layer.window + 1 + layer.global_tokens
                    assert c.held == min(t, layer.window + 1 + layer.global_tokens)
                else:
                    assert c.held == t
            model(tokens[:, t : t + 1], cache)


def test_the_cache_bytes_are_the_analytics_kv_bytes_per_token_times_the_tokens_held():
    model, config = build(LAYERS["mixed"], dtype=torch.bfloat16)
    cache = model.new_cache()
    with torch.no_grad():
        model(prompt(batch=3, n=20), cache)
    per_token = [x.kv_bytes for x in analyze(config, 20, kv_bytes_per_value=2).layers]
    held = [20, 3 + 1, 6 + 1 + 2, 20]  # dense; window 3; window 6 + 2 global; block-sparse
    assert cache.nbytes() == 3 * sum(b * n for b, n in zip(per_token, held, strict=True))


def test_sampling_draws_the_same_tokens_with_and_without_the_cache():
    model, _ = build(LAYERS["mixed"])
    idx = prompt()
    torch.manual_seed(5)
    cached = model.generate(idx, NEW, temperature=0.9, top_k=5)
    torch.manual_seed(5)
    assert torch.equal(cached, model.generate(idx, NEW, temperature=0.9, top_k=5, use_cache=False))
    assert torch.equal(
        model.generate(idx, NEW, temperature=1.5, top_k=1), model.generate(idx, NEW, temperature=0)
    )
    assert 0 <= int(cached.min()) and int(cached.max()) < SHAPE["vocab_size"]


def test_a_bidirectional_model_refuses_to_decode():
    config = ModelConfig(**SHAPE, causal=False)
    model = model_template.build_model(config_fields(config), layer_fields(config))
    for call in (model.new_cache, lambda: model.generate(prompt(), 3)):
        with pytest.raises(ValueError, match="bidirectional model .* cannot decode"):
            call()


def test_the_rendered_model_py_decodes_like_the_template(tmp_path):
    _, config = build(LAYERS["mixed"])
    out = export_model(config, tmp_path / "mixed")
    spec = importlib.util.spec_from_file_location("exported_decode", out / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    assert module.KVCache.__module__ == "exported_decode"  # pasted in, not imported
    rendered, (template, _) = module.build_model().double().eval(), build(LAYERS["mixed"])
    rendered.load_state_dict(template.state_dict())
    idx = prompt()
    assert torch.equal(rendered.generate(idx, NEW, temperature=0), template.generate(idx, NEW, 0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cached_decoding_on_cuda_matches_the_full_forward(dtype):
    """The GPU path: SDPA's CUDA kernels on the folded query heads, the ring of a window."""
    layers = [
        {**x, "n_q_heads": x["n_q_heads"] * 4, "n_kv_heads": x["n_kv_heads"] * 4}
        for x in LAYERS["mixed"]
    ]
    config = ModelConfig(
        vocab_size=64, d_model=256, n_layers=4, n_heads=16, ffn_dim=256, layers=layers
    )
    with torch.device("cuda"):
        torch.manual_seed(0)
        model = (
            model_template.build_model(config_fields(config), layer_fields(config))
            .to(dtype)
            .eval()
        )
    tokens = prompt(n=40).cuda()
    with torch.no_grad():
        full = model(tokens).float()
        cache = model.new_cache(40)
        parts = [model(tokens[:, :20], cache)] + [
            model(tokens[:, t : t + 1], cache) for t in range(20, 40)
        ]
    got = torch.cat(parts, 1).float()
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    assert (got - full).abs().max() <= tolerance * full.abs().max()
    assert [c.tensors()[0].shape[1] for c in cache.layers] == [
        x.n_kv_heads for x in config.layer_configs
    ]


def test_decoding_steps_keep_off_cudnn_attention_and_prefill_does_not(monkeypatch):
    """cuDNN's attention builds an execution plan per key length, and a growing cache has a
    new length at every step: a decoding step's attention runs with cuDNN disabled (flash,
    memory-efficient or math), while a prompt keeps every kernel the forward may use."""
    from sqa_nas.export import decode_template

    seen: list[tuple[int, bool]] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append((q.shape[2], torch.backends.cuda.cudnn_sdp_enabled()))
        return real(q, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model, _ = build(LAYERS["GQA"], dtype=torch.float32)
    cache = model.new_cache(PROMPT + 2)
    with torch.no_grad():
        model(prompt(), cache)
        prefill = list(seen)
        seen.clear()
        model(prompt(n=1), cache)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # as it was: only the step turned it off
    assert prefill and all(enabled for _, enabled in prefill)
    # GQA's 4 query heads over 1 KV head: one group of 4 rows per new token, each layer
    assert seen == [(4, False)] * len(LAYERS["GQA"])
    assert torch.nn.attention.SDPBackend.CUDNN_ATTENTION not in decode_template.DECODE_BACKENDS
