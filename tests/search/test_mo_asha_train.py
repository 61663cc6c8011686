"""Multi-fidelity trials that really train (CPU): a trial trained rung by rung through its
checkpoints ends exactly where one trained straight through ends, a baseline is evaluated
at every rung on its way, a checkpoint that is gone fails the trial naming it, and a search
through the command line climbs the ladder and leaves no checkpoint behind."""

from __future__ import annotations

import torch
import yaml
from optuna.trial import TrialState

from sqa_nas.cli import main as cli_main
from sqa_nas.search.records import load_study
from sqa_nas.search.scheduler import Segment
from sqa_nas.search.space import parse_space
from sqa_nas.search.trial import TrialJob, run_trial

PER_STEP = 2 * 32
LADDER = [3 * PER_STEP, 9 * PER_STEP, 27 * PER_STEP]
SPACE = {
    "study": "climb",
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "ffn_dim": 64, "seq_len": 32},
    "search": {"n_q_heads": ["H", "H/2", "H/4"], "n_kv_heads": ["H", "H/2", 1]},
    "objectives": ["val_loss"],
    "seed_trials": ["MHA"],
    "sampler": {"name": "random", "seed": 1},
    "budget": {
        "n_trials": 7,
        "train": {"tokens": LADDER[-1], "batch_size": 2, "eval_batches": 2, "warmup_steps": 2},
        "early_stopping": {"scheduler": "mo_asha", "eta": 3, "min_tokens": LADDER[0]},
    },
    "execution": {"device": "cpu", "workers": 1},
}
CPU = torch.device("cpu")
JOBS = {**SPACE, "seed_trials": ["MHA", "SQA"]}  # both variants' params, for single jobs


def _job(spec, segment, number=0, variant="SQA"):
    params = dict(spec.seed_params())[variant]
    return TrialJob(number, params, spec.model_dump(mode="json"), None, segment=segment)


def test_rung_by_rung_through_checkpoints_equals_straight_through(tmp_path):
    spec = parse_space(JOBS)
    whole = run_trial(_job(spec, Segment(2, LADDER[-1])), device=CPU)
    assert whole.state == "COMPLETE", whole.attrs.get("fail_reason")
    saves = [str(tmp_path / f"rung-{k}.pt") for k in range(2)]
    outcome = run_trial(_job(spec, Segment(0, LADDER[0], save=saves[0])), device=CPU)
    assert outcome.state == "PAUSED" and outcome.attrs["checkpoint"] == saves[0]
    assert [r["decision"] for r in outcome.attrs["rungs"]] == ["paused"]
    carry = outcome.attrs["metrics"]
    outcome = run_trial(
        _job(spec, Segment(1, LADDER[1], resume=saves[0], save=saves[1], carry=carry)),
        device=CPU,
    )
    assert outcome.state == "PAUSED", outcome.attrs.get("fail_reason")
    carry = outcome.attrs["metrics"]
    last = run_trial(_job(spec, Segment(2, LADDER[2], resume=saves[1], carry=carry)), device=CPU)
    assert last.state == "COMPLETE", last.attrs.get("fail_reason")
    assert last.values["val_loss"] == whole.values["val_loss"]  # exactly: bit for bit
    assert last.attrs["curve"] == whole.attrs["curve"]
    assert last.attrs["metrics"]["train_tokens"] == whole.attrs["metrics"]["train_tokens"]
    assert last.attrs["rungs"][-1] | {"values": None} == {
        "rung": 2,
        "tokens": whole.attrs["metrics"]["train_tokens"],
        "values": None,
        "decision": "complete",
    }


def test_a_restart_from_the_start_ends_where_the_checkpoint_would_have(tmp_path):
    """A study moved to another machine: the trial paused at rung 0 there, its checkpoint
    stayed behind; promoted here, it trains again from step 0 to rung 1, keeping the
    throughput measured in its first segment."""
    spec = parse_space(JOBS)
    save = str(tmp_path / "rung-0.pt")
    first = run_trial(_job(spec, Segment(0, LADDER[0], save=save)), device=CPU)
    carry = {**first.attrs["metrics"], "throughput_tokens_per_s": 123.0}
    resumed = run_trial(_job(spec, Segment(1, LADDER[1], resume=save, carry=carry)), device=CPU)
    again = run_trial(_job(spec, Segment(1, LADDER[1], restart=True, carry=carry)), device=CPU)
    assert again.state == resumed.state == "COMPLETE", again.attrs.get("fail_reason")
    assert again.values["val_loss"] == resumed.values["val_loss"]  # bit for bit on the CPU
    metrics = again.attrs["metrics"]
    assert metrics["throughput_tokens_per_s"] == 123.0  # carried, not timed again
    assert metrics["train_tokens"] == resumed.attrs["metrics"]["train_tokens"]
    assert again.attrs["rungs"][-1]["rung"] == 1


def test_a_baseline_is_evaluated_at_every_rung_on_its_way():
    spec = parse_space(JOBS)
    whole = run_trial(_job(spec, None, variant="MHA"), device=CPU)
    through = run_trial(
        _job(spec, Segment(2, LADDER[-1], eval_at=LADDER[:-1]), variant="MHA"), device=CPU
    )
    rungs = through.attrs["rungs"]
    assert [(r["rung"], r["decision"]) for r in rungs] == [
        (0, "baseline"),
        (1, "baseline"),
        (2, "complete"),
    ]
    assert [r["tokens"] for r in rungs] == LADDER
    losses = [r["values"]["val_loss"] for r in rungs]
    assert losses[0] > losses[-1] and len(set(losses)) == 3
    assert through.values["val_loss"] == whole.values["val_loss"]  # evaluating changed nothing


def test_a_checkpoint_that_is_gone_fails_the_trial_naming_it(tmp_path):
    spec = parse_space(JOBS)
    gone = str(tmp_path / "elsewhere" / "trial-3-rung-0.pt")
    outcome = run_trial(_job(spec, Segment(1, LADDER[1], resume=gone, carry={})), device=CPU)
    assert outcome.state == "FAIL" and gone in outcome.attrs["fail_reason"]


def test_a_search_climbs_the_ladder_and_cleans_up(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    storage = f"sqlite:///{tmp_path}/runs/climb/study.db"
    assert cli_main(["search", str(path), "--storage", storage]) == 0
    study = load_study("climb", storage)
    trials = study.get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    decisions = [r["decision"] for t in trials for r in t.user_attrs.get("rungs", [])]
    assert "promoted" in decisions and "stopped" in decisions
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(t.user_attrs["metrics"]["train_tokens"] >= LADDER[-1] for t in complete)
    assert not list((tmp_path / "runs").rglob("*.pt"))  # every checkpoint deleted
    out = capsys.readouterr().out  # the final summary: one line per rung
    assert f"rung 0 ({LADDER[0]:,} tokens): " in out and f"rung 2 ({LADDER[2]:,} tokens)" in out


def test_a_trial_bounded_by_seconds_still_trains_in_one_piece():
    """Segments are for token budgets; a seconds-bounded trial trains as it always did."""
    budget = {**SPACE["budget"], "train": {"seconds": 0.5, "batch_size": 2, "eval_batches": 2}}
    spec = parse_space({**JOBS, "budget": {**budget, "early_stopping": {"scheduler": "none"}}})
    outcome = run_trial(_job(spec, None), device=CPU)
    assert outcome.state == "COMPLETE", outcome.attrs.get("fail_reason")
    assert outcome.attrs["metrics"]["train_steps"] > 0 and "rungs" not in outcome.attrs
