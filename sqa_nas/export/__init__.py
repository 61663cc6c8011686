"""Export a trial as model code: a standalone PyTorch `model.py` (or a Hugging Face folder),
the `config.yaml` sqa-nas builds the same model from, and a README about the trial.

    from sqa_nas.export import export_trial, find_trial
    study = load_study("demo")
    export_trial(study, find_trial(study, pick="knee"), Path("winner"))

Everything written comes from values `validate.validate_trial` checked first; a trial that
fails a check is refused with a `UserError` and nothing is written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import optuna

from sqa_nas.errors import UserError
from sqa_nas.export import hf
from sqa_nas.export.readme import config_yaml, readme
from sqa_nas.export.torch_code import render_model_py
from sqa_nas.export.validate import ValidTrial, validate_trial
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
    force_hf: bool = False,
    force: bool = False,
) -> Path:
    """Write `record` as model code into `out_dir` (created if needed); returns `out_dir`.

    fmt="torch": model.py, config.yaml, README.md. fmt="hf": those plus config.json,
    configuration_sqa.py and modeling_sqa.py; refused when transformers is not installed
    (the folder could not be loaded here), unless `force_hf`. A folder that already holds
    any of these files is refused unless `force` (`write_files`).
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    trial = validate_trial(study.study_name, record)
    files = {"model.py": render_model_py(trial), "config.yaml": config_yaml(trial)}
    if fmt == "hf":
        missing = hf.transformers_missing()
        if missing and not force_hf:
            raise UserError(
                f"skipped the Hugging Face export: {missing}; nothing was written. "
                "Pass --force-hf to write the folder anyway"
            )
        files |= hf.hf_files(trial)
    files["README.md"] = readme(trial, [*files, "README.md"])
    write_files(Path(out_dir), files, force=force)
    return Path(out_dir)


def write_files(out_dir: Path, files: dict[str, str], *, force: bool = False) -> None:
    """Write `files` (name -> text) into `out_dir`, created if needed. `UserError`, with
    nothing written, when the folder already holds one of them and not `force`; `UserError`
    when the folder cannot be written (read-only, under a file), removing what this call
    created. Each file is written beside its name and renamed onto it, so a failure never
    leaves half a file, and a symlink in its place is replaced, never followed."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder")
    taken = [name for name in files if os.path.lexists(out_dir / name)]
    if taken and not force:
        raise UserError(
            f"--out {out_dir} already holds {', '.join(taken)}: pass --force to replace "
            f"{'it' if len(taken) == 1 else 'them'}"
        )
    created = out_dir  # the topmost folder this call creates, removed again on failure
    while not created.parent.exists() and created.parent != created:
        created = created.parent
    made = not created.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            part = out_dir / f".{name}.{os.getpid()}.part"
            try:
                part.write_text(text, encoding="utf-8")
                os.replace(part, out_dir / name)
            finally:
                part.unlink(missing_ok=True)
    except OSError as exc:
        if made:
            shutil.rmtree(created, ignore_errors=True)
        raise UserError(f"--out {out_dir}: cannot write there ({exc.strerror or exc})") from None


__all__ = ["FORMATS", "ValidTrial", "export_trial", "find_trial", "validate_trial"]
