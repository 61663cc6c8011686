"""The multi-fidelity scheduler in the driver (`search.scheduler`, an in-process executor
that trains nothing): its settings refused when they cannot work, new trials stopping at the
first rung and baselines running through, promotions only from the top 1/eta of a rung and
resumed from the checkpoint they left, paused trials stopped PRUNED at the end with their
checkpoints deleted, repeats of a paused layout, and a driver that stopped (Ctrl-C or gone)
losing no paused trial."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState
from pydantic import ValidationError

from sqa_nas.search.asha import order
from sqa_nas.search.sections import Budget, EarlyStopping
from sqa_nas.search.space import parse_space
from sqa_nas.search.study import trial_counts
from sqa_nas.search.trial import TrialOutcome
from tests.search.test_driver import InProcess, _driver

PER_STEP = 2 * 32  # TINY's batch_size x seq_len
LADDER = [3 * PER_STEP, 9 * PER_STEP, 27 * PER_STEP]
SPACE = {
    "search": {"n_q_heads": ["H", "H/2", "H/4"], "n_kv_heads": ["H/2", "H/4", 1]},
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 8, "ffn_dim": 64, "seq_len": 32},
    "sampler": {"name": "random", "seed": 3},
    "budget": {
        "n_trials": 12,
        "train": {"tokens": LADDER[-1], "batch_size": 2, "eval_batches": 2},
        "throughput": {"batch_size": 2, "warmup": 1, "repeats": 1, "max_seconds": 1.0},
        "early_stopping": {"scheduler": "mo_asha", "eta": 3, "min_tokens": LADDER[0]},
    },
}


def _quality(params: dict) -> float:
    """A layout's final val_loss in this fake world: fixed per layout."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).digest()
    return 1.0 + digest[0] / 255


def fake_segment(job, resumed: list | None = None) -> TrialOutcome:
    """What a worker returns for a job: values at its rungs (a loss that falls with tokens,
    ranked alike at every rung), a checkpoint file where it is asked to save one."""
    segment = job.segment
    assert segment is not None, "a mo_asha study sends every job a segment"
    if segment.resume:
        assert Path(segment.resume).is_file(), "promoted from a checkpoint that is gone"
        (resumed if resumed is not None else []).append((job.number, segment.rung))

    def values(tokens):
        return {"val_loss": _quality(job.params) + 100 / tokens, "throughput_tokens_per_s": 5.0}

    rungs = [
        {"rung": i, "tokens": t, "values": values(t), "decision": "baseline"}
        for i, t in enumerate(segment.eval_at)
    ]
    end = "paused" if segment.save else "complete"
    rungs.append(
        {
            "rung": segment.rung,
            "tokens": segment.tokens,
            "values": values(segment.tokens),
            "decision": end,
        }
    )
    attrs = {"rungs": rungs, "metrics": {"val_loss": values(segment.tokens)["val_loss"]}}
    if segment.save:
        Path(segment.save).parent.mkdir(parents=True, exist_ok=True)
        Path(segment.save).write_bytes(b"weights")
        attrs["checkpoint"] = segment.save
    return TrialOutcome(
        job.number, "PAUSED" if segment.save else "COMPLETE", values(segment.tokens), attrs
    )


def _run(tmp_path, executor=None, **space):
    driver = _driver(tmp_path, executor or InProcess(fake_segment), **{**SPACE, **space})
    return driver, driver.run(driver.spec.budget.n_trials)


def test_the_ladder_and_settings_that_cannot_work():
    assert EarlyStopping(scheduler="mo_asha", eta=3, min_tokens=5).rungs(50) == [5, 15, 45, 50]
    assert EarlyStopping(scheduler="mo_asha", eta=2, min_tokens=10).rungs(40) == [10, 20, 40]
    bad = [
        ({"train": {"steps": 10}}, "train.tokens"),
        ({"train": {"tokens": 100}, "early_stopping": {"min_tokens": 100}}, "below"),
        ({"train": {"tokens": 100}}, "min_tokens"),
        ({"train": {"tokens": 100}, "seeds": 2, "early_stopping": {"min_tokens": 10}}, "seeds"),
    ]
    for budget, words in bad:
        stopping = {"scheduler": "mo_asha", **budget.pop("early_stopping", {})}
        with pytest.raises(ValidationError, match=words):
            Budget.model_validate({**budget, "early_stopping": stopping})
    with pytest.raises(ValidationError, match="eta"):
        EarlyStopping.model_validate({"scheduler": "mo_asha", "eta": 1})
    with pytest.raises(Exception, match="add val_loss"):
        parse_space({**SPACE, "objectives": ["throughput_tokens_per_s"]})


