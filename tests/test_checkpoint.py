"""Stopping a run and continuing it (sqa_nas.train's stop_step / resume) through a
checkpoint file (sqa_nas.checkpoint): on the CPU the continued run is bitwise the
unstopped one (weights, curve, learning rates), the file round-trips its dtypes onto either
device, and a file that is missing, damaged, foreign or carrying pickled code is refused
with the path in the message."""

from __future__ import annotations

import pytest
import torch

from sqa_nas import checkpoint
from sqa_nas.checkpoint import CheckpointError
from sqa_nas.data import load_dataset
from sqa_nas.model import ModelConfig, build_model
from sqa_nas.train import TrainConfig, TrainResult, train

pytestmark = pytest.mark.usefixtures("seeded")

CPU = torch.device("cpu")
CONFIG = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, ffn_dim=64)
# 120 steps: the curve keeps every 2nd (120 // CURVE_POINTS), so a stop at an odd step
# lands between two curve points; warm-up and cosine both cross the stops below.
CFG = TrainConfig(seq_len=16, batch_size=4, steps=120, warmup_steps=30, lr=3e-3)
SEED = 11


@pytest.fixture(scope="module")
def data():
    return load_dataset({"kind": "embedded"})


@pytest.fixture(scope="module")
def unstopped(data):
    """The reference: one run of 120 steps, with the learning rate of every step."""
    model = build_model(CONFIG, seed=0)
    with record_lrs() as lrs:
        result = train(model, data, CFG, CPU, SEED)
    return model, result, lrs


class record_lrs:
    """Record the learning rate of every optimizer step taken inside the block."""

    def __enter__(self) -> list[float]:
        self.lrs: list[float] = []
        self.real = torch.optim.AdamW.step
        lrs, real = self.lrs, self.real

        def step(opt, *args, **kwargs):
            lrs.append(opt.param_groups[0]["lr"])
            return real(opt, *args, **kwargs)

        torch.optim.AdamW.step = step  # type: ignore[method-assign]
        return self.lrs

    def __exit__(self, *exc) -> None:
        torch.optim.AdamW.step = self.real  # type: ignore[method-assign]


def in_segments(data, stops: list[int], folder) -> tuple[torch.nn.Module, TrainResult, list]:
    """Train 0 -> stops[0] -> ... -> the end; after each segment save a checkpoint and
    continue in a FRESH model (another init seed: its weights must come from the file)."""
    model = build_model(CONFIG, seed=0)
    lrs: list[float] = []
    with record_lrs() as seen:
        result = train(model, data, CFG, CPU, SEED, stop_step=stops[0])
    lrs += seen
    for i, stop in enumerate([*stops[1:], None]):
        path = checkpoint.save(folder / f"seg{i}.pt", model, result.state, {"segment": i})
        weights, state, meta = checkpoint.load(path, CPU)
        assert meta == {"segment": i}
        model = build_model(CONFIG, seed=100 + i)
        model.load_state_dict(weights)
        with record_lrs() as seen:
            result = train(model, data, CFG, CPU, SEED, stop_step=stop, resume=state)
        lrs += seen
    return model, result, lrs


@pytest.mark.parametrize("stops", [[37], [1, 64], [29, 30, 95]])
def test_a_stopped_and_resumed_run_is_bitwise_the_unstopped_one(data, unstopped, stops, tmp_path):
    whole, expected, expected_lrs = unstopped
    model, result, lrs = in_segments(data, stops, tmp_path)
    assert (result.steps, result.tokens) == (expected.steps, expected.tokens) == (120, 7680)
    assert result.curve == expected.curve
    assert [p[0] for p in result.curve] == [1, *range(2, 121, 2)]
    assert lrs == expected_lrs and len(lrs) == 120
    a, b = model.state_dict(), whole.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert result.tokens_before == stops[-1] * 64  # this call's own tokens per second
    assert result.tokens_per_s == pytest.approx((7680 - stops[-1] * 64) / result.seconds)


