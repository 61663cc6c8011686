"""The Hugging Face folder of an export, with the installed transformers: `from_pretrained`
loads the exported weights, `generate` (greedy and sampling) decodes with model.py's KV cache
and gives the tokens of decoding without it and of model.py's own `generate`, and
`save_pretrained` then `from_pretrained` gives identical logits. A bidirectional export is a
masked LM that does not generate."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from sqa_nas.export import export_model
from sqa_nas.model import ModelConfig, build_model

transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=64, d_model=32, n_heads=4, ffn_dim=64)
BS = {"block_size": 4, "local_blocks": 1, "global_blocks": 1, "random_blocks": 1, "seed": 2}
CAUSAL = ModelConfig(
    **SHAPE,
    n_layers=4,
    layers=[
        {"n_q_heads": 4, "n_kv_heads": 1},
        {"n_q_heads": 2, "n_kv_heads": 2, "window": 4, "global_tokens": 2},
        {"n_q_heads": 1, "n_kv_heads": 2, "window": 3},
        {"n_q_heads": 2, "n_kv_heads": 1, "block_sparse": BS},
    ],
)
NEW = 14


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A causal hf export of trained (scaled: well-separated logits) weights, and those."""
    library = build_model(CAUSAL, seed=1)
    with torch.no_grad():
        for p in library.parameters():
            p.mul_(8)
    folder = tmp_path_factory.mktemp("hf") / "hf_generate"
    export_model(CAUSAL, folder, fmt="hf", state_dict=library.state_dict(), title="hf test")
    return folder, library.eval()


def load(folder, auto=None):
    auto = auto or transformers.AutoModelForCausalLM
    return auto.from_pretrained(folder, trust_remote_code=True).eval()


def prompt(n: int = 6) -> torch.Tensor:
    return torch.randint(0, 64, (2, n), generator=torch.Generator().manual_seed(3))


def test_from_pretrained_loads_the_exported_weights(exported):
    folder, library = exported
    model = load(folder)
    tokens = prompt(11)
    with torch.no_grad():
        assert (model(tokens).logits - library(tokens)).abs().max() <= 1e-4
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_greedy_generate_uses_the_kv_cache_and_gives_the_recomputed_tokens(exported):
    folder, _ = exported
    model = load(folder).double()
    idx = prompt()
    with torch.no_grad():
        cached = model.generate(idx, max_new_tokens=NEW, do_sample=False)
        recomputed = model.generate(idx, max_new_tokens=NEW, do_sample=False, use_cache=False)
        standalone = model.model.generate(idx, NEW, temperature=0)  # model.py's own
    assert cached.shape == (2, 6 + NEW)
    assert torch.equal(cached, recomputed) and torch.equal(cached, standalone)
    with torch.no_grad():
        out = model(idx, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values  # its name: 5.x / 4.x
    assert type(cache).__name__ == "KVCache" and cache.length == 6
    heads = [c.tensors()[0].shape[1] for c in cache.layers]
    assert heads == [x.n_kv_heads for x in CAUSAL.layer_configs]


def test_sampling_generate_draws_the_same_tokens_with_and_without_the_cache(exported):
    folder, _ = exported
    model = load(folder).double()
    idx = prompt()
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(7)
        with torch.no_grad():
            runs.append(
                model.generate(
                    idx, max_new_tokens=NEW, do_sample=True, top_k=8, use_cache=use_cache
                )
            )
    assert torch.equal(runs[0], runs[1])
    with torch.no_grad():
        greedy = model.generate(idx, max_new_tokens=NEW, do_sample=False)
        one = model.generate(idx, max_new_tokens=NEW, do_sample=True, top_k=1)
    assert torch.equal(one, greedy)


def test_save_pretrained_round_trips_identical_logits(exported, tmp_path):
    folder, _ = exported
    model = load(folder)
    model.save_pretrained(tmp_path / "hf_saved")
    again = load(tmp_path / "hf_saved")
    tokens = prompt(13)
    with torch.no_grad():
        assert torch.equal(again(tokens).logits, model(tokens).logits)
        assert torch.equal(
            again.generate(tokens, max_new_tokens=5, do_sample=False),
            model.generate(tokens, max_new_tokens=5, do_sample=False),
        )


def test_padding_is_refused_in_words(exported):
    folder, _ = exported
    model = load(folder)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0
    with pytest.raises(ValueError, match="take no padding"):
        model(prompt(), attention_mask=mask)


def test_a_bidirectional_export_is_a_masked_lm_that_does_not_generate(tmp_path):
    config = ModelConfig(**SHAPE, n_layers=2, causal=False)
    library = build_model(config, seed=2)
    folder = export_model(
        config, tmp_path / "hf_masked", fmt="hf", state_dict=library.state_dict()
    )
    model = load(folder, transformers.AutoModelForMaskedLM)
    assert type(model).__name__ == "SQAForMaskedLM"
    assert not hasattr(model, "generate") or not model.can_generate()
    tokens = prompt(9)
    with torch.no_grad():
        assert (model(tokens).logits - library(tokens)).abs().max() <= 1e-5


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_the_folder_readme_examples_run_in_the_folder(tmp_path, monkeypatch, causal):
    """Every python block of an hf export's README.md runs, in the folder, as written."""
    config = ModelConfig(**SHAPE, n_layers=2, causal=causal)
    folder = export_model(config, tmp_path / f"hf_readme_{causal}", fmt="hf")
    blocks = re.findall(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S)
    assert len(blocks) == 3  # model.py, sqa-nas, transformers
    assert ("generate(" in blocks[0]) is causal and ("generate(" in blocks[2]) is causal
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "model", raising=False)
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), {})
    finally:
        sys.modules.pop("model", None)
