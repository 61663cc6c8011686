"""The analytic cost range of a search space: min and max parameters, attention FLOPs and
KV-cache bytes over every architecture it holds, from the formulas alone."""

from __future__ import annotations

import itertools

from sqa_nas.analytics import analyze
from sqa_nas.errors import UserError
from sqa_nas.search.space import SearchSpec


def cost_range(spec: SearchSpec) -> tuple[dict, dict]:
    """Min and max of params, attention FLOPs and KV cache over the whole space. Costs add
    up over layers, so each unit's cheapest and dearest choice bound the total."""
    keys = ("params", "attn_flops", "kv_bytes")
    dists = spec.distributions()
    base = {k: d.choices[0] for k, d in dists.items()}
    vocab = spec.model.vocab_size or 256
    ref = analyze(spec.build_config(base, vocab), spec.model.seq_len)
    lo = {k: getattr(ref, k) for k in keys}
    hi = dict(lo)
    for unit, _ in spec.units():
        options = [k for k in dists if k.startswith(unit + ".")]
        costs = []
        for combo in _product({k: dists[k].choices for k in options}):
            cost = analyze(spec.build_config({**base, **combo}, vocab), spec.model.seq_len)
            costs.append(
                {k: getattr(cost, k) - lo_k for k, lo_k in ((k, getattr(ref, k)) for k in keys)}
            )
        for k in keys:
            lo[k] += min(c[k] for c in costs)
            hi[k] += max(c[k] for c in costs)
    for k in keys:  # searched model fields scale everything: report the base's range
        if not spec.model.searched:
            continue
        for value_combo in _product({f"model.{n}": v for n, v in spec.model.searched.items()}):
            cost = analyze(spec.build_config({**base, **value_combo}, vocab), spec.model.seq_len)
            lo[k], hi[k] = min(lo[k], getattr(cost, k)), max(hi[k], getattr(cost, k))
    if not isinstance(lo["params"], int):
        raise UserError("internal: params must be integers")
    return lo, hi


def _product(options: dict) -> list[dict]:
    keys = list(options)
    return [dict(zip(keys, values)) for values in itertools.product(*options.values())]
