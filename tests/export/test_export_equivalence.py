"""The exported model is the library's model: for mixed per-layer models (windowed, flex,
block-sparse, GQA, MQA and rSQA layers, causal and bidirectional, untied, non-default RoPE
and norm settings) the generated model.py builds the same weights from the same seed,
computes the same logits at several lengths, and carries the config exactly; config.yaml
rebuilds the same config; the Hugging Face wrapper computes the documented loss.

The generated model.py imports only torch, so it is imported here in-process; that it runs
without sqa_nas installed is tests/export/test_export.py's job."""

from __future__ import annotations

import importlib.util
import json
import sys

import optuna
import pytest
import torch
import torch.nn.functional as F
import yaml

from sqa_nas.export import export_trial, find_trial
from sqa_nas.model import ModelConfig, build_model, load_config
from tests.fakestudy import HEADS, make_study

BS = {"block_size": 8, "local_blocks": 1, "global_blocks": 1, "random_blocks": 2, "seed": 5}
SHAPE = dict(vocab_size=256, d_model=64, n_layers=4, n_heads=8, ffn_dim=128)
MODELS = {
    "causal": dict(
        SHAPE,
        tie_embeddings=False,
        rope_theta=500.0,
        norm_eps=1e-5,
        layers=[
            {"n_q_heads": 8, "n_kv_heads": 8, "bias": True},
            {"n_q_heads": 8, "n_kv_heads": 2, "window": 5, "backend": "sdpa"},
            {"n_q_heads": 2, "n_kv_heads": 4, "window": 5, "global_tokens": 2},
            {"n_q_heads": 8, "n_kv_heads": 1, "block_sparse": BS},
        ],
    ),
    "bidirectional": dict(
        SHAPE,
        causal=False,
        layers=[
            {"n_q_heads": 8, "n_kv_heads": 2, "window": 4, "global_tokens": 3},
            {"n_q_heads": 1, "n_kv_heads": 8, "backend": "xformers"},
            {"n_q_heads": 2, "n_kv_heads": 2, "block_sparse": BS, "backend": "flex"},
            {"n_q_heads": 8, "n_kv_heads": 8, "window": 2},
        ],
    ),
}
# What model.py's CONFIG and LAYERS must hold, written out: every field, defaults left out,
# the head_dim made explicit, xFormers (which model.py lacks) run as "auto".
EXPECTED = {
    "causal": (
        dict(
            vocab_size=256,
            d_model=64,
            n_heads=8,
            head_dim=8,
            ffn_dim=128,
            causal=True,
            rope_theta=500.0,
            tie_embeddings=False,
            norm_eps=1e-5,
        ),
        [
            dict(n_q_heads=8, n_kv_heads=8, bias=True),
            dict(n_q_heads=8, n_kv_heads=2, window=5, backend="sdpa"),
            dict(n_q_heads=2, n_kv_heads=4, window=5, global_tokens=2),
            dict(n_q_heads=8, n_kv_heads=1, block_sparse=BS),
        ],
    ),
    "bidirectional": (
        dict(
            vocab_size=256,
            d_model=64,
            n_heads=8,
            head_dim=8,
            ffn_dim=128,
            causal=False,
            rope_theta=10000.0,
            tie_embeddings=True,
            norm_eps=1e-6,
        ),
        [
            dict(n_q_heads=8, n_kv_heads=2, window=4, global_tokens=3),
            dict(n_q_heads=1, n_kv_heads=8),
            dict(n_q_heads=2, n_kv_heads=2, block_sparse=BS, backend="flex"),
            dict(n_q_heads=8, n_kv_heads=8, window=2),
        ],
    ),
}
LENGTHS = [1, 6, 29, 64]  # shorter than a window, a partial block, several blocks


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> (export folder, the trial's ModelConfig)."""
    root = tmp_path_factory.mktemp("equivalence")
    study = make_study(f"sqlite:///{root / 'study.db'}", n=1, failed=0, running=0)
    dist = optuna.distributions.CategoricalDistribution(HEADS)  # the fake study's
    out = {}
    for name, model in MODELS.items():
        config = ModelConfig(**model)
        study.add_trial(
            optuna.trial.create_trial(
                values=[2.5, 1000.0],
                params={"layer0.heads": "8/2"},
                distributions={"layer0.heads": dist},
                user_attrs={"model": config.resolved(), "device": {"name": "NVIDIA H200"}},
            )
        )
        record = find_trial(study, study.trials[-1].number)
        out[name] = export_trial(study, record, root / name, "hf", force_hf=True), config
    return out


def runnable(config: ModelConfig) -> ModelConfig:
    """The same model with xFormers layers on "auto": xFormers is absent on CPU machines and
    computes what SDPA does."""
    data = config.resolved()
    data["layers"] = [
        {**x, "backend": "auto"} if x.get("backend") == "xformers" else x for x in data["layers"]
    ]
    return ModelConfig(**data)


def import_model_py(folder, name):
    spec = importlib.util.spec_from_file_location(
        f"exported_equivalence_{name}", folder / "model.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.mark.parametrize("name", list(MODELS))
def test_model_py_carries_the_config_exactly(exports, name):
    folder, _ = exports[name]
    module = import_model_py(folder, name)
    config, layers = EXPECTED[name]
    assert module.CONFIG == config
    assert module.LAYERS == layers


@pytest.mark.parametrize("name", list(MODELS))
def test_same_seed_builds_the_same_weights(exports, name):
    folder, config = exports[name]
    module = import_model_py(folder, name)
    torch.manual_seed(1234)
    library = build_model(config)
    torch.manual_seed(1234)
    exported = module.build_model()
    ours, theirs = library.state_dict(), exported.state_dict()
    assert list(ours) == list(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    tied = exported.lm_head.weight is exported.embed.weight
    assert tied == config.tie_embeddings == (library.lm_head.weight is library.embed.weight)


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_equal_the_library_at_several_lengths(exports, name):
    folder, config = exports[name]
    module = import_model_py(folder, name)
    torch.manual_seed(7)
    library = build_model(runnable(config)).eval()
    exported = module.build_model().eval()
    exported.load_state_dict(library.state_dict())
    gen = torch.Generator().manual_seed(3)
    for n in LENGTHS:
        tokens = torch.randint(0, 256, (2, n), generator=gen)
        with torch.no_grad():
            want, got = library(tokens), exported(tokens)
        assert got.shape == want.shape == (2, n, 256)
        diff = (got - want).abs().max().item()
        assert diff <= 1e-5, f"{name}, N={n}: max abs logit difference {diff}"


@pytest.mark.parametrize("name", list(MODELS))
def test_config_yaml_round_trips(exports, name):
    folder, config = exports[name]
    rebuilt = load_config(folder / "config.yaml")
    assert rebuilt.layer_configs == config.layer_configs
    assert rebuilt.resolved() == config.resolved()
    data = yaml.safe_load((folder / "config.yaml").read_text())
    # the resolved form: every layer written out, no default `attention` or variant names
    assert {k: v for k, v in data.items() if k != "provenance"} == config.resolved()
    hf_config = json.loads((folder / "config.json").read_text())
    model_py = import_model_py(folder, name)
    assert {k: hf_config[k] for k in model_py.CONFIG if k != "tie_embeddings"} == {
        k: v for k, v in model_py.CONFIG.items() if k != "tie_embeddings"
    }
    assert hf_config["tie_word_embeddings"] == config.tie_embeddings
    assert hf_config["layers"] == model_py.LAYERS


@pytest.mark.parametrize("name", list(MODELS))
def test_hf_model_computes_the_library_logits_and_the_documented_loss(exports, name):
    transformers = pytest.importorskip("transformers")
    folder, config = exports[name]
    auto = (
        transformers.AutoModelForCausalLM if config.causal else transformers.AutoModelForMaskedLM
    )
    hf_config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = auto.from_config(hf_config, trust_remote_code=True).eval()
    torch.manual_seed(11)
    library = build_model(runnable(config)).eval()
    model.model.load_state_dict(library.state_dict())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == config.tie_embeddings
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 256, (2, 29), generator=gen)
    labels = torch.randint(0, 256, (2, 29), generator=gen)
    labels[0, :3] = -100
    with torch.no_grad():
        out = model(tokens, labels=labels)
        want = library(tokens)
    assert (out.logits - want).abs().max() <= 1e-5
    if config.causal:  # position t predicts token t + 1
        scores, targets = want[:, :-1], labels[:, 1:]
    else:  # a masked LM predicts each position's own label
        scores, targets = want, labels
    loss = F.cross_entropy(scores.flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert out.loss.item() == pytest.approx(loss.item(), abs=1e-5)
