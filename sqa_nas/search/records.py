"""What a study stores, in one place: the contract between the search (which writes), and the
dashboard and export (which read). Plain Optuna storage, so `optuna-dashboard` and
`optuna trials` open it too.

Study
  - metric names (`study.set_metric_names`) = the objective names, in order.
  - user attrs: ``sqa_nas`` {"format", "version"}, ``space`` (the resolved search space),
    ``space_hash``, ``objectives`` (names), ``corpus`` {"kind", "fingerprint", ...},
    ``mha_reference`` {device name: MHA tokens/s}, ``units`` {unit: [layer indices]},
    ``executor_stats`` [one entry per run: GPU busy fractions and the like].
Trial
  - params: per unit (``layer3``, ``layers0-3`` or ``all``): ``<unit>.heads`` = "H_q/H_kv",
    ``<unit>.mask`` = "dense" | "window:W" | "flex:W+G" | "block_sparse", and
    ``<unit>.backend`` when several backends are searched.
  - user attrs (`TRIAL_ATTRS`): the resolved model config, per-layer allocation, analytics,
    metrics, training curve, device, versions, corpus fingerprint, timings, failure reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna

from sqa_nas.errors import UserError

FORMAT = 1

# objective name -> Optuna direction
OBJECTIVES: dict[str, str] = {
    "val_loss": "minimize",
    "throughput_tokens_per_s": "maximize",
    "speedup_vs_mha": "maximize",
    "kv_cache_bytes": "minimize",
    "params": "minimize",
    "attention_flops": "minimize",
}

TRIAL_ATTRS = (
    "model",         # ModelConfig.resolved(): rebuilds exactly this model (export reads it)
    "layers",        # [{n_q_heads, n_kv_heads, pattern, window, global_tokens, backend,
                     #   backend_reason}] per layer
    "allocation",    # compact per-layer notation, e.g. "8/4 x2, 4/4 w64 x2"
    "seed_variant",  # "MHA", "xSQA", ... for baseline trials, else None
    "analytics",     # {params, flops_per_token, train_flops_per_token,
                     #  attention_flops_per_token, kv_cache_bytes_per_token,
                     #  analytic_speedup_vs_mha}
    "metrics",       # {val_loss, perplexity, accuracy, throughput_tokens_per_s,
                     #  speedup_vs_mha, train_tokens, train_steps, ...}
    "curve",         # [[step, tokens, train_loss], ...] (subsampled)
    "device",        # {name, type, host, node, gpu; on Ray also ray_node_id, node_ip,
                     #  worker_pid}
    "versions",      # torch, CUDA, cuDNN, python, sqa_nas
    "corpus",        # {kind, fingerprint}
    "timings",       # {build_s, throughput_s, train_s, eval_s, total_s}
    "fail_reason",   # why a trial is FAIL or PRUNED
    "infeasible",    # [constraint violations] for trials refused before training
    "driver",        # {host, pid, proc_start, id} of the driver that ran it
    "worker_deaths",  # how many times its worker or node died under it (Ray retries)
    "retry_of",      # the trial number this one re-runs (reaped or interrupted)
    "interrupted",   # True: stopped by Ctrl-C, re-enqueued
    "reaped",        # True: left RUNNING by a driver that is gone, re-enqueued (if drawn)
)


@dataclass
class TrialRecord:
    """One trial as the dashboard and export see it."""

    number: int
    state: str  # COMPLETE, FAIL, PRUNED, RUNNING, WAITING
    values: dict[str, float] | None
    params: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)
    datetime_start: datetime | None = None
    datetime_complete: datetime | None = None

    @property
    def feasible(self) -> bool:
        return not self.attrs.get("infeasible")

    @property
    def seed_variant(self) -> str | None:
        return self.attrs.get("seed_variant")

    @property
    def allocation(self) -> str:
        return self.attrs.get("allocation", "")

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.attrs.get("layers", [])

    @property
    def model(self) -> dict[str, Any] | None:
        return self.attrs.get("model")

    @property
    def gpu_type(self) -> str | None:
        return (self.attrs.get("device") or {}).get("name")

    @property
    def duration_s(self) -> float | None:
        if self.datetime_start and self.datetime_complete:
            return (self.datetime_complete - self.datetime_start).total_seconds()
        return None


def of_gpu_type(records: list[TrialRecord], gpu_type: str | None
                ) -> tuple[list[TrialRecord], list[str]]:
    """(the records measured on `gpu_type`, all for None; the study's GPU types). Throughput
    is comparable only on one GPU type: an unknown one is a `UserError` naming those there."""
    types = sorted({r.gpu_type for r in records if r.gpu_type})
    if gpu_type is None:
        return list(records), types
    if gpu_type not in types:
        raise UserError(f"no trial ran on GPU type {gpu_type!r}; GPU types in this study: "
                        f"{', '.join(map(repr, types)) or 'none recorded'}")
    return [r for r in records if r.gpu_type == gpu_type], types


def objective_names(study: optuna.Study) -> list[str]:
    names = study.metric_names
    if names:
        return list(names)
    return list(study.user_attrs.get("objectives", []))


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    names = objective_names(study)
    out = []
    for t in study.get_trials(deepcopy=False):
        values = None
        if t.values is not None and t.state == optuna.trial.TrialState.COMPLETE:
            values = dict(zip(names, t.values))
        out.append(TrialRecord(t.number, t.state.name, values, dict(t.params),
                               dict(t.user_attrs), t.datetime_start, t.datetime_complete))
    return out


def default_storage(study_name: str) -> str:
    return f"sqlite:///runs/{study_name}/study.db"


def open_storage(url: str, *, heartbeat: bool = False):
    """An Optuna storage for a URL: ``sqlite:///``, ``postgresql://``, ... or a journal file
    (``journal:PATH`` or a path ending in ``.log`` / ``.journal``)."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        path = url.removeprefix("journal:")
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise UserError(f"storage {url!r} is not a database URL (sqlite:///PATH, "
                        "postgresql://...) or a journal file (journal:PATH)")
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"heartbeat_interval": 10, "grace_period": 60} if heartbeat else {}
    try:
        return RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kwargs)
    except Exception as exc:  # sqlalchemy errors: unreachable server, bad driver, old schema
        raise UserError(f"cannot open storage {url}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0]}") from None


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        # The driver and the dashboard may read while a search writes.
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def load_study(name: str, storage: str | None = None) -> optuna.Study:
    """Open an existing sqa-nas study; `UserError` when it or its storage does not exist or
    was written by an incompatible version."""
    url = storage or default_storage(name)
    if url.startswith("sqlite:///"):
        from pathlib import Path

        if not Path(url.removeprefix("sqlite:///")).exists():
            raise UserError(f"no study {name!r}: storage {url} does not exist (pass --storage, "
                            f"or run `sqa-nas search` first)")
    store = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=store)
    except KeyError:
        known = ", ".join(s.study_name for s in optuna.get_all_study_summaries(store)) or "none"
        raise UserError(f"no study {name!r} in {url}; studies there: {known}") from None
    check_format(study, url)
    return study


