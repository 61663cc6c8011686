"""Render model.py: `model_template.py` with the trial's docstring, CONFIG and LAYERS.

Only `literal` turns values into source, and it writes ints, finite floats, booleans, None
and backend names from a fixed set; anything else is a bug and raises. The values come from
a `ModelConfig` that `validate.validated_config` parsed, never from the study directly. The
module docstring about the trial goes through `docstring_literal`, which quotes any text.
"""

from __future__ import annotations

import ast
import math
import textwrap
from importlib.resources import files
from typing import Any

from sqa_nas.export.validate import STANDALONE_BACKEND, ValidTrial
from sqa_nas.model import ModelConfig, layer_dict
from sqa_nas.search.choices import compact_allocation
from sqa_nas.search.records import OBJECTIVES

WIDTH = 99  # the project's line length; ruff checks the output against it
BEGIN, END = "# >>> data", "# <<< data"
_BACKEND_NAMES = frozenset(STANDALONE_BACKEND.values())


def literal(value: Any) -> str:
    """Python source for one validated value."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float) and math.isfinite(value):
        return float.__repr__(value)
    if isinstance(value, str) and value in _BACKEND_NAMES:
        return f'"{value}"'
    raise TypeError(f"export writes only numbers, flags and backend names, got {value!r}")


def docstring_literal(text: str) -> str:
    """`text` as a triple-quoted string literal whose value is exactly `text`, whatever it
    holds: backslashes doubled, a quote that a second one follows (or that ends the text)
    escaped so no run of three can close the literal, and characters that are not printable
    ASCII (controls, bidirectional overrides) written as escapes. Checked by parsing."""
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"' and text[i + 1 : i + 2] in ('"', ""):
            out.append('\\"')
        elif ch == "\n" or " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(ascii(ch)[1:-1])  # "\x1b", "\u202e"
    source = '"""' + "".join(out) + '"""'
    if ast.literal_eval(source) != text:  # cannot happen; a bug if it does
        raise ValueError(f"docstring_literal does not round-trip {text!r}")
    return source


def render_dict(fields: dict[str, Any], col: int, tail: int = 0) -> str:
    """``dict(k=v, ...)`` starting at column `col` with `tail` characters after it, wrapped
    at WIDTH with continuation lines aligned after the parenthesis, nested dicts too."""

    def flat(v):
        return render_dict(v, 0) if isinstance(v, dict) else literal(v)

    one_line = "dict(" + ", ".join(f"{k}={flat(v)}" for k, v in fields.items()) + ")"
    if col + len(one_line) + tail <= WIDTH:
        return one_line
    indent = col + len("dict(")
    text, at = "dict(", indent  # `at`: the column where the next character goes
    for i, (key, value) in enumerate(fields.items()):
        after = tail + 1 if i == len(fields) - 1 else 1  # ")" and the tail, or ","
        item = f"{key}={flat(value)}"
        if i:
            text += ","
            at += 1
            if at + 1 + len(item) + after <= WIDTH:
                text, at = text + " " + item, at + 1 + len(item)
                continue
            text, at = text + "\n" + " " * indent, indent
        if isinstance(value, dict):
            item = f"{key}=" + render_dict(value, at + len(key) + 1, after)
        text += item
        last_line = item.rsplit("\n", 1)[-1]
        at = len(last_line) if "\n" in item else at + len(item)
    return text + ")"


def config_fields(config: ModelConfig) -> dict[str, Any]:
    """model.py's CONFIG: `ModelArgs` fields (n_layers is len(LAYERS) there)."""
    return dict(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        n_heads=config.n_heads,
        head_dim=config.layer_configs[0].head_dim,
        ffn_dim=config.ffn_dim,
        causal=config.causal,
        rope_theta=config.rope_theta,
        tie_embeddings=config.tie_embeddings,
        norm_eps=config.norm_eps,
    )


def layer_fields(config: ModelConfig) -> list[dict[str, Any]]:
    """model.py's LAYERS: `layer_dict` per layer (defaults left out), backend made standalone."""
    out = []
    for c in config.layer_configs:
        fields = layer_dict(c)
        backend = STANDALONE_BACKEND[fields.pop("backend", "auto")]
        if backend != "auto":
            fields["backend"] = backend
        out.append(fields)
    return out


def render_data(config: ModelConfig) -> str:
    """The ``CONFIG = ...`` and ``LAYERS = [...]`` source replacing the template's data block."""
    layers = "\n".join(f"    {render_dict(x, 4, 1)}," for x in layer_fields(config))
    return (
        f"CONFIG = {render_dict(config_fields(config), len('CONFIG = '))}\n\n"
        "# One dict per block, `LayerArgs` fields; left-out fields take their defaults.\n"
        f"LAYERS = [\n{layers}\n]\n"
    )


def allocation_text(config: ModelConfig) -> str:
    """'8/4 x2, 4/4 w64 x2': each layer as H_q/H_kv and its mask, comma-separated."""
    layers = [layer_dict(x) for x in config.layer_configs]
    text = compact_allocation(layers)
    if len(layers) > 1 and ", " not in text:  # no repeated runs: compact_allocation spaces them
        text = ", ".join(compact_allocation([x]) for x in layers)
    return text


def docstring(trial: ValidTrial) -> str:
    """The module docstring of the exported model.py: the trial, its objectives and layers,
    what it needs, and how to use it."""
    c = trial.config
    objectives = ", ".join(
        f"{name} {value:.6g} ({OBJECTIVES[name]})" for name, value in trial.objectives.items()
    )
    allocation = allocation_text(c)
    summary = (
        f"Trial {trial.number} of an sqa-nas search: {c.n_layers} layers, d_model "
        f"{c.d_model}, reference heads H = {c.n_heads}, vocabulary {c.vocab_size}, "
        f"{'causal' if c.causal else 'bidirectional'}. Objectives: {objectives}."
    )
    heads = f"Layers as H_q/H_kv (w = window, g = global tokens, bs = block-sparse): {allocation}."
    needs = (
        "Needs only torch (>= 2.4). flash-attn and FlexAttention are used when they are "
        "installed and can run a layer; torch's scaled_dot_product_attention otherwise. "
        'The state_dict matches sqa-nas\'s `build_model("config.yaml")` key for key.'
    )

    def fill(text):
        return textwrap.fill(text, WIDTH - 4, break_on_hyphens=False)

    title = "A Sparse Query Attention transformer, exported from sqa-nas as plain PyTorch."
    usage = (
        "    import torch\n    from model import build_model\n\n"
        "    model = build_model()  # randomly initialised, ready to train\n"
        '    model.load_state_dict(torch.load("weights.pt"))  # or trained weights\n'
        "    logits = model(tokens)  # (B, N) int64 -> (B, N, vocab_size)\n"
    )
    text = f"{title}\n\n{fill(summary)}\n\n{fill(heads)}\n\n{fill(needs)}\n\n{usage}"
    return docstring_literal(text) + "\n"


def template_source() -> str:
    """The text of `model_template.py`, read from the installed package."""
    return files("sqa_nas.export").joinpath("model_template.py").read_text()


def render_model_py(trial: ValidTrial) -> str:
    """The standalone model.py for a validated trial."""
    source = template_source()
    tree = ast.parse(source)
    body = source.splitlines(keepends=True)[tree.body[0].end_lineno :]  # after the docstring
    code = "".join(body)
    head, _, rest = code.partition(BEGIN + "\n")
    _, _, tail = rest.partition(END + "\n")
    if not tail:
        raise RuntimeError(f"model_template.py lost its {BEGIN!r} / {END!r} markers")
    return docstring(trial) + head + render_data(trial.config) + tail
