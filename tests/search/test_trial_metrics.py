"""sqa_nas.search.trial: what one trial hands its parts and records. The training, evaluation
and throughput functions are replaced by stand-ins with known results, so each recorded
figure can be checked exactly: the per-trial seed, the train and throughput settings read
from the budget, the MHA reference (measured once per device, reused when given), the
speedup, the metrics and curve as measured, the analytic costs, and a non-finite loss
recorded as PRUNED."""

from __future__ import annotations

import math

import pytest
import torch

from sqa_nas.data import Dataset
from sqa_nas.machine import device_name
from sqa_nas.search import trial
from sqa_nas.search.space import parse_space
from sqa_nas.search.trial import TrialJob, run_trial, throughput_config, train_config
from sqa_nas.train import NonFinite, ThroughputConfig, TrainConfig, TrainResult

MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 4, "ffn_dim": 64, "seq_len": 16}


class NoData(Dataset):
    vocab_size = 256
    fingerprint = "f" * 64
    meta = {"kind": "none", "vocab_size": 256, "fingerprint": "f" * 64}

    def train_batches(self, *a, **k):
        raise AssertionError("the stand-in train reads no batches")

    def val_batches(self, *a, **k):
        raise AssertionError("the stand-in evaluate reads no batches")


@pytest.fixture
def stand_ins(monkeypatch):
    """Replaces training, evaluation and throughput in the trial module; returns what they
    were called with."""
    calls = {"train": [], "throughput": []}
    monkeypatch.setattr(trial, "_dataset", lambda _: NoData())

    def fake_train(model, data, cfg, device, seed, progress=None, **_):
        calls["train"].append({"cfg": cfg, "seed": seed})
        return TrainResult([(1, 64, 5.5), (4, 256, 4.25)], 4, 256)

    def fake_evaluate(model, data, cfg, device):
        return {"val_loss": 2.0, "perplexity": math.exp(2.0), "accuracy": 0.25, "val_tokens": 96}

    measured = iter([3000.0, 1000.0, 1500.0])  # the trial, then MHA twice

    def fake_throughput(model, cfg, device, step=None):
        calls["throughput"].append(
            {"cfg": cfg, "q_heads": [b.attn.config.n_q_heads for b in model.layers]}
        )
        return next(measured)

    monkeypatch.setattr(trial, "train", fake_train)
    monkeypatch.setattr(trial, "evaluate", fake_evaluate)
    monkeypatch.setattr(trial, "measure_throughput", fake_throughput)
    return calls


def _spec(**sections):
    return parse_space({"model": MODEL, "seed_trials": ["MHA", "SQA"], **sections})


def _run(spec, number=0, variant="SQA", reference=None, compile_choice=None):
    params = dict(spec.seed_params())[variant]
    job = TrialJob(number, params, spec.model_dump(mode="json"), variant, dict(reference or {}))
    job.compile_choice = dict(compile_choice or {})
    return run_trial(job, device=torch.device("cpu"))


def test_each_trial_trains_with_its_own_seed_from_the_samplers(stand_ins):
    spec = _spec(objectives=["val_loss"], sampler={"seed": 2})
    for number in (0, 5):
        assert _run(spec, number).state == "COMPLETE"
    assert [c["seed"] for c in stand_ins["train"]] == [2 * 100_003, 2 * 100_003 + 5]
    assert stand_ins["train"][0]["cfg"] == train_config(spec)


def test_measured_scores_curve_and_analytic_costs_are_recorded_as_such(stand_ins):
    spec = _spec(objectives=["val_loss", "kv_cache_bytes"])
    out = _run(spec)
    assert out.state == "COMPLETE", out.attrs.get("fail_reason")
    m = out.attrs["metrics"]
    assert (m["val_loss"], m["perplexity"], m["accuracy"], m["val_tokens"]) == (
        2.0,
        pytest.approx(math.exp(2.0)),
        0.25,
        96,
    )
    assert (m["train_steps"], m["train_tokens"]) == (4, 256)
    assert out.attrs["curve"] == [[1, 64, 5.5], [4, 256, 4.25]]
    # SQA at H=4: H/2 = 2 query heads over H/4 = 1 KV head of head_dim 8; K and V in bf16.
    kv_bytes = 2 * 2 * 1 * 8 * 2  # layers x (K, V) x KV heads x head_dim x bytes
    assert m["kv_cache_bytes"] == kv_bytes == out.attrs["analytics"]["kv_cache_bytes_per_token"]
    assert out.values == {"val_loss": 2.0, "kv_cache_bytes": float(kv_bytes)}
    assert stand_ins["throughput"] == []  # no throughput objective: nothing timed


