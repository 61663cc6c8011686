"""sqa_nas.search.records: a trial's record written by the one writer and read back typed by
the one reader, format-1 attrs (as older studies hold them) still loading, and odd stored
values set aside rather than stopping a reader."""

from __future__ import annotations

import optuna
import pytest

from sqa_nas.search.choices import compact_allocation
from sqa_nas.search.records import (
    FORMAT,
    Analytics,
    Corpus,
    Device,
    LayerRecord,
    Metrics,
    Timings,
    TrialAttrs,
    TrialRecord,
    trial_attrs,
    trial_records,
)

# A trial's user attrs as sqa-nas 0.x (format 1) stored them, keys and JSON values verbatim.
FORMAT1 = {
    "device": {"name": "NVIDIA H200", "type": "cuda", "host": "gpu-3", "node": "gpu-3", "gpu": 0},
    "versions": {
        "torch": "2.9.0+cu128",
        "cuda": "12.8",
        "cudnn": 91002,
        "python": "3.12.3",
        "sqa_nas": "0.4.0",
    },
    "timings": {
        "build_s": 0.4,
        "throughput_s": 3.1,
        "train_s": 60.2,
        "eval_s": 1.5,
        "total_s": 65.3,
    },
    "corpus": {
        "kind": "embedded",
        "fingerprint": "ab" * 32,
        "tokens": {"train": 30026861, "val": 1450164},
    },
    "model": {
        "vocab_size": 256,
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 8,
        "layers": [
            {"n_q_heads": 4, "n_kv_heads": 2},
            {"n_q_heads": 4, "n_kv_heads": 2, "window": 32},
        ],
    },
    "seed_variant": None,
    "allocation": "4/2 4/2 w32",
    "analytics": {
        "params": 123456,
        "flops_per_token": 2.5e5,
        "train_flops_per_token": 7.5e5,
        "attention_flops_per_token": 4096.0,
        "kv_cache_bytes_per_token": 512,
        "analytic_speedup_vs_mha": 1.31,
    },
    "curve": [[1, 1024, 5.5], [2, 2048, 5.25]],
    "layers": [
        {
            "n_q_heads": 4,
            "n_kv_heads": 2,
            "pattern": "dense",
            "backend": "sdpa",
            "backend_reason": "auto: dense",
        },
        {
            "n_q_heads": 4,
            "n_kv_heads": 2,
            "window": 32,
            "pattern": "window",
            "backend": "flex",
            "backend_reason": "auto: window",
        },
    ],
    "metrics": {
        "kv_cache_bytes": 512,
        "params": 123456,
        "attention_flops": 4096.0,
        "throughput_tokens_per_s": 91000.0,
        "mha_throughput_tokens_per_s": 70000.0,
        "speedup_vs_mha": 1.3,
        "train_steps": 2,
        "train_tokens": 2048,
        "val_loss": 2.25,
        "perplexity": 9.4877,
        "accuracy": 0.41,
        "val_tokens": 4096,
    },
    "driver": {"host": "gpu-3", "pid": 4242, "proc_start": 17, "id": "d1"},
}


def _study() -> optuna.Study:
    study = optuna.create_study(
        storage=optuna.storages.InMemoryStorage(), directions=["minimize", "maximize"]
    )
    study.set_metric_names(["val_loss", "throughput_tokens_per_s"])
    study.set_user_attr("sqa_nas", {"format": FORMAT, "version": "test"})
    return study


def _add(study: optuna.Study, attrs: dict, values=(2.25, 91000.0)) -> TrialRecord:
    study.add_trial(optuna.trial.create_trial(values=list(values), user_attrs=attrs))
    return trial_records(study)[-1]


