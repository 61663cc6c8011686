"""One trial's parts: training lowers the validation loss on the embedded corpus, the
schedule, and failures recorded instead of raised."""

from __future__ import annotations

import math

import pytest
import torch

from sqa_nas.data import load_dataset
from sqa_nas.model import build_model
from sqa_nas.search.space import parse_space
from sqa_nas.search.trial import TrialJob, run_trial, train_config
from sqa_nas.train import NonFinite, evaluate, lr_at, train

SPACE = {
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "ffn_dim": 128, "seq_len": 64},
    "budget": {
        "train": {"steps": 60, "batch_size": 8, "lr": 0.003, "warmup_steps": 5, "eval_batches": 4}
    },
}


def test_validation_loss_decreases_with_training():
    spec = parse_space(SPACE)
    data = load_dataset(spec.data.model_dump(mode="json"))
    params = dict(spec.seed_params())["SQA"]
    torch.manual_seed(0)
    model = build_model(spec.build_config(params, data.vocab_size))
    device, cfg = torch.device("cpu"), train_config(spec)
    before = evaluate(model, data, cfg, device)["val_loss"]
    assert before == pytest.approx(math.log(256), abs=0.3)  # untrained: uniform over bytes
    result = train(model, data, cfg, device, seed=0)
    after = evaluate(model, data, cfg, device)
    assert result.steps == 60 and result.tokens == 60 * 8 * 64
    assert after["val_loss"] < before - 1.0, (before, after)
    assert result.curve[-1][2] < result.curve[0][2]  # the training loss fell too
    assert 0 < after["accuracy"] < 1 and after["perplexity"] == pytest.approx(
        math.exp(after["val_loss"])
    )


def test_schedule_warms_up_then_decays_to_the_floor():
    spec = parse_space(SPACE)
    lrs = [lr_at(s, 60, train_config(spec)) for s in range(60)]
    assert lrs[0] == pytest.approx(0.003 / 5) and max(lrs) == pytest.approx(0.003)
    assert lrs[-1] == pytest.approx(0.003 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 54 / 55))))
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))


def test_a_failing_trial_is_recorded_not_raised():
    spec = parse_space(SPACE)
    params = dict(spec.seed_params())["MHA"] | {"layer0.heads": "3/2"}  # not a valid pair
    out = run_trial(TrialJob(0, params, spec.model_dump(mode="json")))
    assert (
        out.state == "FAIL"
        and "n_kv_heads=2 does not divide n_q_heads=3" in out.attrs["fail_reason"]
    )


def test_a_diverging_training_loss_stops_the_trial(monkeypatch):
    import torch.nn.functional as F

    cross_entropy = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: cross_entropy(*a, **k) * math.nan)
    spec = parse_space(SPACE)
    data = load_dataset(spec.data.model_dump(mode="json"))
    model = build_model(spec.build_config(dict(spec.seed_params())["SQA"], data.vocab_size))
    with pytest.raises(NonFinite, match=r"non-finite training loss \(nan\) at step 1$"):
        train(model, data, train_config(spec), torch.device("cpu"), seed=0)
