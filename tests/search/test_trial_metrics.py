"""sqa_nas.search.trial: what one trial hands its parts and records. The training, evaluation
and throughput functions are replaced by stand-ins with known results, so each recorded
figure can be checked exactly: the study's common seeds, the train and throughput settings
read from the budget, the paired MHA reference (timed beside every trial), the speedup and
its interval, the metrics and curve as measured, the mean and spread over seeds, the noise
trial, the analytic costs, and a non-finite loss recorded as PRUNED."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sqa_nas.data import Dataset
from sqa_nas.machine import device_name
from sqa_nas.search import trial
from sqa_nas.search.space import parse_space
from sqa_nas.search.trial import TrialJob, crn_seeds, run_trial, throughput_config, train_config
from sqa_nas.throughput import Throughput
from sqa_nas.train import NonFinite, ThroughputConfig, TrainConfig, TrainResult

CPU = device_name(torch.device("cpu"))
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

    speeds = itertools.cycle([3000.0, 2900.0, 3100.0])  # per measurement; the MHA step at 1500

    def fake_measure(step, cfg, device, reference=None, watch=()):
        calls["throughput"].append(
            {
                "cfg": cfg,
                "q_heads": [b.attn.config.n_q_heads for b in step.model.layers],
                "reference": reference,
                "watch": list(watch),
            }
        )
        speed = next(speeds)
        return Throughput(speed, 0.01, 4, 0.5, cfg.ci_target, 1500.0, speed / 1500, (1.9, 2.1))

    monkeypatch.setattr(trial, "train", fake_train)
    monkeypatch.setattr(trial, "evaluate", fake_evaluate)
    monkeypatch.setattr(trial, "measure", fake_measure)
    return calls


def _spec(**sections):
    return parse_space({"model": MODEL, "seed_trials": ["MHA", "SQA"], **sections})


def _run(spec, number=0, variant="SQA", reference=None, compile_choice=None, noise=None):
    params = dict(spec.seed_params())[variant]
    job = TrialJob(number, params, spec.model_dump(mode="json"), variant, dict(reference or {}))
    job.compile_choice, job.noise_seeds = dict(compile_choice or {}), noise
    return run_trial(job, device=torch.device("cpu"))


def test_every_trial_trains_with_the_studys_common_seeds(stand_ins):
    spec = _spec(objectives=["val_loss"], sampler={"seed": 2})
    for number in (0, 5):
        assert _run(spec, number).state == "COMPLETE"
    # The same weights seed and data order for every trial: only the layouts differ.
    seed = crn_seeds(spec, 1)[0]
    assert [c["seed"] for c in stand_ins["train"]] == [seed, seed]
    assert stand_ins["train"][0]["cfg"] == train_config(spec)
    assert crn_seeds(spec, 2)[0] == seed and crn_seeds(spec, 2)[1] != seed
    assert set(crn_seeds(spec, 3, "confirm")).isdisjoint(crn_seeds(spec, 3))
    assert crn_seeds(_spec(sampler={"seed": 3}), 1) != [seed]


def test_seeds_retrain_the_trial_and_record_the_mean_and_spread(stand_ins, monkeypatch):
    losses = iter([2.0, 2.5, 3.0])
    monkeypatch.setattr(
        trial,
        "evaluate",
        lambda *a: {"val_loss": next(losses), "perplexity": 1.0, "accuracy": 0.5, "val_tokens": 9},
    )
    spec = _spec(objectives=["val_loss", "throughput_tokens_per_s"], budget={"seeds": 3})
    out = _run(spec)
    assert out.state == "COMPLETE", out.attrs.get("fail_reason")
    m = out.attrs["metrics"]
    assert m["val_loss"] == pytest.approx(2.5) and m["val_loss_std"] == pytest.approx(0.5)
    assert m["val_loss_seeds"] == [2.0, 2.5, 3.0] and out.values["val_loss"] == 2.5
    assert out.attrs["seeds"] == crn_seeds(spec, 3)
    assert [c["seed"] for c in stand_ins["train"]] == crn_seeds(spec, 3)
    assert len(stand_ins["throughput"]) == 1  # timed once: the weights do not change speed
    assert out.noise is None and "noise_trial" not in out.attrs


def test_the_noise_trial_trains_and_times_every_seed_and_reports_the_spread(stand_ins):
    spec = _spec(objectives=["val_loss", "speedup_vs_mha"])
    out = _run(spec, variant="MHA", noise=3)
    assert out.state == "COMPLETE", out.attrs.get("fail_reason")
    assert len(stand_ins["train"]) == 3 and len(stand_ins["throughput"]) == 3
    noise = out.noise
    assert noise["n"] == 3 and noise["val_loss_std"] == 0.0  # the stand-in loss is fixed
    speeds = [3000.0, 2900.0, 3100.0]
    mean = sum(speeds) / 3
    rel = math.sqrt(sum((x - mean) ** 2 for x in speeds) / 2) / mean
    assert noise["throughput_rel_std"] == pytest.approx(rel)
    assert noise["speedup_rel_std"] == pytest.approx(rel)  # the reference is fixed here
    assert out.attrs["noise_trial"] is True
    assert len(out.attrs["timings"]["train_windows"]) == 3  # each seed's loop, for the share
    # The objective is the first measurement's, as for any trial.
    assert out.values["speedup_vs_mha"] == pytest.approx(2.0)
    # On a CPU "auto" leaves the noise off: an ordinary trial.
    stand_ins["train"].clear()
    auto = _run(spec, variant="MHA", noise="auto")
    assert auto.state == "COMPLETE" and auto.noise["n"] == 0
    assert "off on the CPU" in auto.noise["reason"]
    assert len(stand_ins["train"]) == 1


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


def test_speedup_alone_is_timed_paired_with_the_same_shape_mha_model(stand_ins):
    spec = _spec(
        objectives=["speedup_vs_mha"],
        budget={
            "throughput": {"seq_len": 8, "batch_size": 2, "warmup": 3, "repeats": 4, "mode": "fwd"}
        },
    )
    out = _run(spec)
    assert out.state == "COMPLETE", out.attrs.get("fail_reason")
    expected = ThroughputConfig(seq_len=8, batch_size=2, warmup=3, repeats=4, backward=False)
    (call,) = stand_ins["throughput"]
    assert call["cfg"] == expected and call["watch"] == ["speedup"]
    # The trial's model (SQA: 2 query heads) against the same-shape MHA (4).
    assert call["q_heads"] == [2, 2]
    assert [b.attn.config.n_q_heads for b in call["reference"].model.layers] == [4, 4]
    assert out.values == {"speedup_vs_mha": 2.0}
    m = out.attrs["metrics"]
    assert m["speedup_ci95"] == [1.9, 2.1] and m["mha_throughput_tokens_per_s"] == 1500.0
    assert m["throughput_rel_ci95"] == 0.01 and m["throughput_rounds"] == 4
    assert m["noisy_throughput"] is True  # (1.9, 2.1) is +-5%, wider than the 3% target
    assert stand_ins["train"] == []


def test_the_mha_reference_is_timed_beside_every_trial_and_built_once(stand_ins):
    spec = _spec(objectives=["throughput_tokens_per_s", "speedup_vs_mha"])
    for number in (0, 1):
        _run(spec, number, reference={CPU: 600.0})  # a stored reference is not used
    first, second = stand_ins["throughput"]
    assert first["reference"] is second["reference"]  # one MHA step per worker
    assert first["watch"] == ["throughput", "speedup"]


def test_throughput_settings_default_to_the_models_length_and_a_training_step():
    spec = _spec()
    assert throughput_config(spec) == ThroughputConfig(
        seq_len=16, batch_size=8, warmup=2, repeats=5, backward=True, ci_target=0.03
    )


def test_every_budget_setting_reaches_its_config():
    spec = _spec(
        budget={
            "train": {
                **{"steps": 7, "tokens": 9000, "seconds": 30.0, "batch_size": 3, "lr": 1e-3},
                **{"min_lr_ratio": 0.25, "warmup_steps": 2, "weight_decay": 0.05},
                **{"grad_clip": 0.5, "compile": False, "eval_batches": 3, "eval_batch_size": 5},
            },
            "throughput": {
                **{"seq_len": 32, "batch_size": 2, "warmup": 4, "repeats": 9, "mode": "fwd"},
                **{"ci_target": 0.1, "max_seconds": 7.5},
            },
        }
    )
    assert train_config(spec) == TrainConfig(
        seq_len=16,
        batch_size=3,
        steps=7,
        tokens=9000,
        seconds=30.0,
        lr=1e-3,
        min_lr_ratio=0.25,
        warmup_steps=2,
        weight_decay=0.05,
        grad_clip=0.5,
        compile=False,
        eval_batches=3,
        eval_batch_size=5,
    )
    assert throughput_config(spec) == ThroughputConfig(
        seq_len=32,
        batch_size=2,
        warmup=4,
        repeats=9,
        backward=False,
        ci_target=0.1,
        max_seconds=7.5,
    )


def test_common_seeds_stay_the_same_across_versions():
    # A study continued by a later version must train its new trials with the seeds its
    # earlier trials recorded (common random numbers): the values are pinned.
    assert crn_seeds(_spec(), 3) == [946392355, 2850522383, 2665385305]
    assert crn_seeds(_spec(), 2, "confirm") == [1395115724, 156542938]
    assert crn_seeds(_spec(sampler={"seed": 2}), 2) == [3308588633, 86166984]


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