def test_the_analytic_speedup_is_of_the_whole_forward_not_attention_alone(stand_ins):
    from sqa_nas.analytics import analyze

    spec = _spec(objectives=["val_loss"])
    out = _run(spec)
    cost = analyze(spec.build_config(dict(spec.seed_params())["SQA"], 256), 16)
    assert cost.speedup_vs_mha != cost.attn_speedup_vs_mha
    assert out.attrs["analytics"]["analytic_speedup_vs_mha"] == pytest.approx(cost.speedup_vs_mha)
    assert out.attrs["metrics"]["params"] == cost.params


def test_speedup_alone_measures_the_trial_and_its_mha_reference(stand_ins):
    spec = _spec(
        objectives=["speedup_vs_mha"],
        budget={
            "throughput": {"seq_len": 8, "batch_size": 2, "warmup": 3, "repeats": 4, "mode": "fwd"}
        },
    )
    out = _run(spec)
    assert out.state == "COMPLETE", out.attrs.get("fail_reason")
    expected = ThroughputConfig(seq_len=8, batch_size=2, warmup=3, repeats=4, backward=False)
    assert [c["cfg"] for c in stand_ins["throughput"]] == [expected] * 3
    # The trial's model (SQA: 2 query heads), then the same-shape MHA (4) twice.
    assert [c["q_heads"] for c in stand_ins["throughput"]] == [[2, 2], [4, 4], [4, 4]]
    assert out.values == {"speedup_vs_mha": 2.0}  # 3000 / max(1000, 1500)
    assert out.mha_reference == {device_name(torch.device("cpu")): 1500.0}
    assert stand_ins["train"] == []


def test_a_known_mha_reference_is_reused_not_measured_again(stand_ins):
    spec = _spec(objectives=["throughput_tokens_per_s", "speedup_vs_mha"])
    out = _run(spec, reference={device_name(torch.device("cpu")): 600.0})
    assert len(stand_ins["throughput"]) == 1 and out.mha_reference == {}
    m = out.attrs["metrics"]
    assert (m["throughput_tokens_per_s"], m["mha_throughput_tokens_per_s"]) == (3000.0, 600.0)
    assert out.values == {"throughput_tokens_per_s": 3000.0, "speedup_vs_mha": 5.0}


def test_throughput_settings_default_to_the_models_length_and_a_training_step():
    spec = _spec()
    assert throughput_config(spec) == ThroughputConfig(
        seq_len=16, batch_size=8, warmup=2, repeats=5, backward=True
    )


def test_token_and_time_budgets_reach_the_train_config():
    spec = _spec(budget={"train": {"tokens": 5000, "seconds": 30.0}})
    assert train_config(spec) == TrainConfig(seq_len=16, tokens=5000, seconds=30.0, compile="auto")


def test_a_non_finite_loss_prunes_the_trial_with_the_reason(stand_ins, monkeypatch):
    def diverges(*a, **k):
        raise NonFinite("non-finite training loss (nan) at step 3")

    monkeypatch.setattr(trial, "train", diverges)
    out = _run(_spec(objectives=["val_loss"]))
    assert out.state == "PRUNED"
    assert out.attrs["fail_reason"] == "non-finite training loss (nan) at step 3"
    assert out.values == {}


CPU = device_name(torch.device("cpu"))


def test_the_first_trial_on_a_device_decides_compiling_for_its_study(stand_ins):
    spec = _spec(objectives=["val_loss"])
    first = _run(spec)
    assert first.compile_choice == {CPU: False}  # on a CPU: eager, and said why
    assert "GPU" in first.attrs["compile"]["reason"]
    later = _run(spec, number=1, compile_choice={CPU: False})
    assert later.compile_choice == {} and "study decided" in later.attrs["compile"]["reason"]


def test_a_study_timed_before_the_compile_choice_existed_stays_eager(stand_ins):
    """Its MHA reference was measured eagerly: a compiled trial would not compare."""
    spec = _spec(objectives=["throughput_tokens_per_s"], budget={"train": {"compile": True}})
    out = _run(spec, reference={CPU: 600.0})
    assert out.compile_choice == {} and out.attrs["compile"]["used"] is False
