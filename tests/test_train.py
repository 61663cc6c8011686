"""sqa_nas.train: the schedule's shape, the schedule applied at every step, and the splits
kept apart (training never sees validation tokens, evaluation never sees training ones),
on the library functions and end to end through a trial."""

from __future__ import annotations

import math

import pytest
import torch

from sqa_nas.data import Dataset
from sqa_nas.model import ModelConfig, build_model
from sqa_nas.search import trial
from sqa_nas.search.space import parse_space
from sqa_nas.search.trial import TrialJob, run_trial, train_config
from sqa_nas.train import TrainConfig, evaluate, lr_at, train

TINY = dict(vocab_size=256, d_model=32, n_layers=2, n_heads=4, ffn_dim=64)
TRAIN_VOCAB = range(0, 128)  # the fake corpus: training tokens here ...
VAL_VOCAB = range(128, 256)  # ... validation tokens here, so a batch tells its split


class SplitData(Dataset):
    """Training batches drawn from `TRAIN_VOCAB`, validation batches from `VAL_VOCAB`;
    counts how many batches of each it served."""

    vocab_size = 256
    fingerprint = "0" * 64
    meta = {"kind": "split-test", "vocab_size": 256, "fingerprint": "0" * 64}

    def __init__(self):
        self.served = {"train": 0, "val": 0}

    def _batch(self, gen, vocab, batch_size, seq_len, device):
        tokens = torch.randint(vocab.start, vocab.stop, (batch_size, seq_len + 1), generator=gen)
        tokens = tokens.to(device)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def train_batches(self, batch_size, seq_len, *, seed=0, device="cpu", start=0):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(start):
            self._batch(gen, TRAIN_VOCAB, batch_size, seq_len, device)  # drawn, not served
        while True:
            self.served["train"] += 1
            yield self._batch(gen, TRAIN_VOCAB, batch_size, seq_len, device)

    def val_batches(self, batch_size, seq_len, n_batches, *, device="cpu"):
        gen = torch.Generator().manual_seed(12345)
        self.served["val"] += n_batches
        return [self._batch(gen, VAL_VOCAB, batch_size, seq_len, device) for _ in range(n_batches)]


def spy_inputs(model: torch.nn.Module) -> list[tuple[bool, int, int]]:
    """(training mode, min token, max token) of every forward call of `model`."""
    seen: list[tuple[bool, int, int]] = []
    model.register_forward_pre_hook(
        lambda m, args: seen.append((m.training, int(args[0].min()), int(args[0].max())))
    )
    return seen


def split_of(low: int, high: int) -> str:
    if low in TRAIN_VOCAB and high in TRAIN_VOCAB:
        return "train"
    if low in VAL_VOCAB and high in VAL_VOCAB:
        return "val"
    return "mixed"


# ------------------------------------------------------------------------------ lr_at
def test_lr_warms_up_linearly_then_decays_from_the_peak_to_the_floor():
    cfg = TrainConfig(seq_len=8, steps=30, lr=0.01, warmup_steps=4, min_lr_ratio=0.2)
    assert [lr_at(s, 30, cfg) for s in range(4)] == pytest.approx(
        [0.0025, 0.005, 0.0075, 0.01]
    )  # lr * (step + 1) / warmup_steps
    assert lr_at(4, 30, cfg) == pytest.approx(0.01)  # the cosine starts at the peak
    assert lr_at(17, 30, cfg) == pytest.approx(0.01 * (0.2 + 0.8 * 0.5))  # half way: mean
    assert lr_at(30, 30, cfg) == pytest.approx(0.002)  # min_lr_ratio * lr at `total`
    assert lr_at(99, 30, cfg) == pytest.approx(0.002)  # and held past it
    after = [lr_at(s, 30, cfg) for s in range(4, 31)]
    assert all(a > b for a, b in zip(after, after[1:]))


def test_lr_is_held_after_warm_up_when_the_length_is_unknown():
    cfg = TrainConfig(seq_len=8, seconds=1.0, lr=0.01, warmup_steps=2)
    assert cfg.planned_steps == -1
    assert [lr_at(s, -1, cfg) for s in (0, 1, 2, 500)] == pytest.approx([0.005, 0.01, 0.01, 0.01])


