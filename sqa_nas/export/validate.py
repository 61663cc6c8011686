"""What export may take from a study, checked before anything is written.

A study is data from elsewhere (a shared database, a colleague's file), and export turns it
into Python source, so every value is checked against what the study contract allows
(`sqa_nas.search.records`) and refused with the field's path otherwise:

- the trial's ``model`` attribute holds only numbers, booleans, None, lists and mappings with
  plain lowercase keys; its only strings are enum names (backends, variants); numbers are
  finite and within int32; and it must parse as a `ModelConfig`. The generated model.py is
  rendered from that parsed config alone.
- the text that goes into config.yaml and README.md (study name, params, device, versions,
  corpus) is printable ASCII from a small character set: no quotes, backslashes, newlines or
  unicode look-alikes.
- the trial number is an int (a crafted storage can hold text there); objective values,
  analytics and metrics are finite numbers under known names.

The files are then written from these values through one quoting function per format
(`torch_code.docstring_literal` for model.py's docstring, `literal` for its data,
`readme.comment` for config.yaml's header, yaml.safe_dump and json.dumps for the rest), so
a value that got past a check still could not become code.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from sqa_nas.errors import UserError, first_error
from sqa_nas.model import ModelConfig
from sqa_nas.registry import list_variants
from sqa_nas.search.records import OBJECTIVES, LayerRecord, TrialRecord

# Backends a trial may name -> the backend model.py runs for it. model.py has no xFormers
# path; "auto" there picks flash-attn / FlexAttention / SDPA, which compute the same thing.
STANDALONE_BACKEND = {
    "auto": "auto",
    "sdpa": "sdpa",
    "flex": "flex",
    "flash_attn": "flash_attn",
    "xformers": "auto",
}

# The trial's user attrs export writes out (a trial's `layers` only name its backends).
EXPORTED = {"model", "analytics", "metrics", "device", "versions", "corpus", "seed_variant"}
MAX_INT = 2**31 - 1
MAX_DEPTH = 6
MAX_ITEMS = 4096

# Matched with fullmatch: `$` would let a trailing newline through.
_KEY = re.compile(r"[a-z_][a-z0-9_]{0,63}")  # keys of the model config
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")  # study names, variant names
_PARAM_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")  # "layers0-3.heads"
# Free text: GPU and CPU names, versions, hosts, fingerprints, "8/2", "window:16", "flex:16+4".
_TEXT = re.compile(r"[A-Za-z0-9 _.,:;+/@=()\-]{0,200}")


Metric = float | bool | list[float]
MAX_METRIC_LIST = 64  # a trial's seeds (`val_loss_seeds`) or an interval's two ends


@dataclass(frozen=True)
class ValidTrial:
    """A trial that passed every check: everything export writes comes from here."""

    study: str
    number: int
    config: ModelConfig
    objectives: dict[str, float]  # name -> value, in the study's order
    analytics: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Metric] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    corpus: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    trial_backends: tuple[str | None, ...] = ()  # the backend each layer ran on in the trial
    seed_variant: str | None = None

    @property
    def standalone_backends(self) -> tuple[str, ...]:
        """Each layer's backend in the standalone model.py (xformers becomes "auto" there)."""
        return tuple(STANDALONE_BACKEND[c.backend] for c in self.config.layer_configs)

    def provenance(self) -> dict[str, Any]:
        """Where the config came from: config.yaml's `provenance`."""
        return {
            "study": self.study,
            "trial": self.number,
            "objectives": self.objectives,
            "seed_variant": self.seed_variant,
            "params": self.params,
            "device": self.device,
            "versions": self.versions,
            "corpus": self.corpus,
            "analytics": self.analytics,
            "metrics": self.metrics,
        }


