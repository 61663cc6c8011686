"""What `sqa-nas convert SRC` reads, as an `SQATransformer` with its weights.

SRC is one of:

- an sqa-nas export folder (``config.yaml`` + ``model.safetensors``, `load_export`);
- a Hugging Face folder of the Llama family (``config.json`` + ``*.safetensors``,
  `sqa_nas.convert.llama`);
- an sqa-nas checkpoint file (`sqa_nas.checkpoint`: a search's multi-fidelity segment, or
  any ``checkpoint.save`` whose ``meta`` holds the ``model`` config, as the search writes it).

A folder holding both config.yaml and config.json (an export in the Hugging Face format) is
read as the export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import safe_open

from sqa_nas import checkpoint
from sqa_nas.convert.llama import read_llama_folder
from sqa_nas.errors import UserError, first_error
from sqa_nas.export import load_export
from sqa_nas.export.weights import WEIGHTS_FILE
from sqa_nas.model import ModelConfig, SQATransformer, build_model

_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


@dataclass
class Source:
    """A model to convert, and where it came from (for the export's provenance)."""

    model: SQATransformer
    kind: str  # "export", "hf" or "checkpoint"
    architecture: str  # "SQATransformer", "LlamaForCausalLM", ...
    path: str
    dtype: torch.dtype  # of the stored weights: the converted ones are written in it

    def record(self) -> dict[str, Any]:
        """The JSON form kept in the converted model's provenance."""
        return {
            "kind": self.kind,
            "architecture": self.architecture,
            "path": self.path,
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def read_source(path: str | Path) -> Source:
    """The model at `path` (see the module docstring), in float32 on the CPU; `UserError`
    naming what is missing or wrong."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "config.yaml").is_file():
            model = load_export(path)
            return Source(model, "export", "SQATransformer", str(path), _stored_dtype(path))
        if (path / "config.json").is_file():
            config, state, arch = read_llama_folder(path)
            dtype = state["embed.weight"].dtype
            return Source(_built(config, state), "hf", arch, str(path), dtype)
        raise UserError(
            f"{path}: neither an sqa-nas export (no config.yaml) nor a Hugging Face "
            "folder (no config.json)"
        )
    try:
        state, _, meta = checkpoint.load(path, "cpu")
    except checkpoint.CheckpointError as exc:
        raise UserError(str(exc)) from None
    raw = meta.get("model") if isinstance(meta, dict) else None
    if not isinstance(raw, dict):
        raise UserError(
            f"checkpoint {path}: its meta holds no 'model' config, so its layers are unknown "
            "(save it with meta={'model': config.resolved()})"
        )
    try:
        config = ModelConfig(**raw)
    except (ValidationError, TypeError) as exc:
        why = first_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise UserError(f"checkpoint {path}: model: {why}") from None
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    return Source(_built(config, state), "checkpoint", "SQATransformer", str(path), dtype)


def _stored_dtype(folder: Path) -> torch.dtype:
    """The dtype of an export's stored weights (the model is loaded in float32)."""
    with safe_open(str(folder / WEIGHTS_FILE), "pt") as f:
        stored = {f.get_slice(name).get_dtype() for name in f.keys()}
    return (
        _SAFETENSORS_DTYPES.get(stored.pop(), torch.float32) if len(stored) == 1 else torch.float32
    )


def _built(config: ModelConfig, state: dict[str, torch.Tensor]) -> SQATransformer:
    """The model of `config` holding `state` (cast to float32); `UserError` on a mismatch."""
    model = build_model(config)
    own = model.state_dict()
    tied = {"lm_head.weight"} if config.tie_embeddings else set()
    missing = sorted(set(own) - set(state) - tied)
    if missing:
        raise UserError(f"missing weights {missing[0]} for the model's config")
    for name, tensor in state.items():
        if name not in own or tensor.shape != own[name].shape:
            shape = tuple(own[name].shape) if name in own else "no such weight"
            raise UserError(
                f"weight {name} {tuple(tensor.shape)} does not fit the model's config ({shape})"
            )
    model.load_state_dict(state, strict=False)
    return model
