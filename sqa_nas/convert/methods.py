"""How one attention layer's weights become a layer with fewer query (and other KV) heads.

Notation for one layer (d = d_model, D = head_dim): the source has H_a attention heads, head h
computing ``y_h = softmax(q_h k_g^T / sqrt(D)) v_g`` (D values per token) with ``q_h = W_Q[h] x``
(W_Q[h]: the D rows of head h) reading KV head ``g = h // (H_a / H_kv)``, and the layer's
output ``z = sum_h W_O[:, h] y_h (+ b_O)`` (W_O[:, h]: head h's D columns). An rSQA source
(H_q < H_kv) is first written in this form: H_a = H_kv heads, head j's query rows those of
query head ``j % H_q`` (`canonical`). The target has H_q' query and H_kv' KV heads,
H_q' >= H_kv' (GQA grouping: target query head t reads target KV head t // (H_q' / H_kv')).

KV heads (every method): with H_kv' <= H_kv, target KV head k is the mean of source KV heads
``k p .. k p + p - 1`` (p = H_kv / H_kv': ``W_K'[k] = (1/p) sum_j W_K[k p + j]``, likewise W_V
and biases; Megatron-LM's MHA -> GQA pooling); with H_kv' > H_kv each source KV head is copied
to r = H_kv' / H_kv target KV heads (exact). Either way the KV heads fall into
B = min(H_kv, H_kv') buckets; bucket b's source query heads (those reading its source KV heads,
C = H_a / B of them) fill its S = H_q' / B target query slots, so every kept query head reads
a KV head made from the one it read before.

Query heads, per bucket:

- ``select``: keep the S heads of largest importance ``I_h = E_tokens ||W_O[:, h] y_h||^2``
  (the squared norm of the head's contribution to the layer's output, on calibration batches),
  in their original order: ``W_Q'[t] = W_Q[h_t]``, ``W_O'[:, t] = W_O[:, h_t]``.
- ``mean``: merge consecutive groups G_t of C / S heads (S must divide C):
  ``W_Q'[t] = (1/|G_t|) sum_{h in G_t} W_Q[h]`` and ``W_O'[:, t] = sum_{h in G_t} W_O[:, h]``
  (exact when the merged heads agree; Megatron-style).
- ``fit``: the heads ``select`` keeps, then W_O' (and b_O') refit by ridge least squares so
  the new layer's output matches the source layer's on the calibration tokens:
  ``W_O'^T = (Y'^T Y' + lam I)^-1 Y'^T Z`` with Y' (T, H_q' D) the new heads' outputs, Z (T, d)
  the source layer's outputs, ``lam = ridge * trace(Y'^T Y') / (H_q' D)`` (the bias column,
  when there is one, is not penalised). A layer that keeps every query head and pools no KV
  heads is exact as built (its W_O gives zero residual) and is not refit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sqa_nas.attention.config import AttentionConfig
from sqa_nas.errors import UserError

METHODS = ("select", "mean", "fit")


@dataclass(frozen=True)
class LayerPlan:
    """Which source heads make each target head of one layer (canonical source indices).

    kv: target KV head k <- the mean of source KV heads ``kv[k]`` (one index: a copy).
    q: target query head t <- source query heads ``q[t]`` (select / fit: one; mean: a group
    whose W_Q rows are averaged and W_O columns summed).
    """

    kv: tuple[tuple[int, ...], ...]
    q: tuple[tuple[int, ...], ...]
    source_heads: tuple[int, int]  # (H_a, H_kv) of the source layer

    @property
    def exact(self) -> bool:
        """True when the target layer computes what the source layer does: every query head
        kept in order, every KV head a copy (none pooled)."""
        every_head = self.q == tuple((h,) for h in range(self.source_heads[0]))
        return every_head and all(len(g) == 1 for g in self.kv)


def check_layer(i: int, src: AttentionConfig, dst: AttentionConfig, method: str) -> None:
    """`UserError` when layer `i` cannot be converted from `src` to `dst` by `method`."""
    h_a, k, k2, q2 = src.attn_heads, src.n_kv_heads, dst.n_kv_heads, dst.n_q_heads
    where = f"layer {i}: {q2}/{k2} from {src.n_q_heads}/{k}"
    if src.head_dim != dst.head_dim or src.d_model != dst.d_model:
        raise UserError(f"{where}: head_dim and d_model must stay the same")
    if dst.is_reverse:
        raise UserError(f"{where}: convert does not make rSQA layers (H_q < H_kv)")
    if q2 > h_a:
        raise UserError(
            f"{where}: {q2} query heads asked, the source layer has {h_a}; convert only "
            "removes query heads"
        )
    if k % k2 and k2 % k:
        raise UserError(
            f"{where}: {k2} KV heads cannot be made from {k} (pooling needs {k2} to divide "
            f"{k}, copying needs {k} to divide {k2})"
        )
    buckets = min(k, k2)
    candidates, slots = h_a // buckets, q2 // buckets
    if method == "mean" and candidates % slots:
        raise UserError(
            f"{where}: mean merges equal groups: {slots} query heads per KV group must divide "
            f"the {candidates} the source has there"
        )


def plan_layer(
    src: AttentionConfig, dst: AttentionConfig, method: str, importance: torch.Tensor | None
) -> LayerPlan:
    """The `LayerPlan` of `method` (call `check_layer` first); `importance` (H_a,) is
    needed by select and fit."""
    h_a, k, k2, q2 = src.attn_heads, src.n_kv_heads, dst.n_kv_heads, dst.n_q_heads
    buckets = min(k, k2)
    if k2 <= k:
        p = k // k2
        kv = tuple(tuple(range(b * p, (b + 1) * p)) for b in range(k2))
    else:
        r = k2 // k
        kv = tuple((b // r,) for b in range(k2))
    candidates, slots = h_a // buckets, q2 // buckets
    q: list[tuple[int, ...]] = []
    for b in range(buckets):
        heads = list(range(b * candidates, (b + 1) * candidates))
        if method == "mean":
            m = candidates // slots
            q += [tuple(heads[j * m : (j + 1) * m]) for j in range(slots)]
            continue
        if importance is None:
            raise ValueError(f"{method} needs the heads' importance")
        scores = importance[heads]
        # Stable: equal scores keep the lower index (all kept when slots == candidates).
        order = sorted(range(candidates), key=lambda j: (-float(scores[j]), j))[:slots]
        q += [(heads[j],) for j in sorted(order)]
    return LayerPlan(kv, tuple(q), (h_a, k))


def canonical(weights: dict[str, torch.Tensor], src: AttentionConfig) -> dict[str, torch.Tensor]:
    """A source layer's projections as per-head tensors: q (H_a, D, d), k and v (H_kv, D, d),
    o (d, H_a, D), and biases bq (H_a, D), bk, bv (H_kv, D), bo (d) when the layer has them.
    `weights` holds the layer's ``{q,k,v,o}_proj.{weight,bias}`` tensors."""
    d, n = src.head_dim, src.attn_heads
    assert d is not None  # AttentionConfig fills it
    tile = torch.arange(n) % src.n_q_heads  # rSQA: attention head j uses query head j % H_q
    out = {
        "q": weights["q_proj.weight"].view(src.n_q_heads, d, -1)[tile],
        "k": weights["k_proj.weight"].view(src.n_kv_heads, d, -1),
        "v": weights["v_proj.weight"].view(src.n_kv_heads, d, -1),
        "o": weights["o_proj.weight"].view(-1, n, d),
    }
    if src.bias:
        out["bq"] = weights["q_proj.bias"].view(src.n_q_heads, d)[tile]
        out["bk"] = weights["k_proj.bias"].view(src.n_kv_heads, d)
        out["bv"] = weights["v_proj.bias"].view(src.n_kv_heads, d)
        out["bo"] = weights["o_proj.bias"]
    return out


