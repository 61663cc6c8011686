"""Export a model as code and weights: a standalone PyTorch `model.py` (or a Hugging Face
folder), the `config.yaml` sqa-nas builds the same model from, its weights
(`model.safetensors`) and a README about it.

    from sqa_nas.export import export_model, export_trial, find_trial, load_export
    study = load_study("demo")
    export_trial(study, find_trial(study, pick="knee"), Path("winner"))  # a searched trial
    export_model(config, Path("mine"), state_dict=weights, title="My model")  # any config
    model = load_export("winner")  # the sqa-nas model, weights loaded

Both write through one writer (`_write`). Everything written comes from values checked first
(`validate.validate_trial`, `validate.validated_config`, `weights.check_state_dict`); what
fails a check is refused with a `UserError` and nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import torch

from sqa_nas.checkpoint import CheckpointError
from sqa_nas.checkpoint import load as load_checkpoint
from sqa_nas.errors import UserError
from sqa_nas.export import hf
from sqa_nas.export.files import write_files
from sqa_nas.export.info import INIT_SEED, UNTRAINED, ExportInfo, model_info, trial_info
from sqa_nas.export.readme import config_yaml, readme
from sqa_nas.export.torch_code import render_model_py
from sqa_nas.export.validate import ValidTrial, validate_trial, validated_config
from sqa_nas.export.weights import (
    WEIGHTS_FILE,
    check_state_dict,
    load_weights,
    save_weights,
    weights_bytes,
)
from sqa_nas.model import ModelConfig, SQATransformer, build_model
from sqa_nas.printable import printable
from sqa_nas.search.records import TrialRecord, objective_names, of_gpu_type, trial_records

FORMATS = ("torch", "hf")


def find_trial(
    study: optuna.Study,
    number: int | None = None,
    pick: str | None = None,
    gpu_type: str | None = None,
) -> TrialRecord:
    """The trial with `number`, or the one a picker names (`sqa_nas.search.pareto.pick`) among the
    trials measured on `gpu_type`, required when the study holds several."""
    records = trial_records(study)
    if number is not None:
        for record in records:
            if record.number == number:
                return record
        known = f"0..{max(r.number for r in records)}" if records else "none"
        raise UserError(f"study {study.study_name!r} has no trial {number} (trials: {known})")
    if pick is None:
        raise UserError("name a trial (--trial N) or a picker (--pick knee | best:OBJECTIVE)")
    from sqa_nas.search.pareto import pick as pick_trial

    records, types = of_gpu_type(records, gpu_type)
    if gpu_type is None and len(types) > 1:
        raise UserError(
            f"--pick: this study's trials ran on several GPU types "
            f"({', '.join(map(repr, types))}) whose throughputs do not compare; "
            "choose one with --gpu-type"
        )
    directions = [d.name.lower() for d in study.directions]
    return pick_trial(records, objective_names(study), pick, directions)


def export_trial(
    study: optuna.Study,
    record: TrialRecord,
    out_dir: Path,
    fmt: str = "torch",
    *,
    weights: Path | None = None,
    force_hf: bool = False,
    force: bool = False,
) -> Path:
    """Write `record` as model code and weights into `out_dir` (created if needed); returns
    `out_dir`.

    fmt="torch": model.py, config.yaml, model.safetensors, README.md. fmt="hf": those plus
    config.json, configuration_sqa.py and modeling_sqa.py; refused when transformers is not
    installed (the folder could not be loaded here), unless `force_hf`. `weights`: an sqa-nas
    checkpoint file (`sqa_nas.checkpoint`) whose weights are written, refused unless its keys
    and shapes are the trial's model's; without it the weights are the initialisation. A
    folder that already holds any of these files is refused unless `force` (`write_files`).
    """
    _check_format(fmt)
    trial = validate_trial(study.study_name, record)
    state_dict, how = (None, UNTRAINED) if weights is None else read_checkpoint(Path(weights))
    source = f"--weights {weights}"
    return _write(trial_info(trial, how), Path(out_dir), fmt, state_dict, source, force, force_hf)


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
    """Write `config` as model code and weights into `out_dir` (created if needed), as
    `export_trial` writes a trial; returns `out_dir`.

    `state_dict`: the weights, keyed as `sqa_nas.model.SQATransformer`'s (a tied LM head may
    be left out); `UserError` naming the first key that is missing, unexpected or of another
    shape. None: the model's initialisation (`sqa_nas.model.init_weights`, seed `INIT_SEED`),
    which config.yaml's provenance and the README call "untrained: initialised weights".
    `provenance`: plain data written under config.yaml's `provenance` (a ``weights`` line of
    your own replaces the default one). `title`: the README's heading. fmt="hf" is refused
    when transformers is not installed.
    """
    _check_format(fmt)
    config = validated_config(config.resolved(), "export_model config")
    info = model_info(config, title, provenance, trained=state_dict is not None)
    return _write(info, Path(out_dir), fmt, state_dict, "state_dict", force, force_hf=False)


def load_export(folder: str | Path) -> SQATransformer:
    """The sqa-nas model of an export folder: built from its config.yaml
    (`sqa_nas.model.build_model`), its model.safetensors loaded (`weights.load_weights`).
    `UserError` for a folder that is not an export or whose weights do not fit."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    if not (folder / "config.yaml").is_file():
        raise UserError(f"{folder} is not an sqa-nas export: it has no config.yaml")
    with torch.random.fork_rng(devices=[]):  # the caller's random numbers stay as they were
        model = build_model(folder / "config.yaml")
    load_weights(model, folder)
    return model


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of an sqa-nas checkpoint file, and the provenance line that says so."""
    if path.exists() and not path.is_file():  # a folder or a pipe: never opened
        raise UserError(f"--weights {path}: not a file (an sqa-nas checkpoint file is)")
    try:
        state_dict, state, _ = load_checkpoint(path, "cpu")
    except CheckpointError as exc:
        raise UserError(f"--weights: {exc}") from None
    if not isinstance(state_dict, dict):
        raise UserError(f"--weights {path}: the checkpoint's model is not a state_dict")
    how = f"trained: checkpoint {path.name} (step {state.step}, {state.tokens:,} tokens)"
    return state_dict, printable(how)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")


def _write(
    info: ExportInfo,
    out_dir: Path,
    fmt: str,
    state_dict: dict[str, torch.Tensor] | None,
    source: str,
    force: bool,
    force_hf: bool,
) -> Path:
    """The one writer of an export: `state_dict` (from `source`, for messages) checked and
    serialised, or the initialisation, then every file written (`write_files`), or none."""
    if fmt == "hf":
        missing = hf.transformers_missing()
        if missing and not force_hf:
            raise UserError(
                f"skipped the Hugging Face export: {missing}; nothing was written. "
                "Pass --force-hf to write the folder anyway"
            )
    with torch.random.fork_rng(devices=[]):  # the caller's random numbers stay as they were
        model = build_model(info.config, seed=INIT_SEED)
    if state_dict is not None:
        check_state_dict(model, state_dict, source)
        dtypes = {t.dtype for t in state_dict.values() if t.is_floating_point()}
        if len(dtypes) == 1:  # weights are written in the dtype they came in (bf16 stays bf16)
            model.to(dtypes.pop())
        model.load_state_dict(state_dict, strict=False)  # checked; a tied name loads once
    files: dict[str, str | bytes] = {
        "model.py": render_model_py(info),
        "config.yaml": config_yaml(info),
    }
    if fmt == "hf":
        files |= hf.hf_files(info)
    files[WEIGHTS_FILE] = weights_bytes(model.state_dict())
    files["README.md"] = readme(info, [*files, "README.md"])
    write_files(out_dir, files, force=force)
    return out_dir


__all__ = [
    "FORMATS",
    "WEIGHTS_FILE",
    "ValidTrial",
    "export_model",
    "export_trial",
    "find_trial",
    "load_export",
    "load_weights",
    "save_weights",
    "validate_trial",
]