def check_format(study: optuna.Study, where: str) -> None:
    meta = study.user_attrs.get("sqa_nas")
    if meta is None:
        raise UserError(f"study {study.study_name!r} in {where} was not written by sqa-nas "
                        "(no 'sqa_nas' attribute)")
    if meta.get("format") != FORMAT:
        raise UserError(f"study {study.study_name!r} in {where} has format "
                        f"{meta.get('format')} (sqa-nas {meta.get('version')}); this sqa-nas "
                        f"reads format {FORMAT}: use a new study name or that version")


def compact_allocation(layers: list[dict[str, Any]]) -> str:
    """'8/4 x2, 4/4 w64 x2': each layer as H_q/H_kv plus its mask, runs collapsed."""
    tokens = [_layer_token(x) for x in layers]
    runs: list[list] = []
    for tok in tokens:
        if runs and runs[-1][0] == tok:
            runs[-1][1] += 1
        else:
            runs.append([tok, 1])
    if all(count == 1 for _, count in runs):
        return " ".join(tok for tok, _ in runs)
    return ", ".join(tok if count == 1 else f"{tok} x{count}" for tok, count in runs)


def _layer_token(layer: dict[str, Any]) -> str:
    tok = f"{layer['n_q_heads']}/{layer['n_kv_heads']}"
    if layer.get("block_sparse") or layer.get("pattern") == "block_sparse":
        return tok + " bs"
    if layer.get("window") is not None:
        tok += f" w{layer['window']}"
        if layer.get("global_tokens"):
            tok += f"+g{layer['global_tokens']}"
    return tok


def finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)