def test_a_state_from_the_fused_gpu_optimizer_continues_on_the_cpu_one(data, unstopped, tmp_path):
    # A GPU run saves AdamW's groups with fused=True; resumed on the CPU, the CPU's own
    # implementation must run (the fused CPU kernel rounds differently), as in the
    # unstopped CPU run.
    whole, expected, _ = unstopped
    model = build_model(CONFIG, seed=0)
    state = train(model, data, CFG, CPU, SEED, stop_step=37).state
    for group in state.optimizer["param_groups"]:
        group["fused"] = True
    path = checkpoint.save(tmp_path / "gpu.pt", model, state, {})
    weights, state, _ = checkpoint.load(path, CPU)
    fresh = build_model(CONFIG, seed=1)
    fresh.load_state_dict(weights)
    result = train(fresh, data, CFG, CPU, SEED, resume=state)
    assert result.curve == expected.curve
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), whole.parameters()))


def test_a_stop_returns_the_state_to_continue_from(data):
    model = build_model(CONFIG, seed=0)
    result = train(model, data, CFG, CPU, SEED, stop_step=37)
    state = result.state
    assert state is not None
    assert (state.step, state.tokens, state.seed, state.planned_steps) == (37, 37 * 64, SEED, 120)
    assert state.curve == result.curve and state.curve[-1][0] == 36
    opt = state.optimizer
    assert len(opt["state"]) == len(list(model.parameters()))
    assert all(float(s["step"]) == 37 for s in opt["state"].values())
    # resuming leaves the state it started from untouched (it loads a copy)
    before = {k: v["exp_avg"].clone() for k, v in opt["state"].items()}
    train(model, data, CFG, CPU, SEED, stop_step=40, resume=state)
    assert all(float(s["step"]) == 37 for s in opt["state"].values())
    assert all(torch.equal(opt["state"][k]["exp_avg"], v) for k, v in before.items())


def test_a_resume_told_to_stop_where_it_stands_trains_nothing(data):
    model = build_model(CONFIG, seed=0)
    state = train(model, data, CFG, CPU, SEED, stop_step=5).state
    assert state is not None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    again = train(model, data, CFG, CPU, SEED, stop_step=5, resume=state)
    assert (again.steps, again.tokens, again.tokens_before) == (5, 320, 320)
    assert again.curve == state.curve
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_run_bounded_by_tokens_first_keeps_its_token_schedule_across_a_stop(data):
    # 120 steps or 50 x 64 tokens: the tokens end it first, and the state says so.
    cfg = TrainConfig(seq_len=16, batch_size=4, steps=120, tokens=50 * 64, warmup_steps=5)
    model = build_model(CONFIG, seed=0)
    state = train(model, data, cfg, CPU, SEED, stop_step=20).state
    assert state is not None and state.planned_steps == cfg.planned_steps == 50
    result = train(model, data, cfg, CPU, SEED, resume=state)
    assert (result.steps, result.tokens) == (50, 50 * 64)


def test_resume_refuses_what_would_not_continue_the_same_run(data):
    model = build_model(CONFIG, seed=0)
    state = train(model, data, CFG, CPU, SEED, stop_step=5).state
    with pytest.raises(ValueError, match="seed 11 with seed 12"):
        train(model, data, CFG, CPU, 12, resume=state)
    longer = TrainConfig(seq_len=16, batch_size=4, steps=200, warmup_steps=30)
    with pytest.raises(ValueError, match="planned for 120 steps .* planned for 200"):
        train(model, data, longer, CPU, SEED, resume=state)
    wider = TrainConfig(seq_len=16, batch_size=8, steps=120, warmup_steps=30)
    with pytest.raises(ValueError, match="320 tokens in 5 steps .* seq_len = 128 tokens"):
        train(model, data, wider, CPU, SEED, resume=state)
    with pytest.raises(ValueError, match="stop_step=3 is before the resumed step 5"):
        train(model, data, CFG, CPU, SEED, stop_step=3, resume=state)
    timed = TrainConfig(seq_len=16, batch_size=4, steps=120, seconds=5.0)
    for kwargs in ({"stop_step": 3}, {"resume": state}):
        with pytest.raises(ValueError, match="bounded by seconds .* steps or tokens"):
            train(model, data, timed, CPU, SEED, **kwargs)  # type: ignore[arg-type]


