"""A tiny random Llama-family model (transformers, built and saved here) converts through
`sqa-nas convert`: with its own heads the export's logits are the Hugging Face model's (the
mapping of every weight, RoPE's layout, sliding windows and biases), a reduced layout loads
and runs, and `sqa-nas finetune` trains it a few steps."""

from __future__ import annotations

import json

import pytest
import torch

from sqa_nas.attention.rope import apply_rope, rope_tables
from sqa_nas.cli import main
from sqa_nas.convert import METHODS, load_export

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("seeded")

SMALL = dict(
    vocab_size=300,  # above the embedded corpus's 256 bytes: it calibrates
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
)
CAL = "--calibration-batches 1 --calibration-batch-size 2 --calibration-seq-len 32".split()


def convert_argv(src, allocation: str, method: str, out, *extra: str) -> list[str]:
    """`sqa-nas convert SRC --allocation A --method M --out OUT` with few calibration tokens."""
    argv = ["convert", str(src), "--allocation", allocation, "--method", method]
    return [*argv, "--out", str(out), *CAL, *extra]


def convert(src, allocation: str, method: str, out, *extra: str) -> int:
    """The exit status of `convert_argv`'s command, run in-process."""
    return main(convert_argv(src, allocation, method, out, *extra))


def save_hf(path, arch: str = "llama", **overrides):
    """A random model of `arch` saved with save_pretrained into `path`; returns it (eval)."""
    configs = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }
    config_cls, model_cls = configs[arch]
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**SMALL, **overrides})).eval()
    with torch.no_grad():  # larger than HF's init, norms not ones: every weight matters
        for name, p in model.named_parameters():
            p.normal_(0, 0.3) if "norm" not in name else p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    return model


def logits_match(hf_model, folder, length: int = 40) -> None:
    x = torch.randint(0, SMALL["vocab_size"], (2, length))
    ours = load_export(folder)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf_model(x).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_llama_with_its_own_heads_converts_to_the_same_logits(tmp_path, method, capsys):
    hf_model = save_hf(tmp_path / "llama")
    out = tmp_path / "out"
    assert convert(tmp_path / "llama", "GQA", method, out) == 0
    logits_match(hf_model, out)
    assert "0.00e+00" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arch, overrides",
    [
        ("llama", {"tie_word_embeddings": True}),
        ("llama", {"attention_bias": True, "head_dim": 6}),
        ("mistral", {"sliding_window": 5}),  # windows shorter than the sequence
        ("qwen2", {}),  # q/k/v biases, none on o_proj
    ],
)
def test_the_family_maps_weights_windows_and_biases(tmp_path, arch, overrides):
    hf_model = save_hf(tmp_path / "hf", arch, **overrides)
    out = tmp_path / "out"
    assert convert(tmp_path / "hf", "8/2", "select", out) == 0
    logits_match(hf_model, out, length=24)
    model = load_export(out)
    if overrides.get("tie_word_embeddings"):
        assert model.lm_head.weight is model.embed.weight
    if arch == "mistral":
        assert [c.window for c in model.config.layer_configs] == [4, 4]  # HF's 5 keys


def test_rope_layout_is_llamas_rotate_half():
    from transformers.models.llama.modeling_llama import (
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    config = transformers.LlamaConfig(**SMALL)
    head_dim = SMALL["hidden_size"] // SMALL["num_attention_heads"]
    q, k = torch.randn(2, 8, 12, head_dim), torch.randn(2, 2, 12, head_dim)
    cos, sin = LlamaRotaryEmbedding(config)(q, torch.arange(12)[None])
    theirs = apply_rotary_pos_emb(q, k, cos, sin)
    c, s = rope_tables(12, head_dim, 10_000.0)
    torch.testing.assert_close(apply_rope(q, c, s), theirs[0])
    torch.testing.assert_close(apply_rope(k, c, s), theirs[1])


def test_a_reduced_llama_loads_runs_and_finetunes(tmp_path, capsys):
    save_hf(tmp_path / "llama")
    out = tmp_path / "xsqa"
    assert convert(tmp_path / "llama", "xSQA", "fit", out) == 0
    model = load_export(out)
    assert [(c.n_q_heads, c.n_kv_heads) for c in model.config.layer_configs] == [(2, 2)] * 2
    record = model.config.provenance["convert"]
    assert record["method"] == "fit" and record["source"]["architecture"] == "LlamaForCausalLM"
    assert all(0 < layer["output_error"] for layer in record["layers"])
    ft = tmp_path / "ft"
    argv = "--tokens 512 --seq-len 16 --batch-size 4 --eval-batches 1 --lr 3e-3".split()
    assert main(["finetune", str(out), *argv, "--out", str(ft)]) == 0
    assert "val_loss" in capsys.readouterr().out
    log = json.loads((ft / "finetune.json").read_text())
    assert log["steps"] == 8 and log["tokens"] == 512 and len(log["curve"]) >= 2
    assert log["val_after"]["val_loss"] < log["val_before"]["val_loss"]
    tuned = load_export(ft)
    assert not torch.equal(tuned.layers[0].attn.q_proj.weight, model.layers[0].attn.q_proj.weight)
    assert tuned.config.provenance["finetune"]["tokens"] == 512
    assert tuned.config.provenance["convert"] == record  # the conversion's record is kept