def check_exportable(record: TrialRecord) -> None:
    """Only finished, successful trials are exported."""
    if record.state == "COMPLETE":
        return
    if record.state in ("RUNNING", "WAITING"):
        raise UserError(
            f"trial {record.number} is {record.state}: only COMPLETE trials can "
            "be exported; wait for it to finish"
        )
    reason = record.fail_reason
    why = f" ({reason})" if reason is not None and _TEXT.fullmatch(reason) else ""
    raise UserError(
        f"trial {record.number} is {record.state}{why}: only COMPLETE trials can be exported"
    )


def validate_trial(study_name: str, record: TrialRecord) -> ValidTrial:
    """`ValidTrial` for a COMPLETE trial, or `UserError` naming the first bad field."""
    if type(record.number) is not int or not 0 <= record.number <= MAX_INT:
        raise UserError(f"trial number {_show(record.number)} is not a whole number")
    check_exportable(record)
    where = f"trial {record.number}"
    if not isinstance(study_name, str) or not _NAME.fullmatch(study_name):
        raise UserError(
            f"study name {_show(study_name)} cannot be exported: use letters, "
            "digits, '_', '.' and '-'"
        )
    for key in sorted(EXPORTED & set(record.problems)):  # a stored value of a wrong type
        raise UserError(f"{where}: {ascii(record.problems[key])[1:-1]}")
    config = validated_config(record.model, where)
    return ValidTrial(
        study=study_name,
        number=record.number,
        config=config,
        objectives=_objectives(record.values, where),
        analytics=_numbers(record.analytics.stored(), f"{where}: analytics"),
        metrics=_metrics(record.metrics.stored(), f"{where}: metrics"),
        device=_text_mapping(record.device.stored(), f"{where}: device"),
        versions=_text_mapping(record.typed.versions, f"{where}: versions"),
        corpus=_text_mapping(record.typed.corpus.stored(), f"{where}: corpus"),
        params=_text_mapping(record.params, f"{where}: params"),
        trial_backends=_trial_backends(record.layers, config, where),
        seed_variant=_seed_variant(record.seed_variant, where),
    )


def validated_config(model: Any, where: str = "trial") -> ModelConfig:
    """The trial's ``model`` attribute as a `ModelConfig`, after the checks above."""
    if model is None:
        raise UserError(
            f"{where} has no 'model' attribute: it was not written by an sqa-nas "
            "search, so there is nothing to export"
        )
    _check_model_value(model, "model", 0)
    if not isinstance(model, dict):
        raise UserError(f"{where}: model must be a mapping of model settings")
    try:
        config = ModelConfig(**model)
    except ValidationError as exc:
        raise UserError(f"{where}: model.{first_error(exc)}") from None
    for i, c in enumerate(config.layer_configs):
        if c.backend not in STANDALONE_BACKEND:
            raise UserError(
                f"{where}: model.layers[{i}].backend {c.backend!r} has no "
                f"standalone equivalent; export knows {', '.join(STANDALONE_BACKEND)}"
            )
    return config


def _variant_names() -> set[str]:
    return {v.name for v in list_variants() if _NAME.fullmatch(v.name)}