def test_save_load_keeps_dtypes_and_maps_onto_the_device(data, tmp_path):
    model = build_model(CONFIG, seed=0).to(torch.bfloat16)
    model.norm.weight.data = model.norm.weight.data.float()  # two dtypes in one model
    state = train(build_model(CONFIG, seed=0), data, CFG, CPU, SEED, stop_step=3).state
    path = checkpoint.save(tmp_path / "a" / "b" / "t.pt", model, state, {"rung": 0})
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["t.pt"]  # no temp
    weights, loaded, _ = checkpoint.load(path, "cpu")
    for name, tensor in model.state_dict().items():
        assert weights[name].dtype == tensor.dtype and torch.equal(weights[name], tensor)
    assert weights["norm.weight"].dtype == torch.float32
    assert weights["embed.weight"].dtype == torch.bfloat16
    assert _same_state(loaded, state)
    if torch.cuda.is_available():  # written on the CPU, read onto a GPU
        weights, loaded, _ = checkpoint.load(path, "cuda")
        assert all(t.is_cuda for t in weights.values())
        assert all(v.is_cuda for s in loaded.optimizer["state"].values() for v in s.values())


def _same_state(a, b) -> bool:
    sa, sb = a.optimizer["state"], b.optimizer["state"]
    return (
        (a.step, a.tokens, a.curve, a.seed, a.planned_steps)
        == (b.step, b.tokens, b.curve, b.seed, b.planned_steps)
        and a.optimizer["param_groups"] == b.optimizer["param_groups"]
        and sa.keys() == sb.keys()
        and all(torch.equal(sa[k][n], sb[k][n]) for k in sa for n in sa[k])
    )


def test_save_replaces_an_older_file_and_delete_is_idempotent(data, tmp_path):
    model = build_model(CONFIG, seed=0)
    first = train(model, data, CFG, CPU, SEED, stop_step=2).state
    second = train(model, data, CFG, CPU, SEED, stop_step=4, resume=first).state
    path = tmp_path / "t.pt"
    checkpoint.save(path, model, first, {"rung": 0})
    checkpoint.save(path, model, second, {"rung": 1})
    _, state, meta = checkpoint.load(path, CPU)
    assert (state.step, meta) == (4, {"rung": 1})
    checkpoint.delete(path)
    assert not path.exists()
    checkpoint.delete(path)  # already gone: no error
    with pytest.raises(TypeError, match="JSON-able"):
        checkpoint.save(path, model, second, {"when": object()})
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_checkpoint_and_no_temporary_file(
    data, tmp_path, monkeypatch
):
    model = build_model(CONFIG, seed=0)
    state = train(model, data, CFG, CPU, SEED, stop_step=2).state
    path = checkpoint.save(tmp_path / "t.pt", model, state, {"rung": 0})

    def disk_full(obj, f) -> None:
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        checkpoint.save(path, model, state, {"rung": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["t.pt"]
    monkeypatch.undo()
    assert checkpoint.load(path, CPU)[2] == {"rung": 0}


def test_missing_damaged_and_foreign_files_raise_checkpoint_error(data, tmp_path):
    model = build_model(CONFIG, seed=0)
    state = train(model, data, CFG, CPU, SEED, stop_step=2).state
    good = checkpoint.save(tmp_path / "good.pt", model, state, {})
    with pytest.raises(CheckpointError, match="missing.pt: no such file"):
        checkpoint.load(tmp_path / "missing.pt", CPU)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: unreadable"):
        checkpoint.load(truncated, CPU)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="notes.pt: unreadable"):
        checkpoint.load(text, CPU)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, other)
    with pytest.raises(CheckpointError, match="other.pt: not an sqa-nas checkpoint"):
        checkpoint.load(other, CPU)
    torch.save({"format": 2, "model": {}}, other)
    with pytest.raises(CheckpointError, match="other.pt: format 2; this version reads 1"):
        checkpoint.load(other, CPU)
    torch.save({"format": 1, "model": {}, "state": {"step": 3}, "meta": {}}, other)
    with pytest.raises(CheckpointError, match="other.pt: its state is incomplete"):
        checkpoint.load(other, CPU)
    payload = torch.load(good, weights_only=True)
    payload["state"]["step"] = "three"  # every key there, one value not a number
    torch.save(payload, other)
    with pytest.raises(CheckpointError, match=r"other.pt: .* malformed \(ValueError"):
        checkpoint.load(other, CPU)


class Planted:
    """An object whose unpickling runs code: it creates the file `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_runs_no_pickled_code(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "planted.pt"
    torch.save({"format": 1, "model": {}, "state": {}, "meta": Planted(str(marker))}, path)
    with pytest.raises(CheckpointError, match="planted.pt: unreadable"):
        checkpoint.load(path, CPU)
    assert not marker.exists()
    with open(path, "rb") as f:  # the file does carry code: plain unpickling runs it
        torch.load(f, weights_only=False)
    assert marker.exists()
