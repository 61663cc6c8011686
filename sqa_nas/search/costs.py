"""The analytic cost range of a search space: min and max parameters, attention FLOPs and
KV-cache bytes over every architecture it holds, from the formulas alone."""

from __future__ import annotations

import itertools
from typing import Any

from sqa_nas.analytics import ModelCost, analyze
from sqa_nas.errors import UserError
from sqa_nas.search.space import SearchSpec

KEYS = ("params", "attn_flops", "kv_bytes")


def cost_range(spec: SearchSpec) -> tuple[dict, dict]:
    """Min and max of params, attention FLOPs and KV cache over the whole space. Costs add
    up over layers, and every unit offers the same choices, so one layer's cheapest and
    dearest choice bound every layer: each choice of a unit is priced once, on the model
    whose units all take it (a few models, however many layers)."""
    dists = spec.distributions()
    base = {k: d.choices[0] for k, d in dists.items()}
    first = spec.units()[0][0] + "."
    options = {k: d.choices for k, d in dists.items() if k.startswith(first)}
    n = spec.model.n_layers
    ref = _cost(spec, base)
    layer_costs = [
        _cost(spec, _everywhere(spec, base, combo)).layers[0] for combo in _product(options)
    ]
    # The base model with its layers (all alike) swapped for the cheapest / dearest one;
    # LayerCost and ModelCost name the three costs alike.
    lo, hi = {}, {}
    for k in KEYS:
        per_layer = [getattr(c, k) for c in layer_costs]
        base_layer = getattr(ref.layers[0], k)
        lo[k] = getattr(ref, k) + n * (min(per_layer) - base_layer)
        hi[k] = getattr(ref, k) + n * (max(per_layer) - base_layer)
    # Searched model fields scale everything: report the base's range over their values.
    searched = {f"model.{name}": v for name, v in spec.model.searched.items()}
    for value_combo in _product(searched) if searched else []:
        cost = _cost(spec, {**base, **value_combo})
        for k in KEYS:
            lo[k], hi[k] = min(lo[k], getattr(cost, k)), max(hi[k], getattr(cost, k))
    if not isinstance(lo["params"], int):
        raise UserError("internal: params must be integers")
    return lo, hi


def _cost(spec: SearchSpec, params: dict[str, Any]) -> ModelCost:
    return analyze(spec.build_config(params, spec.model.vocab_size or 256), spec.model.seq_len)


def _everywhere(spec: SearchSpec, base: dict[str, Any], combo: dict[str, Any]) -> dict:
    """`base` with the first unit's `combo` given to every unit."""
    first = spec.units()[0][0]
    out = dict(base)
    for unit, _ in spec.units():
        out |= {unit + k.removeprefix(first): v for k, v in combo.items()}
    return out


def _product(options: dict) -> list[dict]:
    keys = list(options)
    return [dict(zip(keys, values)) for values in itertools.product(*options.values())]
