"""Correctness before timing: a layer's output (and, for rows that run a backward, its
input gradient) against the float64 reference, with a tolerance set by the plain formula's
own error in the working dtype."""

from __future__ import annotations

import torch

from sqa_nas.attention import AttentionConfig
from sqa_nas.attention.reference import error_and_tolerance, reference_layer
from sqa_nas.layer import SparseQueryAttention


def check_layer(
    layer: SparseQueryAttention,
    n: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
    backward: bool = False,
) -> tuple[float, float]:
    """The layer's error against the float64 reference at length `n`.

    Arguments:
        layer: the layer as it will be timed (its weights in `dtype`, on `device`).
        n: tokens of the check's input, of shape (1, n, d_model), seeded by `seed`.
        backward: check the input's gradient too (the layer then runs the backend it
            trains with); the worse of output and gradient, relative to its tolerance,
            is returned.
    Return:
        (error, tolerance): max |out - ref|, and twice the error of the plain formula in
        `dtype` plus a small floor; the check passes when error <= tolerance.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, n, layer.config.d_model, generator=gen).to(device, dtype)
    if not backward:
        with torch.no_grad():
            out, ref64 = layer(x), reference_layer(layer, x.double(), torch.float64)
            return error_and_tolerance(out, ref64, reference_layer(layer, x, dtype))
    grad_out = torch.randn(1, n, layer.config.d_model, generator=gen).to(device, dtype)
    outs, grads = [], []
    for run, leaf in (
        (layer, x),
        (lambda t: reference_layer(layer, t, torch.float64), x.double()),
        (lambda t: reference_layer(layer, t, dtype), x),
    ):
        leaf = leaf.detach().requires_grad_()
        out = run(leaf)
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out, leaf, grad_out.to(out.dtype))[0])
    layer.zero_grad(set_to_none=True)
    return max(
        error_and_tolerance(outs[0], outs[1], outs[2]),
        error_and_tolerance(grads[0], grads[1], grads[2]),
        key=lambda et: et[0] / et[1],
    )


_CHECKS: dict[tuple, tuple[float, float]] = {}


def check_config(
    config: AttentionConfig,
    backend: str,
    n: int,
    dtype: torch.dtype,
    device: torch.device,
    backward: bool = False,
) -> dict:
    """The correctness check of `config` on `backend` at `n` tokens (the row's
    min(N, check_len)), of the gradient too when the timed row runs a backward; cached per
    process, since it does not depend on the timed length (and each new shape costs a
    compile on FlexAttention).

    Return:
        the row's columns: {"check_error", "check_tolerance", "check_ok", "check_len"}.
    """
    key = (
        config.model_copy(update={"backend": backend}).model_dump_json(),
        str(dtype),
        str(device),
        n,
        backward,
    )
    if key not in _CHECKS:
        checked = SparseQueryAttention(config.model_copy(update={"backend": backend}))
        _CHECKS[key] = check_layer(checked.to(device, dtype), n, dtype, device, backward=backward)
    err, tol = _CHECKS[key]
    return {"check_error": err, "check_tolerance": tol, "check_ok": err <= tol, "check_len": n}
