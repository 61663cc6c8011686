"""torch.compile for a process that trains many models of one family: block by block, so the
compile cost is paid once per distinct block shape per process, and only where it pays back.

`compile_blocks` compiles each transformer block with ``fullgraph=True``: blocks of the same
configuration and input shape share one compiled graph, within a model and across the models
of later trials in the same process (dynamo's cache; inductor's FX graph cache on disk shares
them between processes too). `decide` answers once per study and device (the search stores
the answer beside its MHA reference, so every trial's throughput is measured the same way):
it weighs the compile cost of the block graphs the study may need against the time
compiling saves over the study's training steps, from the deciding trial's measured eager
step and the compile figures measured on an H200 (`FIRST_COMPILE_S`, `GRAPH_S`, `GAIN`),
and says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

RECOMPILE_LIMIT = 256
# What compiling costs and gives in a search, measured on an H200 (experiments/results/
# search_efficiency_h200.json: the paper_dense space, batch 64 x 1024, 16 trials): the first
# compiled trial of a worker pays ~14 s (the loss, runtime set-up, its first block graph),
# each further block layout ~4 s; compiled blocks cut the trials' training time 1.28x.
FIRST_COMPILE_S = 14.0
GRAPH_S = 4.0
GAIN = 1.28


def allow_recompiles(limit: int = RECOMPILE_LIMIT) -> None:
    """Raise dynamo's recompile limit (8 by default) to at least `limit`.

    Each new shape, mask or model is a new graph of the same function: past the limit dynamo
    stops compiling that function and runs it eagerly from then on (FlexAttention's eager
    path materialises the N x N scores; a search's later trials would train uncompiled)."""
    dynamo = torch._dynamo.config
    for knob in ("cache_size_limit", "recompile_limit"):
        if hasattr(dynamo, knob):
            setattr(dynamo, knob, max(getattr(dynamo, knob), limit))


def compile_blocks(model: Any, mode: str | None = None) -> list[Any]:
    """Compiled forms of every block of `model` (an `SQATransformer`, prepared with
    `prepare` for the shapes it will run), ``fullgraph=True``: a graph break is an error,
    not a slow path. Pass them as ``model(tokens, blocks)``; the model itself stays eager
    (evaluation, export). `mode` is torch.compile's ("reduce-overhead": CUDA graphs)."""
    allow_recompiles()  # each block shape of each trial is a new graph of Block.forward
    return [torch.compile(b, fullgraph=True, dynamic=False, mode=mode) for b in model.layers]


@dataclass
class CompileDecision:
    """Whether one trial compiles, and why (stored with the trial)."""

    used: bool
    reason: str
    graphs: int = 0  # block graphs weighed ("auto")
    est_cost_s: float | None = None
    est_saving_s: float | None = None
    compile_s: float | None = None  # measured: first compiled steps minus eager ones

    def record(self) -> dict[str, Any]:
        """The JSON form stored with the trial."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


def decide(
    setting: bool | str,
    device: torch.device,
    graphs: int,
    steps: int,
    eager_step_s: float | None,
) -> CompileDecision:
    """Whether a study compiles its blocks on this device (one answer for every trial of
    the study there, so their throughputs compare).

    Arguments:
        setting: True / False force it (True is refused on CPU, where a compile costs
            ~30 s per shape: eager); "auto" compiles when the estimated saving over the
            study's training steps exceeds the estimated cost of compiling its block graphs.
        graphs: block graphs the study may compile (distinct block layouts the space can
            draw x batch shapes, at most what its trials can hold).
        steps: training steps of the whole study (-1: bounded by time only).
        eager_step_s: a measured eager training step, in seconds (needed for "auto").
    """
    if device.type != "cuda":
        return CompileDecision(False, "eager: compiling pays back only on a GPU")
    if setting is True or setting is False:
        return CompileDecision(bool(setting), "set by budget.train.compile")
    if steps < 0 or eager_step_s is None:
        return CompileDecision(False, "auto: no step count to weigh the compile cost against")
    cost = FIRST_COMPILE_S + (graphs - 1) * GRAPH_S
    saving = steps * eager_step_s * (1 - 1 / GAIN)
    used = saving > cost
    why = (
        f"auto (H200 figures: {FIRST_COMPILE_S:g} s + {GRAPH_S:g} s per further block graph, "
        f"x{GAIN:g} faster training): up to {graphs} graph(s) cost ~{cost:.0f} s "
        f"{'<' if used else '>='} ~{saving:.0f} s saved over the study's training steps"
    )
    return CompileDecision(used, why, graphs, round(cost, 2), round(saving, 2))
