"""torch.compile for a process that trains many models of one family: block by block, so the
compile cost is paid once per distinct block shape per process, and only where it pays back.

`compile_blocks` compiles each transformer block with ``fullgraph=True``: blocks of the same
configuration and input shape share one compiled graph, within a model and across the models
of later trials in the same process (dynamo's cache; inductor's FX graph cache on disk shares
them between processes too). `decide` answers once per study and device (the search stores
the answer beside its MHA reference, so every trial's throughput is measured the same way):
it weighs the compile cost of the block graphs the study may need against the step time
compiling saves over the study's training steps, from figures this process measured
(`CompileLedger`) or, before it has any, from priors measured on an H200 (`PRIOR_GRAPH_S`,
`PRIOR_GAIN`), and says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

RECOMPILE_LIMIT = 256
# Priors until this process has measured its own, from experiments/results/
# step_throughput_h200.json (paper model, batch 128 x 1024): 2.0-3.6 s to compile one new
# block graph (forward and backward), and compiled blocks 1.66-1.85x the eager step.
PRIOR_GRAPH_S = 3.0
PRIOR_GAIN = 1.7


def allow_recompiles(limit: int = RECOMPILE_LIMIT) -> None:
    """Raise dynamo's recompile limit (8 by default) to at least `limit`.

    Each new shape, mask or model is a new graph of the same function: past the limit dynamo
    stops compiling that function and runs it eagerly from then on (FlexAttention's eager
    path materialises the N x N scores; a search's later trials would train uncompiled)."""
    dynamo = torch._dynamo.config
    for knob in ("cache_size_limit", "recompile_limit"):
        if hasattr(dynamo, knob):
            setattr(dynamo, knob, max(getattr(dynamo, knob), limit))


def block_signatures(model: Any, batch: tuple[int, int], dtype: torch.dtype) -> set[tuple]:
    """One key per distinct compiled block graph `model` needs at `batch` (B, N) tokens:
    the block's attention layout and the input shape and dtype."""
    d = model.config
    return {
        (repr(a), d.d_model, d.ffn_dim, d.norm_eps, batch, str(dtype))
        for a in model.config.layer_configs
    }


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
    new_graphs: int | None = None  # graphs this trial's worker compiled for it

    def record(self) -> dict[str, Any]:
        """The JSON form stored with the trial."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class CompileLedger:
    """What this process (a worker, on one device) has compiled and measured."""

    compiled: set[tuple] = field(default_factory=set)
    graph_s: list[float] = field(default_factory=list)  # seconds per new block graph
    gain: list[float] = field(default_factory=list)  # compiled / eager step speed

    def estimates(self) -> tuple[float, float, str]:
        """(seconds per new graph, gain, "measured" or "prior")."""
        if self.graph_s and self.gain:
            graph_s = sum(self.graph_s) / len(self.graph_s)
            return graph_s, sum(self.gain) / len(self.gain), "measured"
        return PRIOR_GRAPH_S, PRIOR_GAIN, "prior"

    def learn(self, new_graphs: int, compile_s: float, gain: float | None) -> None:
        """Add one compiled trial's figures: its compile seconds over its new graphs and its
        compiled / eager step speed."""
        if new_graphs:
            self.graph_s.append(max(0.0, compile_s) / new_graphs)
        if gain:
            self.gain.append(gain)


LEDGER = CompileLedger()  # this process's; workers keep it between trials


def decide(
    setting: bool | str,
    device: torch.device,
    graphs: int,
    steps: int,
    eager_step_s: float | None,
    ledger: CompileLedger = LEDGER,
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
    per_graph, gain, source = ledger.estimates()
    cost = graphs * per_graph
    saving = steps * eager_step_s * (1 - 1 / gain)
    used = saving > cost
    why = (
        f"auto ({source} {per_graph:.1f} s per block graph, gain x{gain:.2f}): up to {graphs} "
        f"graph(s) cost ~{cost:.0f} s {'<' if used else '>='} ~{saving:.0f} s saved over the "
        "study's training steps"
    )
    return CompileDecision(used, why, graphs, round(cost, 2), round(saving, 2))