def layer_weights(
    weights: dict[str, torch.Tensor], src: AttentionConfig, plan: LayerPlan, method: str
) -> dict[str, torch.Tensor]:
    """The target layer's ``{q,k,v,o}_proj.{weight,bias}`` from the source's, by `plan`
    (fit's W_O is these columns until `solve_output` replaces it)."""
    c = canonical(weights, src)

    def pooled(t: torch.Tensor, groups) -> torch.Tensor:  # (len(groups), ...) group means
        return torch.stack([t[list(g)].mean(0) for g in groups])

    q = pooled(c["q"], plan.q)  # (H_q', D, d)
    o = torch.stack([c["o"][:, list(g)].sum(1) for g in plan.q], 1)  # (d, H_q', D)
    out = {
        "q_proj.weight": q.flatten(0, 1),
        "k_proj.weight": pooled(c["k"], plan.kv).flatten(0, 1),
        "v_proj.weight": pooled(c["v"], plan.kv).flatten(0, 1),
        "o_proj.weight": o.flatten(1, 2),
    }
    if src.bias:
        out["q_proj.bias"] = pooled(c["bq"], plan.q).flatten()
        out["k_proj.bias"] = pooled(c["bk"], plan.kv).flatten()
        out["v_proj.bias"] = pooled(c["bv"], plan.kv).flatten()
        out["o_proj.bias"] = c["bo"].clone()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    return {k: v.contiguous() for k, v in out.items()}


def solve_output(
    gram: torch.Tensor, cross: torch.Tensor, ridge: float, bias: bool = False
) -> torch.Tensor:
    """The ridge least-squares solution M = (A + lam P)^-1 B of min ||Y M - Z||^2 + lam ||M_w||^2.

    Arguments:
        gram: A = Y^T Y, (n, n) with n = H_q' D (+ 1: a trailing ones column for the bias).
        cross: B = Y^T Z, (n, d).
        ridge: lam = ridge * mean of A's diagonal over the weight columns; 0: plain least
            squares (the minimum-norm solution when A is singular).
        bias: the last column of Y is the ones column, not penalised (P is the identity on
            the weight columns, zero on it).
    Return:
        M (n, d) in float64: W_O'^T, with b_O' its last row when `bias`.
    """
    a, b = gram.double().cpu(), cross.double().cpu()
    n_w = a.shape[0] - int(bias)
    if ridge > 0:
        lam = ridge * float(a.diagonal()[:n_w].mean().clamp_min(1e-30))
        penalty = torch.ones(a.shape[0], dtype=a.dtype)
        if bias:
            penalty[-1] = 0.0
        a = a + torch.diag(lam * penalty)
        try:
            return torch.linalg.solve(a, b)
        except RuntimeError:  # singular despite the ridge (a zero column): least squares
            pass
    return torch.linalg.lstsq(a, b, driver="gelsd").solution
