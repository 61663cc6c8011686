"""A study's own records: the one writer and the one reader (`read_study_attrs`).

``optuna studies`` prints a study's user attributes in one row, so they stay small (under
`USER_ATTRS_BOUND` bytes as JSON): the sqa-nas mark, the objectives, how trials are measured
(``method``), the space's hash, the corpus's kind and fingerprint, the noise floor and the
compile choice per device. What grows with the space or with the runs is an Optuna artifact,
one JSON file each, in a `FileSystemArtifactStore` beside the storage (`artifact_folder`),
named ``KIND-STAMP.json`` (STAMP: nanoseconds since the epoch when it was written, which
orders the records of one kind):

- ``study``: ``space`` (the resolved search space), ``units`` {unit: [layers]} and
  ``corpus`` (its summary: sizes, split, binary files skipped), written once at creation;
- ``run``: one search run's figures (`figures.RunStats`), one artifact per run;
- ``confirm``: one `sqa-nas confirm` (`confirm.Confirmation`), the last one counts.

Studies written before (format 1) kept these as user attributes (``space``, ``units``,
``corpus``, ``executor_stats``, ``confirm``); the reader takes either, so every reader (the
dashboard, export, confirm, the noise floor, a resumed search) reads both. A storage with no
place for files (an in-memory database) keeps them as user attributes, as format 1 did.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from sqa_nas.errors import UserError
from sqa_nas.search.storage import storage_file

RECORDS = ("study", "run", "confirm")  # the artifacts' kinds
USER_ATTRS_BOUND = 640  # bytes of a study's user attrs as JSON (tests/search/test_study_attrs)
KEEP_STATS = 20  # the runs a reader is given, the last ones
_SERVERS = ("postgresql", "postgres:", "mysql", "oracle", "mssql")


def artifact_folder(url: str | None, study_name: str) -> Path | None:
    """Where the records of study `study_name` in storage `url` are kept.

    Beside a SQLite database or a journal file: ``FILE.artifacts`` (copy it along with the
    file). For a database server: ``runs/<study>/artifacts`` under the working directory of
    the command that writes them (the search's and confirm's machine; on a cluster, run the
    readers there or share the folder). None for a storage with no file (in memory): its
    records stay user attributes."""
    if url is None:
        return None
    path = storage_file(url)
    if path is not None:
        return Path(f"{path}.artifacts")
    if url.startswith(_SERVERS):
        return Path("runs") / study_name / "artifacts"
    return None


def write_record(
    study: optuna.Study, url: str | None, kind: str, value: Mapping[str, Any]
) -> None:
    """Store record `kind` (one of `RECORDS`) of `study`: a JSON artifact under
    `artifact_folder`, or, where there is none, the user attributes format 1 used. A folder
    that cannot be made or written is a `UserError` naming it."""
    assert kind in RECORDS, kind
    folder = artifact_folder(url, study.study_name)
    if folder is None:
        _write_user_attrs(study, kind, dict(value))
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{kind}-{time.time_ns():020d}.json"
            path.write_text(json.dumps(value))
            with warnings.catch_warnings():  # artifacts are "experimental" in Optuna 4-5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                upload_artifact(
                    artifact_store=FileSystemArtifactStore(folder),
                    file_path=str(path),
                    study_or_trial=study,
                    mimetype="application/json",
                )
    except OSError as exc:
        raise UserError(
            f"cannot store the study's {kind} record in {folder}: {exc.strerror or exc}"
        ) from None


def _write_user_attrs(study: optuna.Study, kind: str, value: dict[str, Any]) -> None:
    if kind == "study":
        for key in ("space", "units", "corpus"):
            study.set_user_attr(key, value[key])
    elif kind == "run":
        runs = study.user_attrs.get("executor_stats")
        runs = list(runs) if isinstance(runs, list) else []
        study.set_user_attr("executor_stats", (runs + [value])[-KEEP_STATS:])
    else:
        study.set_user_attr("confirm", value)


@dataclass(frozen=True)
class StudyAttrs:
    """Everything a study records about itself, from its user attributes and its artifacts
    (`read_study_attrs`). A malformed value reads as absent: a reader never stops on one.

    ``missing`` counts records the storage lists whose files are not in ``folder`` (a
    database copied without its ``.artifacts`` folder, a server study read on another
    machine)."""

    objectives: list[str] = field(default_factory=list)
    method: int = 1  # studies before paired timing stored none
    space_hash: str | None = None
    corpus: dict[str, Any] = field(default_factory=dict)
    noise: dict[str, Any] | None = None
    compile_choice: dict[str, bool] = field(default_factory=dict)
    mha_reference: dict[str, float] = field(default_factory=dict)
    space: dict[str, Any] | None = None
    units: dict[str, list[int]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)  # oldest first, the last 20
    confirm: dict[str, Any] | None = None
    folder: Path | None = None
    missing: int = 0

    def as_attrs(self) -> dict[str, Any]:
        """The one mapping format 1 kept as user attributes (``noise``, ``confirm``,
        ``space``, ``executor_stats``, ...): what `Noise.read`, `Confirmation.read` and the
        dashboard take."""
        attrs: dict[str, Any] = {
            "objectives": self.objectives,
            "method": self.method,
            "space_hash": self.space_hash,
            "corpus": self.corpus,
            "noise": self.noise,
            "compile_choice": self.compile_choice,
            "mha_reference": self.mha_reference,
            "space": self.space,
            "units": self.units,
            "executor_stats": self.runs,
            "confirm": self.confirm,
        }
        return {k: v for k, v in attrs.items() if v is not None}


def read_study_attrs(study: optuna.Study, url: str | None) -> StudyAttrs:
    """`study`'s records (`StudyAttrs`), `url` being the storage it was opened from (it says
    where the artifacts are: `artifact_folder`). Format 1 studies read from their user
    attributes alone; a record stored both ways reads from the artifact."""
    attrs = dict(study.user_attrs)
    folder = artifact_folder(url, study.study_name)
    records, missing = _artifacts(study, folder)
    created = records["study"][-1] if records["study"] else {}
    runs = records["run"] or _dicts(attrs.get("executor_stats"))
    confirms = records["confirm"] or _dicts([attrs.get("confirm")])  # oldest first
    corpus = {**_dict(attrs.get("corpus")), **_dict(created.get("corpus"))}
    method = attrs.get("method", 1)
    return StudyAttrs(
        objectives=[str(o) for o in attrs.get("objectives") or [] if isinstance(o, str)],
        method=method if isinstance(method, int) else 1,
        space_hash=attrs.get("space_hash") if isinstance(attrs.get("space_hash"), str) else None,
        corpus=corpus,
        noise=_dict(attrs.get("noise")) or None,
        compile_choice={
            str(k): v for k, v in _dict(attrs.get("compile_choice")).items() if type(v) is bool
        },
        mha_reference={
            str(k): float(v)
            for k, v in _dict(attrs.get("mha_reference")).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        },
        space=_dict(created.get("space", attrs.get("space"))) or None,
        units=_dict(created.get("units", attrs.get("units"))),
        runs=runs[-KEEP_STATS:],
        confirm=confirms[-1] if confirms else None,
        folder=folder,
        missing=missing,
    )


def _artifacts(study: optuna.Study, folder: Path | None) -> tuple[dict[str, list], int]:
    """The JSON records of `study` in `folder` by kind, oldest first, and how many listed
    ones are not there (or do not read)."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {kind: [] for kind in RECORDS}
    missing, first = 0, itemgetter(0)
    if folder is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            metas = get_all_artifact_meta(study)
        store = FileSystemArtifactStore(folder)
        for meta in metas:
            kind, _, stamp = meta.filename.removesuffix(".json").partition("-")
            if kind not in found:
                continue  # another tool's artifact
            try:
                with store.open_reader(meta.artifact_id) as f:
                    value = json.load(f)
            except (ArtifactNotFound, OSError, ValueError):
                missing += 1
                continue
            if isinstance(value, dict):
                found[kind].append((stamp, value))
    ordered = {kind: [v for _, v in sorted(pairs, key=first)] for kind, pairs in found.items()}
    return ordered, missing


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _dicts(values: Any) -> list[dict[str, Any]]:
    return [dict(v) for v in values if isinstance(v, Mapping)] if isinstance(values, list) else []
