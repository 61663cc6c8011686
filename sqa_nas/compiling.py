"""torch.compile in a process that builds many shapes or models."""

from __future__ import annotations

import torch

RECOMPILE_LIMIT = 256


def allow_recompiles(limit: int = RECOMPILE_LIMIT) -> None:
    """Raise dynamo's recompile limit (8 by default) to at least `limit`.

    Each new shape, mask or model is a new graph of the same function: past the limit dynamo
    stops compiling that function and runs it eagerly from then on (FlexAttention's eager
    path materialises the N x N scores; a search's later trials would train uncompiled)."""
    dynamo = torch._dynamo.config
    for knob in ("cache_size_limit", "recompile_limit"):
        if hasattr(dynamo, knob):
            setattr(dynamo, knob, max(getattr(dynamo, knob), limit))
