"""sqa_nas.search.noise: the noise floor's figures from a noise trial, one sigma per
objective, and the front read against it: trials within 2 sigma of the front are
indistinguishable, and the one-sentence verdict says resolved, NOT resolved, or not known.
Also: common random numbers give identical losses for identical layouts."""

from __future__ import annotations

import pytest
import torch

from sqa_nas.model import ModelConfig, build_model, init_weights
from sqa_nas.search.noise import Noise, assess
from sqa_nas.search.records import TrialRecord
from sqa_nas.search.space import parse_space
from sqa_nas.search.trial import TrialJob, run_trial
from sqa_nas.throughput import Throughput

OBJ = ["val_loss", "throughput_tokens_per_s"]


def _record(number: int, loss: float, speed: float, **attrs) -> TrialRecord:
    return TrialRecord(
        number, "COMPLETE", {"val_loss": loss, "throughput_tokens_per_s": speed}, {}, attrs
    )


def test_the_noise_of_a_noise_trial_is_the_spread_of_its_seeds():
    measured = [Throughput(s, 0.01, 3, 1.0, 0.03, 100.0, s / 100, None) for s in (90, 100, 110)]
    noise = Noise.of([2.0, 2.1, 2.2], measured, "NVIDIA H200", 0)
    assert noise.n == 3 and noise.val_loss_std == pytest.approx(0.1)
    assert noise.throughput_rel_std == pytest.approx(0.1)
    assert noise.speedup_rel_std == pytest.approx(0.1)
    assert noise.sigma("val_loss", 5.0) == pytest.approx(0.1)
    assert noise.sigma("throughput_tokens_per_s", 200.0) == pytest.approx(20.0)
    assert noise.sigma("kv_cache_bytes", 1e6) == 0.0  # analytic: exact
    assert noise.describe() == (
        "val_loss sigma 0.1 [0.052, 0.63], throughput 10.0%, speedup 10.0% (3 seeds of trial 0)"
    )
    assert Noise.read({}).n == 0 and Noise.read({"noise": noise.model_dump()}) == noise
    odd = Noise.read({"noise": {"n": "three"}})  # a reader never stops on an odd attr
    assert odd.n == 0 and odd.reason == "the study's noise attr does not parse"


def test_a_noise_trial_without_timings_counts_its_seeds_by_their_losses():
    noise = Noise.of([2.0, 2.1, 2.2], [], "cpu", 0)  # throughput not an objective: no timing
    assert noise.n == 3 and noise.val_loss_std == pytest.approx(0.1)
    assert noise.throughput_rel_std is None and noise.speedup_rel_std is None
    assert noise.describe() == "val_loss sigma 0.1 [0.052, 0.63] (3 seeds of trial 0)"


def test_two_seeds_are_the_fewest_that_measure_the_noise():
    two = Noise(n=2, val_loss_std=0.05, throughput_rel_std=0.02, trial=4)
    assert (
        two.describe() == "val_loss sigma 0.05 [0.022, 1.6], throughput 2.0% (2 seeds of trial 4)"
    )
    records = [_record(0, 2.0, 100.0), _record(1, 2.5, 50.0)]
    assert assess(records, OBJ, two).measured
    # One seed has no spread: whatever figures an odd stored attr holds, nothing is measured.
    one = Noise(n=1, val_loss_std=0.05, throughput_rel_std=0.02, trial=4)
    assert not assess(records, OBJ, one).measured
    assert one.describe() == "noise not measured (no noise trial yet)"


def test_a_trial_exactly_two_sigma_behind_the_front_is_indistinguishable():
    # params is analytic (sigma 0) and equal; val_loss is 2 sigma behind, exactly in binary:
    # moved 2 sigma towards better, trial 1 equals trial 0, which does not dominate it.
    objectives = ["val_loss", "params"]

    def record(number: int, loss: float) -> TrialRecord:
        return TrialRecord(number, "COMPLETE", {"val_loss": loss, "params": 100.0}, {}, {})

    records = [record(0, 1.0), record(1, 1.25), record(2, 1.375)]
    verdict = assess(records, objectives, Noise(n=3, val_loss_std=0.125))
    assert [r.number for r in verdict.front] == [0]
    assert [r.number for r in verdict.indistinguishable] == [1]  # 2 is 3 sigma behind


