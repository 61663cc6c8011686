"""Render model.py: `model_template.py`, with `decode_template.py`'s code pasted in, given the
export's docstring, CONFIG and LAYERS.

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

from sqa_nas.export.info import DEFAULT_TITLE, ExportInfo
from sqa_nas.export.validate import STANDALONE_BACKEND
from sqa_nas.model import ModelConfig, layer_dict
from sqa_nas.search.choices import compact_allocation
from sqa_nas.search.records import OBJECTIVES

WIDTH = 99  # the project's line length; ruff checks the output against it
BEGIN, END = "# >>> data", "# <<< data"
DECODE = "# >>> decode"  # model_template.py's line where decode_template.py's code goes
DECODE_IMPORT = "from sqa_nas.export.decode_template import "
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


def docstring(info: ExportInfo) -> str:
    """The module docstring of the exported model.py: the model (its trial and objectives
    when it has one), its layers, its weights, what it needs, and how to use it."""
    c = info.config
    shape = (
        f"{c.n_layers} layers, d_model {c.d_model}, reference heads H = {c.n_heads}, "
        f"vocabulary {c.vocab_size}, {'causal' if c.causal else 'bidirectional'}."
    )
    if info.trial is not None:
        objectives = ", ".join(
            f"{name} {value:.6g} ({OBJECTIVES[name]})"
            for name, value in info.trial.objectives.items()
        )
        summary = (
            f"Trial {info.trial.number} of an sqa-nas search: {shape} Objectives: {objectives}."
        )
    elif info.title != DEFAULT_TITLE:  # the default would repeat the first line
        summary = f"{info.title}: {shape}"
    else:
        summary = f"The model: {shape}"
    heads = (
        "Layers as H_q/H_kv (w = window, g = global tokens, bs = block-sparse): "
        f"{allocation_text(c)}."
    )
    weights = f"Weights in model.safetensors beside this file: {info.weights}."
    needs = (
        "Needs only torch (>= 2.4), and safetensors to read the weights. flash-attn and "
        "FlexAttention are used when they are "
        "installed and can run a layer; torch's scaled_dot_product_attention otherwise. "
        'The state_dict matches sqa-nas\'s `build_model("config.yaml")` key for key.'
    )

    def fill(text):
        return textwrap.fill(text, WIDTH - 4, break_on_hyphens=False)

    title = "A Sparse Query Attention transformer, exported from sqa-nas as plain PyTorch."
    usage = (
        "    from safetensors.torch import load_model\n    from model import build_model\n\n"
        "    model = build_model()\n"
        '    load_model(model, "model.safetensors")  # the weights (a tied head loads tied)\n'
        "    logits = model(tokens)  # (B, N) int64 -> (B, N, vocab_size)\n"
    )
    if c.causal:
        usage += "    out = model.generate(tokens, max_new_tokens=64, top_k=50)  # KV-cached\n"
    parts = [title, fill(summary), fill(heads), fill(weights), fill(needs), usage]
    return docstring_literal("\n\n".join(parts)) + "\n"


def template_source() -> str:
    """The text model.py is rendered from: `model_template.py` with `decode_template.py`'s
    code (after its imports) in place of the ``# >>> decode`` line, and the template's import
    of it dropped. Both are read from the installed package."""
    package = files("sqa_nas.export")
    lines = package.joinpath("model_template.py").read_text().splitlines(keepends=True)
    decode = package.joinpath("decode_template.py").read_text()
    tree = ast.parse(decode)
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    ours = {ast.unparse(n) for n in ast.parse("".join(lines)).body}
    if not {ast.unparse(n) for n in imports} <= ours:  # the pasted code needs no other import
        raise RuntimeError("decode_template.py imports what model_template.py does not")
    code = "".join(decode.splitlines(keepends=True)[imports[-1].end_lineno :]).strip("\n")
    marks = [i for i, line in enumerate(lines) if line.rstrip("\n") == DECODE]
    uses = [i for i, line in enumerate(lines) if line.startswith(DECODE_IMPORT)]
    if len(marks) != 1 or len(uses) != 1 or lines[uses[0] - 1] != "\n":
        raise RuntimeError(f"model_template.py lost its {DECODE!r} line or its import")
    lines[marks[0]] = code + "\n\n\n"
    del lines[uses[0] - 1 : uses[0] + 1]  # the import and the blank line above it
    return "".join(lines)


def render_model_py(info: ExportInfo) -> str:
    """The standalone model.py of an export."""
    source = template_source()
    tree = ast.parse(source)
    body = source.splitlines(keepends=True)[tree.body[0].end_lineno :]  # after the docstring
    code = "".join(body)
    head, _, rest = code.partition(BEGIN + "\n")
    _, _, tail = rest.partition(END + "\n")
    if not tail:
        raise RuntimeError(f"model_template.py lost its {BEGIN!r} / {END!r} markers")
    return docstring(info) + head + render_data(info.config) + tail