class Checking(InProcess):
    """Checks every promotion as it is submitted: the trial lies in the top floor(n/eta) of
    every trial at its rung at that moment (ASHA's rule: asynchronous, never revoked, so
    the promoted may outnumber floor(n/eta) of the final rung)."""

    def __init__(self, outcome):
        super().__init__(outcome)
        self.driver, self.checked = None, 0

    def submit(self, job):
        if job.segment.resume:
            rung = job.segment.rung - 1
            at = [
                (t.number, r)
                for t in self.driver.study.get_trials()
                for r in t.user_attrs.get("rungs", [])
                if r["rung"] == rung
            ]
            points = [
                (r["values"]["val_loss"], r["values"]["throughput_tokens_per_s"]) for _, r in at
            ]
            top = [at[i][0] for i in order(points, ["minimize", "maximize"])][: len(at) // 3]
            assert job.number in top, (job.number, rung, top)
            self.checked += 1
        super().submit(job)


def test_trials_climb_the_ladder_only_from_the_top_of_a_rung(tmp_path):
    resumed: list = []
    executor = Checking(lambda job: fake_segment(job, resumed))
    driver = _driver(tmp_path, executor, **SPACE)
    executor.driver = driver
    result = driver.run(12)
    study = result.study
    trials = study.get_trials()
    assert result.finished == 12 and not [t for t in trials if t.state == TrialState.RUNNING]
    for t in trials:
        rungs = t.user_attrs["rungs"]
        assert [r["rung"] for r in rungs] == list(range(len(rungs)))  # in order, none skipped
        if t.user_attrs.get("seed_variant"):  # baselines: the whole budget, ranked on the way
            assert [r["decision"] for r in rungs] == ["baseline", "baseline", "complete"]
        elif t.state == TrialState.COMPLETE:
            assert [r["decision"] for r in rungs] == ["promoted", "promoted", "complete"]
        else:
            assert t.state == TrialState.PRUNED and rungs[-1]["decision"] == "stopped"
            assert all(r["decision"] == "promoted" for r in rungs[:-1])
            assert "stopped at rung" in t.user_attrs["fail_reason"]
    # Every promotion resumed the checkpoint its rung left, and was checked as it was sent.
    promoted = {
        (t.number, r["rung"])
        for t in trials
        for r in t.user_attrs["rungs"]
        if r["decision"] == "promoted"
    }
    assert sorted((n, k - 1) for n, k in resumed) == sorted(promoted)
    assert executor.checked == len(promoted) >= 3  # the ladder was climbed
    assert any(k == 1 for _, k in promoted)  # to the top rung too
    assert not list(Path(tmp_path / "checkpoints").rglob("*.pt"))  # all deleted at the end
    assert trial_counts(study)["pruned"] >= 1


def test_a_stopped_driver_loses_no_paused_trial(tmp_path):
    """Out of time (or gone): paused trials stay paused with their checkpoints; a promotion
    cut short is paused again; the next run finishes the ladder."""
    driver, result = _run(tmp_path, **{"budget": {**SPACE["budget"], "n_trials": 6}})
    study = result.study
    # Stand in for a driver that died: trials paused at rung 0 with their checkpoints, one
    # of them promoted by that driver when it died.
    paused = [t for t in study.get_trials() if t.state == TrialState.PRUNED][:2]
    assert len(paused) == 2
    storage = driver.storage
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a driver of this machine that is gone
    dead = {"host": socket.gethostname(), "pid": child.pid, "id": "dead", "proc_start": 0}
    for i, t in enumerate(paused):
        new = study.ask({k: d for k, d in t.distributions.items()})
        rungs = [dict(t.user_attrs["rungs"][0], decision="promoted" if i else "paused")]
        path = tmp_path / "checkpoints" / "drv" / f"trial-{new.number}-rung-0.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
        for key, value in {
            "rungs": rungs,
            "checkpoint": str(path),
            "driver": dead,
            "layout": f"elsewhere-{i}",
        }.items():
            storage.set_trial_user_attr(new._trial_id, key, value)
    before = len(study.get_trials())
    rerun = _driver(
        tmp_path,
        InProcess(fake_segment),
        **{**SPACE, "budget": {**SPACE["budget"], "n_trials": 8}},
    )
    rerun.run(8)
    trials = rerun.study.get_trials()
    revived = trials[before - 2 : before]
    assert all(t.state != TrialState.RUNNING for t in trials)
    assert not any(t.user_attrs.get("reaped") for t in revived)  # kept, not failed
    assert "paused again" in rerun.text.getvalue()
    assert not list(Path(tmp_path / "checkpoints").rglob("*.pt"))


def test_ctrl_c_pauses_a_promotion_in_flight_again(tmp_path):
    class InterruptOnPromotion(InProcess):
        def poll(self, timeout):
            if any(r.job.segment.resume for r in self.running.values()):
                raise KeyboardInterrupt
            return super().poll(timeout)

    driver, result = _run(tmp_path, InterruptOnPromotion(fake_segment))
    assert result.interrupted
    running = [t for t in result.study.get_trials() if t.state == TrialState.RUNNING]
    assert running and all(t.user_attrs["rungs"][-1]["decision"] == "paused" for t in running)
    assert all(Path(t.user_attrs["checkpoint"]).is_file() for t in running)
    assert not any(t.user_attrs.get("interrupted") for t in running)
    # The same command resumes: the paused trials are promoted or stopped, nothing lost.
    again = _driver(tmp_path, InProcess(fake_segment), **SPACE)
    assert again.run(12).finished == 12
    assert trial_counts(again.study)["running"] == 0


def test_a_repeat_of_a_paused_layout_is_not_trained(tmp_path):
    seen = []

    def once_per_layout(job):
        seen.append((json.dumps(job.params, sort_keys=True), job.segment.rung))
        return fake_segment(job)

    driver, result = _run(
        tmp_path, InProcess(once_per_layout), search={"n_q_heads": ["H"], "n_kv_heads": ["H/2", 1]}
    )
    assert len(seen) == len(set(seen))  # no layout trained twice to the same rung
    repeats = [t for t in result.study.get_trials() if "duplicate_of" in t.user_attrs]
    assert all(t.state == TrialState.FAIL for t in repeats if t.user_attrs.get("fail_reason"))
