"""config.yaml and README.md of an export, from its `ExportInfo` only."""

from __future__ import annotations

from typing import Any

import yaml

from sqa_nas.analytics import analyze, attention_flops, mha_baseline
from sqa_nas.export.info import TRAIN_HOW, ExportInfo
from sqa_nas.export.torch_code import allocation_text
from sqa_nas.export.validate import STANDALONE_BACKEND
from sqa_nas.model import layer_dict
from sqa_nas.printable import printable
from sqa_nas.search.records import OBJECTIVES

# Sequence length of the per-layer attention columns (the trial's own analytics are given
# as the search recorded them).
README_SEQ_LEN = 4096


def config_yaml(info: ExportInfo) -> str:
    """`sqa_nas.model.build_model` reads this file; `provenance` never affects the model."""
    data: dict[str, Any] = info.config.resolved()
    data["provenance"] = info.provenance
    header = comment(f"sqa-nas model config: {info.headline()}")
    header += comment(
        'Rebuild with sqa_nas.model.build_model("config.yaml"), weights and all with '
        'sqa_nas.export.load_export("."); model.py beside it is the same model without sqa-nas.'
    )
    if not info.trained:
        header += comment(f"model.safetensors: {info.weights}; trained weights: {TRAIN_HOW}.")
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=False)


def comment(text: str) -> str:
    """`text` as one ``#`` comment line (YAML's, Python's): a newline or another control
    character in it is shown (`printable`), never starts a line of its own."""
    return f"# {printable(text)}\n"


