"""One conversion: a source model and a target config in, the converted model out.

    source = read_source("my-llama/")                      # or any SQATransformer
    target = target_config(source.model.config, "SQA")
    done = convert_model(source.model, target, "fit", batches)
    write_conversion(done, Path("my-sqa"), provenance={...})

Embeddings, norms, MLPs and the LM head (tied or not) are copied unchanged; each attention
layer is rebuilt by `methods` from its `LayerPlan`. With fit, W_O of every changed layer is
then solved from calibration statistics (`calibrate.normal_equations`). The relative error of
every layer's output on the calibration batches is measured last (`calibrate.output_errors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sqa_nas.convert.calibrate import (
    attention,
    head_importance,
    normal_equations,
    output_errors,
)
from sqa_nas.convert.methods import (
    METHODS,
    LayerPlan,
    check_layer,
    layer_weights,
    plan_layer,
    solve_output,
)
from sqa_nas.errors import UserError
from sqa_nas.export import export_model
from sqa_nas.export.torch_code import allocation_text
from sqa_nas.model import ModelConfig, SQATransformer, build_model

DEFAULT_RIDGE = 1e-3


@dataclass
class Conversion:
    """A converted model and how each layer was made."""

    model: SQATransformer
    method: str
    plans: list[LayerPlan]
    errors: list[float] | None  # per layer, relative output error on calibration; None: none
    ridge: float

    def record(self) -> dict[str, Any]:
        """The JSON form kept in the export's provenance: per layer, which source query heads
        make each target query head, which source KV heads each KV head, and the error."""
        layers = []
        for i, plan in enumerate(self.plans):
            layer: dict[str, Any] = {
                "q_from": [list(g) for g in plan.q],
                "kv_from": [list(g) for g in plan.kv],
            }
            if self.errors is not None:
                layer["output_error"] = round(self.errors[i], 6)
            layers.append(layer)
        out: dict[str, Any] = {"method": self.method, "layers": layers}
        if self.method == "fit":
            out["ridge"] = self.ridge
        return out


def check_conversion(source: ModelConfig, target: ModelConfig, method: str) -> None:
    """`UserError` when `method` cannot make `target` from `source` (checked per layer before
    any work)."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    if target.n_layers != source.n_layers:
        raise UserError(f"the target has {target.n_layers} layers, the source {source.n_layers}")
    for i, (src, dst) in enumerate(zip(source.layer_configs, target.layer_configs)):
        check_layer(i, src, dst, method)


@torch.no_grad()
def convert_model(
    source: SQATransformer,
    target: ModelConfig,
    method: str,
    batches: Sequence[torch.Tensor] = (),
    *,
    ridge: float = DEFAULT_RIDGE,
) -> Conversion:
    """`source` converted to `target`'s layers by `method` (select, mean or fit; see
    `sqa_nas.convert.methods`), on the source's device, in float32.

    Arguments:
        batches: calibration inputs (B, N) int64 (`calibrate.calibration_batches`), needed
            by select and fit; with any, every layer's output error is measured.
        ridge: fit's relative ridge term (`methods.solve_output`).
    """
    check_conversion(source.config, target, method)
    if method != "mean" and not batches:
        raise UserError(f"method {method} needs calibration batches")
    importance = head_importance(source, batches) if method != "mean" else None
    srcs, dsts = source.config.layer_configs, target.layer_configs
    plans = [
        plan_layer(s, d, method, None if importance is None else importance[i])
        for i, (s, d) in enumerate(zip(srcs, dsts))
    ]
    device = source.embed.weight.device
    model = build_model(target).to(device)
    state = {k: v for k, v in source.state_dict().items() if not _is_attn(k)}
    for i, plan in enumerate(plans):
        own = attention(source, i).state_dict()  # {q,k,v,o}_proj.{weight,bias}
        for name, tensor in layer_weights(own, srcs[i], plan, method).items():
            state[f"layers.{i}.attn.{name}"] = tensor
    model.load_state_dict(state)
    if method == "fit":
        changed = {i for i, plan in enumerate(plans) if not plan.exact}
        for i, (gram, cross) in normal_equations(source, model, changed, batches).items():
            attn = attention(model, i)
            m = solve_output(gram, cross, ridge, bias=attn.config.bias).to(device)
            n_w = attn.o_proj.weight.shape[1]
            attn.o_proj.weight.copy_(m[:n_w].T)
            if attn.config.bias:
                attn.o_proj.bias.copy_(m[n_w])
    errors = output_errors(source, model, batches) if batches else None
    return Conversion(model, method, plans, errors, ridge)


def _is_attn(name: str) -> bool:
    parts = name.split(".")
    return len(parts) > 3 and parts[2] == "attn"


def write_conversion(
    conversion: Conversion,
    out_dir: Path,
    *,
    provenance: dict[str, Any],
    dtype: torch.dtype = torch.float32,
    force: bool = False,
) -> Path:
    """Write the converted model as an sqa-nas export (weights in `dtype`), with
    `provenance` and the conversion's record under ``provenance["convert"]``."""
    model = conversion.model
    record = {**provenance, **conversion.record()}
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:  # stored once: the same tensor under both names
        state["lm_head.weight"] = state["embed.weight"]
    title = f"{allocation_text(model.config)}: converted by {conversion.method}"
    return export_model(
        model.config,
        out_dir,
        state_dict=state,
        provenance={"convert": record},
        title=title,
        force=force,
    )