def test_a_written_record_reads_back_typed_through_the_study():
    written = TrialAttrs(
        model={"d_model": 64},
        allocation="8/4 w16",
        seed_variant="GQA",
        layers=[
            LayerRecord(
                n_q_heads=8,
                n_kv_heads=4,
                window=16,
                pattern="window",
                backend="sdpa",
                backend_reason="auto",
            )
        ],
        analytics=Analytics(params=1000, kv_cache_bytes_per_token=64, analytic_speedup_vs_mha=1.5),
        metrics=Metrics(val_loss=2.5, throughput_tokens_per_s=1e5, val_tokens=512),
        curve=[(1, 256, 5.0), (2, 512, 4.5)],
        device=Device(name="NVIDIA H200", type="cuda", gpu=None),
        corpus=Corpus(kind="embedded", fingerprint="f" * 64),
        timings=Timings(total_s=3.5),
        versions={"torch": "2.9.0", "cudnn": None},
    )
    stored = trial_attrs(written)
    assert stored["metrics"] == {
        "val_loss": 2.5,
        "throughput_tokens_per_s": 1e5,
        "val_tokens": 512,
    }  # only what the trial set
    assert stored["device"] == {"name": "NVIDIA H200", "type": "cuda", "gpu": None}
    assert "fail_reason" not in stored and "infeasible" not in stored
    r = _add(_study(), stored)
    assert r.problems == {}
    assert r.typed == written
    assert r.metrics.val_loss == 2.5 and r.metrics.accuracy is None
    assert r.analytics.params == 1000 and r.gpu_type == "NVIDIA H200"
    assert r.layers[0].window == 16 and r.layers[0].mask.pattern == "window"
    assert r.curve == [(1, 256, 5.0), (2, 512, 4.5)] and r.timings.total_s == 3.5
    assert r.seed_variant == "GQA" and r.allocation == "8/4 w16" and r.feasible
    assert r.values == {"val_loss": 2.25, "throughput_tokens_per_s": 91000.0}


def test_format_1_attrs_load_with_every_field_typed():
    r = _add(_study(), FORMAT1)
    assert r.problems == {}
    assert r.analytics.params == 123456 and r.analytics.attention_flops_per_token == 4096.0
    assert r.metrics.val_loss == 2.25 and r.metrics.value("speedup_vs_mha") == 1.3
    assert r.device.gpu == 0 and r.gpu_type == "NVIDIA H200"
    assert r.typed.corpus.tokens == {"train": 30026861, "val": 1450164}
    assert r.typed.versions["cudnn"] == 91002
    assert [x.backend for x in r.layers] == ["sdpa", "flex"]
    assert r.typed.driver["pid"] == 4242 and r.typed.retry_of is None
    # Stored back unchanged: same keys, same values.
    assert trial_attrs(r.typed) == FORMAT1
    assert r.analytics.stored() == FORMAT1["analytics"]


def test_missing_and_unknown_fields_are_tolerated():
    ray_device = {
        "name": "NVIDIA H200",
        "gpu": "0,1",
        "ray_node_id": "abc",
        "worker_pid": 7,
        "rack": "r12",
    }
    r = TrialRecord(
        3,
        "FAIL",
        None,
        {},
        {
            "fail_reason": "out of memory: x",
            "device": ray_device,
            "worker_deaths": 2,
            "metrics": {"val_loss": 3.0, "new_metric": 0.5},
        },
    )
    assert r.problems == {} and r.fail_reason == "out of memory: x"
    assert r.device.gpu == "0,1" and r.device.value("rack") == "r12"
    assert r.metrics.value("new_metric") == 0.5 and r.metrics.value("nothing") is None
    assert r.analytics.params is None and r.layers == [] and r.curve == []
    assert r.allocation == "" and r.seed_variant is None and r.timings.total_s is None
    assert r.typed.worker_deaths == 2
    assert TrialRecord(4, "RUNNING", None, {}).typed == TrialAttrs()


def test_an_odd_stored_value_is_set_aside_naming_it_and_the_rest_reads():
    attrs = dict(FORMAT1, metrics={"val_loss": "low"}, layers="4/2", infeasible=["kv > 1"])
    r = TrialRecord(5, "COMPLETE", {"val_loss": 1.0}, {}, attrs)
    assert set(r.problems) == {"metrics", "layers"}
    assert r.problems["metrics"].startswith("metrics.val_loss: ")
    assert r.metrics.val_loss is None and r.layers == []  # as if not recorded
    assert r.analytics.params == 123456 and not r.feasible and r.infeasible == ["kv > 1"]


def test_compact_allocation_collapses_runs_and_prints_masks():
    layers = [{"n_q_heads": 8, "n_kv_heads": 4}] * 2 + [
        {"n_q_heads": 4, "n_kv_heads": 4, "window": 64},
        {"n_q_heads": 4, "n_kv_heads": 4, "window": 64, "global_tokens": 4},
        {"n_q_heads": 2, "n_kv_heads": 1, "block_sparse": {"block_size": 16}},
    ]
    assert compact_allocation(layers) == "8/4 x2, 4/4 w64, 4/4 w64+g4, 2/1 bs"
    assert compact_allocation(layers[2:4]) == "4/4 w64 4/4 w64+g4"


@pytest.mark.parametrize("layer", FORMAT1["layers"])
def test_a_layer_record_names_its_mask(layer):
    assert LayerRecord.model_validate(layer).mask.pattern == layer["pattern"]