def test_trials_within_two_sigma_of_the_front_are_indistinguishable():
    records = [
        _record(0, 2.00, 100.0),  # front
        _record(1, 2.30, 200.0),  # front
        _record(2, 2.05, 95.0),  # behind 0 by 0.05 loss and 5%: within 2 sigma
        _record(3, 2.60, 150.0),  # behind 1 by 0.3 loss (> 2 x 0.05) and 25% (> 2 x 2%)
    ]
    noise = Noise(n=3, val_loss_std=0.05, throughput_rel_std=0.02, trial=0)
    verdict = assess(records, OBJ, noise)
    assert [r.number for r in verdict.front] == [0, 1]
    assert [r.number for r in verdict.indistinguishable] == [2]
    assert not verdict.resolved
    assert verdict.summary().startswith("Front NOT resolved at this budget: 1 trial(s) (2)")
    # A tighter noise separates trial 2 too.
    tight = assess(records, OBJ, Noise(n=3, val_loss_std=0.01, throughput_rel_std=0.01))
    assert tight.indistinguishable == [] and tight.resolved
    assert tight.summary().startswith("Front resolved at this budget")
    # Three seeds cannot rule out a sigma 6 times larger: there, trial 2 is within noise.
    assert [r.number for r in tight.within_upper] == [2]
    assert "But 3 seeds place sigma only within its interval: at its upper end 1 trial(s) (2)" in (
        tight.summary()
    )
    many = assess(records, OBJ, Noise(n=30, val_loss_std=0.01, throughput_rel_std=0.01))
    assert many.resolved and many.within_upper == [] and "But" not in many.summary()


def test_without_a_measured_noise_the_verdict_is_not_known():
    records = [_record(0, 2.0, 100.0), _record(1, 2.1, 90.0)]
    for noise in (Noise(), Noise(n=0, reason="off: budget.noise_seeds is 0")):
        verdict = assess(records, OBJ, noise)
        assert not verdict.measured and not verdict.resolved
        assert verdict.summary().startswith("Not known whether the front is resolved")
    assert "off: budget.noise_seeds is 0" in assess(records, OBJ, noise).summary()
    # Measured, but not for an objective of the study: still not known.
    partial = Noise(n=3, val_loss_std=0.01)
    assert not assess(records, OBJ, partial).measured


def test_a_repeat_never_stands_on_the_front_beside_its_original():
    records = [_record(0, 2.0, 100.0), _record(1, 2.0, 100.0, duplicate_of=0)]
    assert [r.number for r in assess(records, OBJ, Noise()).front] == [0]


def test_weights_seeded_per_parameter_agree_wherever_names_and_shapes_do():
    tiny = dict(vocab_size=64, d_model=16, n_layers=2, n_heads=4, ffn_dim=32)
    mha = build_model(ModelConfig(**tiny), seed=7)
    sqa = build_model(ModelConfig(**tiny, attention={"variant": "SQA"}), seed=7)
    a, b = mha.state_dict(), sqa.state_dict()
    same = [k for k in a if a[k].shape == b[k].shape]
    assert "embed.weight" in same and "layers.1.ffn.w1.weight" in same
    assert all(torch.equal(a[k], b[k]) for k in same)
    assert a["layers.0.attn.q_proj.weight"].shape != b["layers.0.attn.q_proj.weight"].shape
    other = build_model(ModelConfig(**tiny), seed=8).state_dict()
    assert not torch.equal(a["embed.weight"], other["embed.weight"])
    # Re-initialising in place with the seed gives the same weights back.
    w = mha.embed.weight.detach().clone()
    init_weights(mha, 9)
    init_weights(mha, 7)
    assert torch.equal(mha.embed.weight, w)
    assert bool((mha.layers[0].attn_norm.weight == 1.0).all())


def test_identical_layouts_train_to_identical_losses_under_common_random_numbers():
    spec = parse_space(
        {
            "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "ffn_dim": 64, "seq_len": 32},
            "objectives": ["val_loss"],
            "seed_trials": ["SQA"],
            "budget": {"train": {"steps": 3, "batch_size": 2, "eval_batches": 1}},
        }
    )
    params = dict(spec.seed_params())["SQA"]
    losses = [
        run_trial(TrialJob(n, params, spec.model_dump(mode="json"))).values["val_loss"]
        for n in (0, 7)  # different trial numbers: the same seeds
    ]
    assert losses[0] == losses[1]