def _fmt(x: float | int | bool | list[float] | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    if isinstance(x, int) or float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _mask(layer: dict) -> str:
    if "block_sparse" in layer:
        b = layer["block_sparse"]
        return (
            f"block {b['block_size']}: local {b['local_blocks']}, global "
            f"{b['global_blocks']}, random {b['random_blocks']} (seed {b['seed']})"
        )
    if "window" in layer:
        g = layer.get("global_tokens", 0)
        return f"window {layer['window']}" + (f" + {g} global" if g else "")
    return "full"


def weights_section(info: ExportInfo) -> list[str]:
    """What model.safetensors holds and, for initialised weights, how trained ones get there."""
    if info.trained:
        return [f"`model.safetensors` holds **{printable(info.weights)}**."]
    trial = info.trial
    again = (
        f"sqa-nas export {trial.study} --trial {trial.number} --out DIR --weights CHECKPOINT "
        "--force"
        if trial is not None
        else "sqa-nas export STUDY --trial N --out DIR --weights CHECKPOINT --force"
    )
    return [
        f"`model.safetensors` holds **{info.weights}**: the architecture, ready to train, "
        "not a trained model. Trained weights get here in one of two ways:",
        "",
        f"- from an sqa-nas checkpoint file (`sqa_nas/checkpoint.py`): `{again}`",
        "- by training this folder: `sqa-nas finetune DIR --data ... --tokens N`",
    ]


def use_section(info: ExportInfo, files: list[str]) -> list[str]:
    """How to load the model, run it and generate with it: model.py, sqa-nas, transformers."""
    causal = info.config.causal
    out = [
        "`model.py` is plain PyTorch and does not need sqa-nas (the weights need safetensors):",
        "",
        "```python",
        "import torch",
        "from safetensors.torch import load_model",
        "",
        "from model import build_model",
        "",
        "model = build_model()",
        'load_model(model, "model.safetensors")  # a tied LM head loads tied',
        "tokens = torch.randint(0, model.args.vocab_size, (1, 16))",
        "logits = model(tokens)  # (B, N) -> (B, N, vocab_size)",
    ]
    if causal:
        out.append("out = model.generate(tokens, max_new_tokens=32, temperature=0.8, top_k=50)")
    out.append("```")
    if causal:
        out += [
            "",
            "`generate` runs the prompt once, then each new token alone against a per-layer "
            "KV cache: a layer caches its H_kv key/value heads (not H_q), and a windowed "
            "layer keeps only its window (and its global tokens). `temperature=0` is greedy; "
            "`use_cache=False` gives the same tokens by running the whole sequence each step.",
        ]
    out += [
        "",
        "The same model in sqa-nas (`config.yaml` and these weights); the two have the same "
        "`state_dict` keys and shapes:",
        "",
        "```python",
        "from sqa_nas.export import load_export",
        "",
        'model = load_export(".")  # this folder',
        "```",
    ]
    if "config.json" in files:
        auto = "AutoModelForCausalLM" if causal else "AutoModelForMaskedLM"
        out += [
            "",
            "With transformers (the classes are in this folder, hence `trust_remote_code`):",
            "",
            "```python",
            "import torch",
            f"from transformers import {auto}",
            "",
            f'model = {auto}.from_pretrained(".", trust_remote_code=True)',
            "tokens = torch.randint(0, model.config.vocab_size, (1, 16))",
        ]
        if causal:
            out.append("out = model.generate(tokens, max_new_tokens=32, do_sample=True, top_k=50)")
        else:
            out.append("logits = model(tokens).logits  # (B, N, vocab_size)")
        out.append("```")
    out += [
        "",
        "`CONFIG` and `LAYERS` at the top of `model.py` are the whole architecture: edit "
        "them (or pass your own to `build_model(config, layers)`) to scale the model up. "
        "Each layer's `backend` is `auto` unless the search fixed it: flash-attn for dense "
        "and windowed layers on CUDA in fp16/bf16 when installed, compiled FlexAttention "
        "for masked layers on CUDA, and torch's `scaled_dot_product_attention` otherwise.",
    ]
    return out


FILES = {
    "model.py": "the model, standalone PyTorch, with KV-cached `generate`",
    "config.yaml": "the config for `sqa_nas.model.build_model`, with provenance "
    "(where the model came from, and its weights)",
    "model.safetensors": "the weights, keyed as `model.py`'s `state_dict`",
    "README.md": "this summary",
    "config.json": "Hugging Face config (`model_type: sqa_nas`)",
    "configuration_sqa.py": "Hugging Face configuration class",
    "modeling_sqa.py": "Hugging Face model classes wrapping `model.py`; load with "
    "`trust_remote_code=True`",
}


def readme(info: ExportInfo, files: list[str]) -> str:
    """The README.md of an export: the architecture, its trial's objectives (a trial's
    export), its weights, its costs at `README_SEQ_LEN` against the same-shape MHA model,
    usage, and one line for each of `files` it knows."""
    c, trial = info.config, info.trial
    cost = analyze(c, README_SEQ_LEN)
    mha = mha_baseline(c).layer_configs[0]
    mha_attn = attention_flops(mha, README_SEQ_LEN)
    layers = [layer_dict(x) for x in c.layer_configs]
    seeded = trial.seed_variant if trial is not None else None
    out = [f"# {printable(info.title)}", ""]
    out.append(
        f"`{allocation_text(c)}` - {c.n_layers} layers, d_model {c.d_model}, "
        f"reference heads H = {c.n_heads}, FFN {c.ffn_dim}, vocabulary {c.vocab_size}, "
        f"{'causal' if c.causal else 'bidirectional'}, {_fmt(cost.params)} parameters"
        + (f"; seeded from the {seeded} baseline" if seeded else "")
        + "."
    )
    if trial is not None:
        out += [
            "",
            "## Objectives",
            "",
            _table(
                ["objective", "value", "direction"],
                [[k, _fmt(v), OBJECTIVES[k]] for k, v in trial.objectives.items()],
            ),
        ]
        where = [
            f"{k} {v}"
            for k, v in (
                ("device", trial.device.get("name")),
                ("torch", trial.versions.get("torch")),
                ("corpus", trial.corpus.get("kind")),
                ("fingerprint", trial.corpus.get("fingerprint")),
            )
            if v
        ]
        if where:
            out += ["", "Measured with " + ", ".join(where) + "."]
    out += ["", "## Weights", "", *weights_section(info)]

    out += [
        "",
        "## Layers",
        "",
        f"Attention FLOPs per token at N = {README_SEQ_LEN:,} (forward, Q K^T and P V over "
        "the keys each query sees), relative to an MHA layer of the same shape.",
        "",
    ]
    header = ["layer", "H_q", "H_kv", "pattern", "mask", "attn FLOPs/token", "vs MHA"]
    header += ["KV bytes/token (bf16)", "params"]
    header += ["ran on (trial)"] if trial is not None else []
    header += ["backend: config -> model.py"]
    rows = []
    for i, (x, lc) in enumerate(zip(c.layer_configs, cost.layers)):
        row = [str(i), str(x.n_q_heads), str(x.n_kv_heads), x.pattern, _mask(layers[i])]
        row += [_fmt(lc.attn_flops), f"{lc.attn_flops / mha_attn:.3f}", _fmt(lc.kv_bytes)]
        row += [_fmt(lc.params)]
        row += [trial.trial_backends[i] or "-"] if trial is not None else []
        row += [f"{x.backend} -> {STANDALONE_BACKEND[x.backend]}"]
        rows.append(row)
    out.append(_table(header, rows))

    if trial is not None and (trial.analytics or trial.metrics):
        out += ["", "## Recorded by the search", ""]
        rows = [[f"analytics.{k}", _fmt(v)] for k, v in trial.analytics.items()]
        rows += [[f"metrics.{k}", _fmt(v)] for k, v in trial.metrics.items()]
        out.append(_table(["quantity", "value"], rows))

    out += ["", "## Use it", "", *use_section(info, files), "", "## Files", ""]
    out += [f"- `{name}`: {FILES[name]}" for name in files if name in FILES]
    return "\n".join(out) + "\n"
