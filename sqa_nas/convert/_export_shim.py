"""A stand-in for the export API another branch adds to `sqa_nas.export` (issue 20): the same
names and signatures (`export_model`, `load_export`, and `weights`' `WEIGHTS_FILE`,
`save_weights`, `load_weights`), implemented minimally so that `convert` and `finetune`
work and are tested before it lands. At the merge this file is deleted and the imports of
it point at `sqa_nas.export` and `sqa_nas.export.weights`; nothing else imports it.

An export folder here holds ``config.yaml`` (`ModelConfig.resolved()` plus ``provenance``),
``model.safetensors`` (the state_dict, a tied LM head stored once), ``model.py`` (the
standalone model, rendered from the config alone) and a short ``README.md``.
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sqa_nas.errors import UserError
from sqa_nas.export.torch_code import (
    BEGIN,
    END,
    allocation_text,
    docstring_literal,
    render_data,
    template_source,
)
from sqa_nas.model import ModelConfig, SQATransformer, build_model, load_config

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
FILES = ("model.py", CONFIG_FILE, "README.md", WEIGHTS_FILE)


def save_weights(state_dict: dict[str, torch.Tensor], folder: str | Path) -> Path:
    """Write `state_dict` to ``folder/model.safetensors``; a tensor that shares its storage
    with an earlier one (the tied LM head) is stored once. Returns the file's path."""
    seen: set[tuple[int, object]] = set()
    tensors = {}
    for name, tensor in state_dict.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor.detach().to("cpu").contiguous()
    path = Path(folder) / WEIGHTS_FILE
    save_file(tensors, str(path))
    return path


def load_weights(model: SQATransformer, folder: str | Path) -> None:
    """Load ``folder/model.safetensors`` into `model`; `UserError` naming a missing, unreadable
    or mismatched file."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{folder}: missing weights ({WEIGHTS_FILE})")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path}: cannot read the weights ({exc})") from None
    tied = {"lm_head.weight"} if model.config.tie_embeddings else set()
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors) - tied)
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise UserError(f"{path}: does not match config.yaml ({what})")
    for name, tensor in tensors.items():
        if tensor.shape != own[name].shape:
            raise UserError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, config.yaml gives "
                f"{tuple(own[name].shape)}"
            )
    model.load_state_dict(tensors, strict=False)


def render_model_py(config: ModelConfig, title: str) -> str:
    """model.py for `config`: the export template with `config`'s data and a short docstring."""
    source = template_source()
    body = source.splitlines(keepends=True)[ast.parse(source).body[0].end_lineno :]
    head, _, rest = "".join(body).partition(BEGIN + "\n")
    _, _, tail = rest.partition(END + "\n")
    text = f"{title or 'A Sparse Query Attention transformer'}.\n\n{allocation_text(config)}\n"
    return docstring_literal(text) + "\n" + head + render_data(config) + tail


def export_model(
    config: ModelConfig,
    out_dir: Path,
    *,
    fmt: str = "torch",
    state_dict: dict[str, torch.Tensor] | None = None,
    provenance: dict[str, Any] | None = None,
    title: str = "",
    force: bool = False,
) -> Path:
    """Write `config` (and its weights, when `state_dict` is given) as an export folder;
    returns `out_dir`. `UserError` for a format other than "torch", for a folder that
    already holds one of the files (unless `force`) or that cannot be written (what this
    call created is removed)."""
    if fmt != "torch":
        raise UserError(f"format {fmt!r}: this build of sqa-nas writes only 'torch' here")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder")
    taken = [name for name in FILES if os.path.lexists(out_dir / name)]
    if taken and not force:
        raise UserError(f"--out {out_dir} already holds {', '.join(taken)}: pass --force")
    data = config.resolved()
    data["provenance"] = provenance or {}
    texts = {
        CONFIG_FILE: yaml.safe_dump(data, sort_keys=False, allow_unicode=False),
        "model.py": render_model_py(config, title),
        "README.md": f"# {title or 'sqa-nas model'}\n\nLayers (H_q/H_kv): "
        f"{allocation_text(config)}.\n\nRebuild with "
        '`sqa_nas.convert.load_export("this folder")`.\n',
    }
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (out_dir / name).write_text(text, encoding="utf-8")
        if state_dict is not None:
            save_weights(state_dict, out_dir)
    except OSError as exc:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise UserError(f"--out {out_dir}: cannot write there ({exc.strerror or exc})") from None
    return out_dir


def load_export(folder: str | Path) -> SQATransformer:
    """The model of an export folder: built from its config.yaml, weights from its
    model.safetensors. `UserError` when either is missing or does not fit."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such export folder")
    if not (folder / CONFIG_FILE).is_file():
        raise UserError(f"{folder}: not an sqa-nas export (no {CONFIG_FILE})")
    model = build_model(load_config(folder / CONFIG_FILE))
    load_weights(model, folder)
    return model
