"""sqa_nas.train in detail: the optimizer's groups and settings, gradient clipping, the seed
handed to the data, the curve's subsampling, the stopping rules, evaluation's token-weighted
loss and accuracy over odd batch sizes. Expected
values are worked out here by hand or from the model's own forward, not by the code under
test."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sqa_nas import train as train_module
from sqa_nas.data import IGNORE_INDEX, Dataset
from sqa_nas.model import ModelConfig, build_model
from sqa_nas.train import TrainConfig, evaluate, lr_at, train

pytestmark = pytest.mark.usefixtures("seeded")

TINY = dict(vocab_size=64, d_model=16, n_layers=1, n_heads=2, ffn_dim=32)
CPU = torch.device("cpu")


class RandomData(Dataset):
    """Random tokens; records the seeds `train_batches` is given. Validation targets repeat
    the input at even positions, and batch i masks its first i targets (IGNORE_INDEX), so
    batches count different numbers of tokens."""

    vocab_size = 64
    fingerprint = "0" * 64
    meta = {"kind": "random", "vocab_size": 64, "fingerprint": "0" * 64}

    def __init__(self):
        self.seeds: list[int] = []
        self.val_shapes: list[tuple[int, int, int]] = []

    def train_batches(self, batch_size, seq_len, *, seed=0, device="cpu", start=0):
        self.seeds.append(seed)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(start):
            torch.randint(0, 64, (batch_size, seq_len + 1), generator=gen)
        while True:
            t = torch.randint(0, 64, (batch_size, seq_len + 1), generator=gen)
            yield t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def val_batches(self, batch_size, seq_len, n_batches, *, device="cpu"):
        self.val_shapes.append((batch_size, seq_len, n_batches))
        gen = torch.Generator().manual_seed(7)
        out = []
        for i in range(n_batches):
            t = torch.randint(0, 64, (batch_size, seq_len + 1), generator=gen)
            y = t[:, 1:].clone()
            y[:, ::2] = t[:, :-1:2]  # even positions: the target is the input token
            y[:, :i] = IGNORE_INDEX
            out.append((t[:, :-1].contiguous(), y))
        return out


def _model():
    return build_model(ModelConfig(**TINY))


def test_lr_holds_the_peak_when_the_run_is_exactly_the_warm_up():
    cfg = TrainConfig(seq_len=8, steps=4, lr=0.02, warmup_steps=4)
    assert [lr_at(s, 4, cfg) for s in range(6)] == pytest.approx(
        [0.005, 0.01, 0.015, 0.02, 0.02, 0.02]
    )


def test_adamw_decays_only_matrices_with_the_documented_betas(monkeypatch):
    made = []

    class SpyAdamW(torch.optim.AdamW):
        def __init__(self, groups, **kw):
            made.append((groups, kw))
            super().__init__(groups, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", SpyAdamW)
    model = _model()
    train(
        model,
        RandomData(),
        TrainConfig(seq_len=8, batch_size=2, steps=1, weight_decay=0.3),
        CPU,
        seed=0,
    )
    [(groups, kw)] = made
    named = dict(model.named_parameters())
    matrices = {n for n, p in named.items() if p.dim() == 2}  # embedding + linear weights
    vectors = {n for n, p in named.items() if p.dim() == 1}  # RMSNorm gains
    assert matrices and vectors
    by_id = {id(p): n for n, p in named.items()}
    assert {by_id[id(p)] for p in groups[0]["params"]} == matrices
    assert {by_id[id(p)] for p in groups[1]["params"]} == vectors
    assert [g["weight_decay"] for g in groups] == [0.3, 0.0]
    assert kw["betas"] == (0.9, 0.95)


@pytest.mark.parametrize("clip", [0.25, None])
def test_gradients_are_clipped_to_grad_clip_every_step_or_never(monkeypatch, clip):
    norms = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(
        torch.nn.utils,
        "clip_grad_norm_",
        lambda params, max_norm: norms.append(max_norm) or real(params, max_norm),
    )
    train(
        _model(),
        RandomData(),
        TrainConfig(seq_len=8, batch_size=2, steps=3, grad_clip=clip),
        CPU,
        seed=0,
    )
    assert norms == ([clip] * 3 if clip else [])


def test_the_seed_reaches_the_training_batches():
    data = RandomData()
    train(_model(), data, TrainConfig(seq_len=8, batch_size=2, steps=1), CPU, seed=1234)
    assert data.seeds == [1234]


def test_the_curve_keeps_the_first_step_and_every_total_over_curve_points(monkeypatch):
    monkeypatch.setattr(train_module, "CURVE_POINTS", 4)  # 12 steps // 4: every 3rd step
    seen = []
    cfg = TrainConfig(seq_len=8, batch_size=2, steps=12, lr=0.01, warmup_steps=2)
    result = train(_model(), RandomData(), cfg, CPU, seed=0, progress=seen.append)
    assert [s for s, _, _ in result.curve] == [1, 3, 6, 9, 12]
    assert [t for _, t, _ in result.curve] == [16, 48, 96, 144, 192]  # step x 2 x 8 tokens
    assert (result.steps, result.tokens) == (12, 192)
    assert [p["step"] for p in seen] == [1, 3, 6, 9, 12] and {p["of"] for p in seen} == {12}
    # The lr reported with a point is the one its step ran at (step s ran at lr_at(s - 1)).
    assert [p["lr"] for p in seen] == pytest.approx(
        [lr_at(s - 1, 12, cfg) for s in (1, 3, 6, 9, 12)]
    )
    assert [round(p["loss"], 5) for p in seen] == [loss for _, _, loss in result.curve]
    assert all(0 < p["loss"] < 10 for p in seen)


def test_a_time_budget_does_not_cut_a_run_that_ends_first_by_steps():
    result = train(
        _model(),
        RandomData(),
        TrainConfig(seq_len=8, batch_size=2, steps=3, seconds=1e6),
        CPU,
        seed=0,
    )
    assert result.steps == 3


def _by_hand(model, batches):
    """Token-weighted cross-entropy and accuracy over `batches`, from the model's logits."""
    nll, right, counted = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            logp = torch.log_softmax(model(x).double(), dim=-1)
            for b in range(y.shape[0]):
                for i in range(y.shape[1]):
                    if y[b, i] != IGNORE_INDEX:
                        nll -= float(logp[b, i, y[b, i]])
                        right += int(logp[b, i].argmax() == y[b, i])
                        counted += 1
    return nll / counted, right / counted, counted


class Copier(torch.nn.Module):
    """Predicts the input token: logits 3 there and 0 elsewhere."""

    def forward(self, x):
        return 3.0 * F.one_hot(x, 64).float()  # (B, N, 64)


def test_evaluation_weighs_tokens_not_batches_at_the_eval_batch_size():
    model, data = Copier(), RandomData()
    cfg = TrainConfig(seq_len=6, batch_size=2, steps=1, eval_batches=3, eval_batch_size=5)
    scores = evaluate(model, data, cfg, CPU)
    assert data.val_shapes == [(5, 6, 3)]
    loss, accuracy, counted = _by_hand(model, RandomData().val_batches(5, 6, 3))
    assert counted == 5 * 6 * 3 - 5 * (0 + 1 + 2)
    assert 0.4 < accuracy < 0.6  # about the copied half: every batch has hits
    assert scores["val_tokens"] == counted
    assert scores["val_loss"] == pytest.approx(loss, rel=1e-5)
    assert scores["accuracy"] == pytest.approx(accuracy)
    assert scores["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert not model.training