def _check_model_value(value: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise UserError(f"{path}: nested too deeply for a model config")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > MAX_INT:
            raise UserError(f"{path}: {value} is out of range (at most {MAX_INT})")
        return
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > 1e30:
            raise UserError(f"{path}: {value!r} is not a finite number of sensible size")
        return
    if isinstance(value, str):
        key = path.rsplit(".", 1)[-1]
        allowed = (
            set(STANDALONE_BACKEND)
            if key == "backend"
            else _variant_names()
            if key == "variant"
            else set()
        )
        if value not in allowed:
            what = f"one of {', '.join(sorted(allowed))}" if allowed else "a number or a flag"
            raise UserError(f"{path}: {_show(value)} is not allowed here; expected {what}")
        return
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise UserError(f"{path}: {len(value)} entries is too many")
        for i, item in enumerate(value):
            _check_model_value(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                raise UserError(f"{path}: key {_show(key)} is not a model setting")
            _check_model_value(item, f"{path}.{key}", depth + 1)
        return
    raise UserError(f"{path}: a {type(value).__name__} is not allowed in a model config")


def _objectives(values: dict | None, where: str) -> dict[str, float]:
    if not values:
        raise UserError(f"{where} has no objective values")
    out = {}
    for name, value in values.items():
        if name not in OBJECTIVES:
            raise UserError(
                f"{where}: objective {_show(name)} is not one sqa-nas knows "
                f"({', '.join(OBJECTIVES)})"
            )
        out[name] = _number(value, f"{where}: objective {name}")
    return out


def _number(value: Any, path: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{path}: {_show(value)} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{path}: {value!r} is not finite")
    if abs(value) > 1e30:
        raise UserError(f"{path}: {value!r} is out of range")
    return value


def _numbers(values: Any, path: str, check: bool = True) -> dict[str, Any]:
    """A mapping of plain names to numbers (`_number`; not checked when not `check`)."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of numbers")
    out = {}
    for key, value in values.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise UserError(f"{path}: key {_show(key)} is not a plain name")
        if value is not None:
            out[key] = _number(value, f"{path}.{key}") if check else value
    return out


def _metrics(values: Any, path: str) -> dict[str, Metric]:
    """A trial's metrics: numbers, flags (``noisy_throughput``) and short lists of numbers
    (``val_loss_seeds``, ``speedup_ci95``), each checked as `_number` checks one."""
    out: dict[str, Metric] = {}
    for key, value in _numbers(values, path, check=False).items():
        where = f"{path}.{key}"
        if isinstance(value, bool):
            out[key] = value
        elif isinstance(value, list) and len(value) <= MAX_METRIC_LIST:
            out[key] = [_number(x, f"{where}[{i}]") for i, x in enumerate(value)]
        else:
            out[key] = _number(value, where)
    return out


def _text_mapping(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a mapping, got a {type(value).__name__}")
    return _text_tree(value, path)


def _text_tree(value: Any, path: str, depth: int = 0) -> Any:
    """Plain data whose strings are all short printable ASCII (`_TEXT`)."""
    if depth > MAX_DEPTH:
        raise UserError(f"{path}: nested too deeply")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _number(value, path)
    if isinstance(value, str):
        if not _TEXT.fullmatch(value):
            raise UserError(
                f"{path}: {_show(value)} has characters export does not write "
                "(allowed: letters, digits, spaces and _ . , : ; + / @ = ( ) -)"
            )
        return value
    if isinstance(value, list | tuple) and len(value) <= MAX_ITEMS:
        return [_text_tree(x, f"{path}[{i}]", depth + 1) for i, x in enumerate(value)]
    if isinstance(value, dict) and len(value) <= MAX_ITEMS:
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or not _PARAM_KEY.fullmatch(key):
                raise UserError(f"{path}: key {_show(key)} is not a plain name")
            out[key] = _text_tree(
                item,
                f"{path}[{key!r}]" if "." in key or "-" in key else f"{path}.{key}",
                depth + 1,
            )
        return out
    raise UserError(f"{path}: a {type(value).__name__} cannot be exported")


def _trial_backends(
    layers: list[LayerRecord], config: ModelConfig, where: str
) -> tuple[str | None, ...]:
    if len(layers) != config.n_layers:
        return (None,) * config.n_layers
    out = []
    for i, layer in enumerate(layers):
        name = layer.backend
        if name is not None and not _KEY.fullmatch(name):
            raise UserError(f"{where}: layers[{i}].backend {_show(name)} is not a backend name")
        out.append(name)
    return tuple(out)


def _seed_variant(name: Any, where: str) -> str | None:
    if name is None or name in _variant_names():
        return name
    raise UserError(f"{where}: seed_variant {_show(name)} is not a known variant")


def _show(value: Any) -> str:
    """A value for an error message: short, and with odd characters escaped."""
    text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."