def test_planned_steps_is_the_first_budget_reached():
    assert TrainConfig(seq_len=16, batch_size=4, steps=10).planned_steps == 10
    assert TrainConfig(seq_len=16, batch_size=4, tokens=64 * 3 + 1).planned_steps == 4
    assert TrainConfig(seq_len=16, batch_size=4, steps=10, tokens=64 * 3).planned_steps == 3
    with pytest.raises(ValueError, match="steps, tokens or seconds"):
        TrainConfig(seq_len=16)


def test_the_trial_builds_the_train_config_from_the_budget():
    spec = parse_space(
        {
            "model": {"seq_len": 32},
            "budget": {
                "train": {
                    "steps": 7,
                    "lr": 0.02,
                    "warmup_steps": 3,
                    "min_lr_ratio": 0.5,
                    "batch_size": 2,
                    "grad_clip": 0.5,
                    "weight_decay": 0.01,
                    "eval_batches": 3,
                    "eval_batch_size": 5,
                }
            },
        }
    )
    assert train_config(spec) == TrainConfig(
        seq_len=32,
        batch_size=2,
        steps=7,
        lr=0.02,
        warmup_steps=3,
        min_lr_ratio=0.5,
        grad_clip=0.5,
        weight_decay=0.01,
        eval_batches=3,
        eval_batch_size=5,
        compile="auto",  # the search's default
    )


# ------------------------------------------------------------------------------ train
def test_training_sets_the_scheduled_lr_before_every_step(monkeypatch):
    """The optimizer runs each step at lr_at(step): the warm-up, the decay and the last."""
    applied: list[list[float]] = []

    class SpyAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            applied.append([g["lr"] for g in self.param_groups])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", SpyAdamW)
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY))
    cfg = TrainConfig(
        seq_len=16, batch_size=2, steps=12, lr=0.01, warmup_steps=3, min_lr_ratio=0.1
    )
    result = train(model, SplitData(), cfg, torch.device("cpu"), seed=0)
    assert result.steps == 12 and len(applied) == 12
    for step, lrs in enumerate(applied):  # both parameter groups, every step
        assert lrs == [pytest.approx(lr_at(step, 12, cfg), rel=1e-12)] * 2, step
    assert applied[0][0] == pytest.approx(0.01 / 3)
    assert applied[-1][0] == pytest.approx(
        0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 8 / 9)))
    )


def test_training_reads_only_training_batches_and_evaluation_only_validation_ones():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY))
    seen, data = spy_inputs(model), SplitData()
    cfg = TrainConfig(seq_len=16, batch_size=2, steps=5, eval_batches=3)
    train(model, data, cfg, torch.device("cpu"), seed=0)
    assert [split_of(lo, hi) for _, lo, hi in seen] == ["train"] * 5
    assert data.served == {"train": 5, "val": 0}
    seen.clear()
    scores = evaluate(model, data, cfg, torch.device("cpu"))
    assert [(mode, split_of(lo, hi)) for mode, lo, hi in seen] == [(False, "val")] * 3
    assert data.served == {"train": 5, "val": 3}
    assert scores["val_tokens"] == 3 * 2 * 16


def test_a_trial_trains_on_the_training_split_and_scores_the_validation_split(monkeypatch):
    """End to end: run_trial's loss comes from validation batches only, and no training
    batch is read after training ends."""
    data, seen = SplitData(), []
    monkeypatch.setattr(trial, "_dataset", lambda _: data)
    build = trial.build_model

    def spied_build(config, **kwargs):
        model = build(config, **kwargs)
        seen.append(spy_inputs(model))
        return model

    monkeypatch.setattr(trial, "build_model", spied_build)
    spec = parse_space(
        {
            "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "ffn_dim": 64, "seq_len": 16},
            "objectives": ["val_loss"],
            "seed_trials": ["MHA"],
            "budget": {"train": {"steps": 4, "batch_size": 2, "eval_batches": 2}},
        }
    )
    out = run_trial(TrialJob(0, dict(spec.seed_params())["MHA"], spec.model_dump(mode="json")))
    assert out.state == "COMPLETE", out.attrs.get("fail_reason")
    [calls] = seen  # one model built: val_loss alone measures no throughput
    assert [(mode, split_of(lo, hi)) for mode, lo, hi in calls] == [(True, "train")] * 4 + [
        (False, "val")
    ] * 2
    assert data.served == {"train": 4, "val": 2}
    assert out.attrs["metrics"]["val_tokens"] == 2 * 2 * 16
    assert out.attrs["metrics"]["train_tokens"] == 4 * 2 * 16
