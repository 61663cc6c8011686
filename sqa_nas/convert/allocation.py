"""The target of a conversion: `--allocation SPEC` (and `--kv-heads`) read against the source
model's config.

SPEC is one of

- a variant name (``SQA``, ``sSQA``, ``xSQA``, ... `sqa_nas.registry`): every layer gets its
  H_q / H_kv at the source's reference H;
- a per-layer allocation as the search prints it (`sqa_nas.search.choices.compact_allocation`,
  the dashboard's and the export's ``allocation``): ``"8/4 x2, 4/4 w64 x2"`` or one token
  per layer ``"8/4 8/2 4/4 4/4"``; a single ``"H_q/H_kv"`` applies to every layer;
- a YAML file with a ``layers:`` list (an export's config.yaml, a trial's ``model``) or a
  bare list of per-layer dicts (`sqa_nas.model.layer_dict` fields).

Head counts come from the allocation; a layer keeps the source's mask (window, global
tokens, block-sparse layout) unless the allocation names one, and always keeps the source's
bias flag (a weight the conversion carries, not a choice).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sqa_nas.errors import UserError, first_error
from sqa_nas.model import ModelConfig, layer_dict
from sqa_nas.registry import get_variant, list_variants
from sqa_nas.search.choices import HeadsChoice, MaskChoice
from sqa_nas.search.yamlfile import read_yaml

MASK_FIELDS = ("window", "global_tokens", "block_sparse")
# What an allocation may set per layer; a `bias` there must be the source's (it comes with
# the source's weights), so that an export's config.yaml reads as an allocation.
LAYER_FIELDS = ("n_q_heads", "n_kv_heads", *MASK_FIELDS, "backend", "bias")
_MASK = re.compile(r"w([0-9]+)(?:\+g([0-9]+))?")
_REPEAT = re.compile(r"x([1-9][0-9]*)")


def target_config(source: ModelConfig, spec: str, kv_heads: str | None = None) -> ModelConfig:
    """The converted model's config: `source` with every layer's heads (and mask, where
    named) from `spec`; `kv_heads` "keep" keeps each source layer's H_kv, a number sets
    every layer's. `UserError` naming the allocation's problem."""
    entries = allocation_layers(spec, source.n_layers, source.n_heads)
    if kv_heads is not None:
        entries = [
            _with_kv(e, kv_heads, c.n_kv_heads) for e, c in zip(entries, source.layer_configs)
        ]
    layers = []
    for i, (entry, src) in enumerate(zip(entries, source.layer_configs)):
        if entry.pop("bias", src.bias) != src.bias:
            raise UserError(
                f"allocation {spec!r}: layers[{i}].bias differs from the source layer's "
                f"({src.bias}): biases come with the source's weights"
            )
        base = layer_dict(src)
        if any(k in entry for k in MASK_FIELDS):  # the allocation names the mask: its own
            base = {k: v for k, v in base.items() if k not in MASK_FIELDS}
        layers.append({**base, **entry})
    data = {**source.resolved(), "layers": layers}
    try:
        return ModelConfig(**data)
    except ValidationError as exc:
        raise UserError(f"allocation {spec!r}: {first_error(exc)}") from None


def allocation_layers(spec: str, n_layers: int, n_heads: int) -> list[dict[str, Any]]:
    """One dict of `LAYER_FIELDS` per layer from SPEC (see the module docstring)."""
    names = {v.name for v in list_variants()}
    if spec in names:
        variant = get_variant(spec)
        n_q, n_kv = variant.heads(n_heads)
        entry = {"n_q_heads": n_q, "n_kv_heads": n_kv, **_mask_fields(variant.defaults)}
        return [dict(entry) for _ in range(n_layers)]
    if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        return _from_yaml(Path(spec), n_layers)
    layers = _parse_compact(spec, names)
    if len(layers) == 1:
        layers = layers * n_layers
    if len(layers) != n_layers:
        raise UserError(
            f"allocation {spec!r} gives {len(layers)} layers; the source model has {n_layers}"
        )
    return [dict(x) for x in layers]


def _mask_fields(fields: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in fields.items() if k in MASK_FIELDS}
    if "block_sparse" in out and hasattr(out["block_sparse"], "model_dump"):
        out["block_sparse"] = out["block_sparse"].model_dump()
    return out


def _with_kv(entry: dict[str, Any], kv_heads: str, source_kv: int) -> dict[str, Any]:
    if kv_heads == "keep":
        return {**entry, "n_kv_heads": source_kv}
    if not kv_heads.isdigit() or int(kv_heads) < 1:
        raise UserError(f"--kv-heads {kv_heads!r}: give 'keep' or a whole number >= 1")
    return {**entry, "n_kv_heads": int(kv_heads)}


def _parse_compact(spec: str, variants: set[str]) -> list[dict[str, Any]]:
    """'8/4 x2, 4/4 w64 x2' -> one dict per layer; `UserError` naming the first bad word."""
    words = spec.replace(",", " ").split()
    if not words:
        raise UserError("--allocation is empty: give a variant name or H_q/H_kv per layer")
    runs: list[list] = []  # [fields, count]
    for word in words:
        if "/" in word:
            try:
                heads = HeadsChoice.parse(word)
            except UserError:
                raise UserError(_not_an_allocation(spec, word, variants)) from None
            runs.append([{"n_q_heads": heads.n_q, "n_kv_heads": heads.n_kv}, 1])
            continue
        if not runs:
            raise UserError(_not_an_allocation(spec, word, variants))
        fields, count = runs[-1]
        mask, repeat = _MASK.fullmatch(word), _REPEAT.fullmatch(word)
        if mask and not any(k in fields for k in MASK_FIELDS) and count == 1:
            window, globals_ = mask.groups()
            choice = MaskChoice.parse(
                f"flex:{window}+{globals_}" if globals_ else f"window:{window}"
            )
            fields.update(choice.layer_fields())
        elif repeat and count == 1:
            runs[-1][1] = int(repeat.group(1))
        elif word == "bs":
            raise UserError(
                f"allocation {spec!r}: 'bs' (block-sparse) carries no layout here; give the "
                "allocation as a YAML file with the block_sparse layout of each layer"
            )
        else:
            raise UserError(_not_an_allocation(spec, word, variants))
    return [fields for fields, count in runs for _ in range(count)]


def _not_an_allocation(spec: str, word: str, variants: set[str]) -> str:
    return (
        f"allocation {spec!r}: {word!r} is not a head count H_q/H_kv, a mask (w64, w64+g4) "
        f"or a repeat (x2); SPEC is a variant ({', '.join(sorted(variants))}), a YAML "
        "file, or per-layer head counts such as '8/4 x2, 4/4 x2'"
    )


def _from_yaml(path: Path, n_layers: int) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"allocation file {path}: no such file")
    data = read_yaml(path, "allocation file")
    layers = data.get("layers") if isinstance(data, dict) else data
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        raise UserError(
            f"{path}: expected a 'layers:' list of per-layer dicts (n_q_heads, n_kv_heads, "
            "window, ...) or such a list alone"
        )
    if len(layers) != n_layers:
        raise UserError(f"{path}: {len(layers)} layers; the source model has {n_layers}")
    out = []
    for i, layer in enumerate(layers):
        unknown = sorted(set(layer) - set(LAYER_FIELDS))
        if unknown:
            raise UserError(
                f"{path}: layers[{i}].{unknown[0]} is not an allocation field "
                f"(allowed: {', '.join(LAYER_FIELDS)})"
            )
        missing = [k for k in ("n_q_heads", "n_kv_heads") if k not in layer]
        if missing:
            raise UserError(f"{path}: layers[{i}] lacks {missing[0]}")
        out.append(dict(layer))
    return out
