"""config.yaml and README.md of an exported trial, from a `ValidTrial` only."""

from __future__ import annotations

from typing import Any

import yaml

from sqa_nas.analytics import analyze, attention_flops, mha_baseline
from sqa_nas.export.torch_code import allocation_text
from sqa_nas.export.validate import ValidTrial
from sqa_nas.model import layer_dict
from sqa_nas.printable import printable
from sqa_nas.search.records import OBJECTIVES

# Sequence length of the per-layer attention columns (the trial's own analytics are given
# as the search recorded them).
README_SEQ_LEN = 4096


def config_yaml(trial: ValidTrial) -> str:
    """`sqa_nas.model.build_model` reads this file; `provenance` never affects the model."""
    data: dict[str, Any] = trial.config.resolved()
    data["provenance"] = trial.provenance()
    header = comment(f"sqa-nas model config: trial {trial.number} of study {trial.study}.")
    header += comment(
        'Rebuild with sqa_nas.model.build_model("config.yaml"); model.py beside it '
        "is the same model without sqa-nas."
    )
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=False)


def comment(text: str) -> str:
    """`text` as one ``#`` comment line (YAML's, Python's): a newline or another control
    character in it is shown (`printable`), never starts a line of its own."""
    return f"# {printable(text)}\n"


def _fmt(x: float | int | None) -> str:
    if x is None:
        return "-"
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


def readme(trial: ValidTrial, files: list[str]) -> str:
    """The README.md of an export: the architecture, its costs at `README_SEQ_LEN` against the
    same-shape MHA model, usage, and one line for each of `files` it knows."""
    c = trial.config
    cost = analyze(c, README_SEQ_LEN)
    mha = mha_baseline(c).layer_configs[0]
    mha_attn = attention_flops(mha, README_SEQ_LEN)
    layers = [layer_dict(x) for x in c.layer_configs]
    out = [f"# Trial {trial.number} of study `{trial.study}`", ""]
    out.append(
        f"`{allocation_text(c)}` - {c.n_layers} layers, d_model {c.d_model}, "
        f"reference heads H = {c.n_heads}, FFN {c.ffn_dim}, vocabulary {c.vocab_size}, "
        f"{'causal' if c.causal else 'bidirectional'}, {_fmt(cost.params)} parameters"
        + (f"; seeded from the {trial.seed_variant} baseline" if trial.seed_variant else "")
        + "."
    )
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

    out += [
        "",
        "## Layers",
        "",
        f"Attention FLOPs per token at N = {README_SEQ_LEN:,} (forward, Q K^T and P V over "
        "the keys each query sees), relative to an MHA layer of the same shape.",
        "",
    ]
    rows = []
    for i, (x, lc) in enumerate(zip(c.layer_configs, cost.layers)):
        rows.append(
            [
                str(i),
                str(x.n_q_heads),
                str(x.n_kv_heads),
                x.pattern,
                _mask(layers[i]),
                _fmt(lc.attn_flops),
                f"{lc.attn_flops / mha_attn:.3f}",
                _fmt(lc.kv_bytes),
                _fmt(lc.params),
                trial.trial_backends[i] or "-",
                f"{x.backend} -> {trial.standalone_backends[i]}",
            ]
        )
    out.append(
        _table(
            [
                "layer",
                "H_q",
                "H_kv",
                "pattern",
                "mask",
                "attn FLOPs/token",
                "vs MHA",
                "KV bytes/token (bf16)",
                "params",
                "ran on (trial)",
                "backend: config -> model.py",
            ],
            rows,
        )
    )

    if trial.analytics or trial.metrics:
        out += ["", "## Recorded by the search", ""]
        rows = [[f"analytics.{k}", _fmt(v)] for k, v in trial.analytics.items()]
        rows += [[f"metrics.{k}", _fmt(v)] for k, v in trial.metrics.items()]
        out.append(_table(["quantity", "value"], rows))

    out += [
        "",
        "## Use it",
        "",
        "`model.py` is plain PyTorch and does not need sqa-nas:",
        "",
        "```python",
        "import torch",
        "from model import build_model",
        "",
        "model = build_model()  # randomly initialised, ready to train",
        "logits = model(torch.randint(0, model.args.vocab_size, (1, 128)))  # (B, N, vocab)",
        "```",
        "",
        "The same model inside sqa-nas, with the same `state_dict` keys and shapes, so "
        "weights move between the two with `load_state_dict`:",
        "",
        "```python",
        "from sqa_nas.model import build_model",
        "",
        'model = build_model("config.yaml")',
        "```",
        "",
        "`CONFIG` and `LAYERS` at the top of `model.py` are the whole architecture: edit "
        "them (or pass your own to `build_model(config, layers)`) to scale the model up. "
        "Each layer's `backend` is `auto` unless the search fixed it: flash-attn for dense "
        "and windowed layers on CUDA in fp16/bf16 when installed, compiled FlexAttention "
        "for masked layers on CUDA, and torch's `scaled_dot_product_attention` otherwise.",
        "",
        "## Files",
        "",
    ]
    about = {
        "model.py": "the model, standalone PyTorch",
        "config.yaml": "the config for `sqa_nas.model.build_model`, with provenance "
        "(study, trial, objectives, device, versions, corpus, params)",
        "README.md": "this summary",
        "config.json": "Hugging Face config (`model_type: sqa_nas`)",
        "configuration_sqa.py": "Hugging Face configuration class",
        "modeling_sqa.py": "Hugging Face model class wrapping `model.py`; load with "
        "`trust_remote_code=True`",
    }
    out += [f"- `{name}`: {about[name]}" for name in files if name in about]
    return "\n".join(out) + "\n"
