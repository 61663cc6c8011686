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

import optuna
import pytest
from optuna.trial import TrialState
from pydantic import ValidationError

from experiments.common import SEARCH_SPACES
from sqa_nas.search.asha import order
from sqa_nas.search.scheduler import Scheduler, Segment, checkpoint_folder
from sqa_nas.search.sections import Budget, EarlyStopping
from sqa_nas.search.space import load_space, parse_space
from sqa_nas.search.study import trial_counts
from sqa_nas.search.trial import TrialOutcome
from tests.search.test_driver import InProcess, _driver
from tests.search.test_search import TINY

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
    # Training stops at whole steps: a rung that ends in the full budget's step is it.
    assert EarlyStopping(scheduler="mo_asha", eta=3, min_tokens=5).rungs(50, 10) == [5, 15, 50]
    assert EarlyStopping(scheduler="mo_asha", eta=3, min_tokens=5).rungs(50, 4) == [5, 15, 45, 50]


def test_a_ladder_of_200m_tokens_in_steps_of_65536_has_three_rungs():
    """paper_dense at 200M tokens with min_tokens 200M // 9: 199,999,998 tokens end in step
    3,052, as 200M do (the H200 study of issue 19 trained both)."""
    data = load_space(SEARCH_SPACES / "paper_dense.yaml").model_dump(mode="json")
    data["budget"]["train"].update(tokens=200_000_000, batch_size=64)
    data["budget"]["early_stopping"] = {"scheduler": "mo_asha", "min_tokens": 22_222_222}
    spec = parse_space(data)
    assert spec.model.seq_len == 1024
    assert spec.ladder() == [22_222_222, 66_666_666, 200_000_000]
    data["budget"]["early_stopping"] = {"scheduler": "none"}
    assert parse_space(data).ladder() == []
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


# ------------------------------------------------------- the scheduler's decisions, unit by unit
def _scheduler(tmp_path) -> Scheduler:
    spec = parse_space({**TINY, "study": "drv", **SPACE})
    study = optuna.create_study(directions=[str(d) for d in spec.directions])
    return Scheduler(spec, study, study._storage, tmp_path / "ckpt", lambda line: None)


def _at(s: Scheduler, losses: list[float], decisions: list[str], state=None, **attrs) -> int:
    """A trial with one rung entry per loss (rungs 0, 1, ...); RUNNING unless `state`. Its
    checkpoint, when paused, is a file that is there."""
    trial = s.study.ask()
    rungs = [
        {
            "rung": i,
            "tokens": LADDER[i],
            "values": {"val_loss": loss, "throughput_tokens_per_s": 5.0},
            "decision": decision,
        }
        for i, (loss, decision) in enumerate(zip(losses, decisions))
    ]
    trial.set_user_attr("rungs", rungs)
    if decisions[-1] == "paused":
        path = s.checkpoint_path(trial.number, len(rungs) - 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
        trial.set_user_attr("checkpoint", str(path))
        trial.set_user_attr("metrics", {"val_loss": losses[-1]})
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if state is not None:
        values = [losses[-1], 5.0] if state == TrialState.COMPLETE else None
        s.study.tell(trial.number, values, state=state)
    return trial.number


def _ladder(s: Scheduler) -> dict[str, int]:
    """Rung 0: six trials, top two (6 // 3) are d (promoted) and a (paused); rung 1: three
    trials, the top one d (paused). b, c stopped at rung 0; e complete; f stopped at rung 1."""
    pruned = TrialState.PRUNED
    return {
        "a": _at(s, [1.0], ["paused"]),
        "b": _at(s, [3.0], ["stopped"], pruned),
        "c": _at(s, [3.1], ["stopped"], pruned),
        "d": _at(s, [0.9, 0.5], ["promoted", "paused"]),
        "e": _at(s, [2.0, 0.6, 0.3], ["promoted", "promoted", "complete"], TrialState.COMPLETE),
        "f": _at(s, [2.1, 0.9], ["promoted", "stopped"], pruned),
    }


def test_the_highest_rung_is_promoted_first_to_the_last_rung_without_a_checkpoint(tmp_path):
    s = _scheduler(tmp_path)
    n = _ladder(s)
    trial, segment = s.promote(set(), {"id": "me"})
    assert trial.number == n["d"]
    assert segment == Segment(
        2,
        LADDER[2],
        resume=str(s.checkpoint_path(n["d"], 1)),
        save=None,  # the last rung: nothing continues from it
        carry={"val_loss": 0.5},
    )
    stored = s.study.trials[n["d"]].user_attrs
    assert stored["rungs"][-1]["decision"] == "promoted" and stored["driver"] == {"id": "me"}
    # d is in flight now: a is next, and saves a checkpoint at the middle rung.
    trial, segment = s.promote({n["d"]}, {"id": "me"})
    assert trial.number == n["a"]
    assert (segment.rung, segment.save) == (1, str(s.checkpoint_path(n["a"], 1)))


def test_a_trial_in_flight_here_is_not_promoted_again(tmp_path):
    s = _scheduler(tmp_path)
    n = _ladder(s)
    trial, _ = s.promote({n["d"]}, {"id": "me"})  # d's stored rung still says paused
    assert trial.number == n["a"]


def test_failed_trials_and_repeats_take_no_place_at_a_rung(tmp_path):
    s = _scheduler(tmp_path)
    n = _ladder(s)
    # Better than everyone at rung 0 and 1: counted, they would push a and d out of the top.
    _at(s, [0.1], ["promoted"], TrialState.FAIL)
    _at(s, [0.1, 0.1], ["promoted", "promoted"], TrialState.COMPLETE, duplicate_of=n["e"])
    trial, _ = s.promote(set(), {"id": "me"})
    assert trial.number == n["d"]
    trial, _ = s.promote({n["d"]}, {"id": "me"})
    assert trial.number == n["a"]


def test_first_segments_stop_at_the_first_rung_and_baselines_run_through(tmp_path):
    s = _scheduler(tmp_path)
    assert s.first_segment(4, baseline=False) == Segment(
        0, LADDER[0], save=str(tmp_path / "ckpt" / "trial-4-rung-0.pt")
    )
    assert s.first_segment(5, baseline=True) == Segment(2, LADDER[2], eval_at=LADDER[:2])


def test_checkpoints_go_where_the_space_says_else_beside_the_study(tmp_path):
    spec = parse_space({**TINY, "study": "drv", **SPACE})
    assert (
        checkpoint_folder(spec, f"sqlite:///{tmp_path}/s.db") == tmp_path / "checkpoints" / "drv"
    )
    assert checkpoint_folder(spec, "postgresql://db/x") == Path("runs/drv/checkpoints")
    stopping = {**SPACE["budget"]["early_stopping"], "checkpoint_dir": "~/ckpt"}
    chosen = parse_space(
        {
            **TINY,
            "study": "drv",
            **SPACE,
            "budget": {**SPACE["budget"], "early_stopping": stopping},
        }
    )
    assert checkpoint_folder(chosen, "sqlite:///s.db") == Path("~/ckpt").expanduser()


def test_a_later_segment_adds_its_timings_and_rungs_to_the_earlier_ones(tmp_path):
    s = _scheduler(tmp_path)
    number = _at(s, [1.0], ["paused"], timings={"train_s": 2.0, "train_window": [0.0, 2.0]})
    t = s.study.trials[number]
    again = {"rung": 0, "tokens": LADDER[0], "values": {"val_loss": 0.9}, "decision": "promoted"}
    new = {"rung": 1, "tokens": LADDER[1], "values": {"val_loss": 0.8}, "decision": "paused"}
    attrs = {"rungs": [again, new], "timings": {"train_s": 3.0, "train_window": [5.0, 8.0]}}
    out = s.merged(t, attrs)
    assert out["rungs"] == [again, new]  # rung 0 run again: the new entry replaces it
    assert out["timings"] == {
        "train_s": 5.0,
        "train_window": [0.0, 2.0],
        "train_windows": [[0.0, 2.0], [5.0, 8.0]],
    }


def test_pausing_again_at_the_same_checkpoint_keeps_it(tmp_path):
    s = _scheduler(tmp_path)
    number = _at(s, [1.0], ["paused"])
    t = s.study.trials[number]
    path = Path(t.user_attrs["checkpoint"])
    s.paused(t, str(path))  # the same rung run again after its worker died
    assert path.is_file()
    later = s.checkpoint_path(number, 1)
    later.write_bytes(b"weights")
    s.paused(s.study.trials[number], str(later))
    assert not path.exists() and later.is_file()  # the rung before: no longer needed


def test_rescue_keeps_a_trial_at_a_rung_with_or_without_its_checkpoint(tmp_path):
    s = _scheduler(tmp_path)
    kept = _at(s, [1.0], ["paused"])
    s._set(
        s.study.trials[kept],
        rungs=[{**s.study.trials[kept].user_attrs["rungs"][0], "decision": "promoted"}],
    )
    assert s.rescue(s.study.trials[kept])
    assert s.study.trials[kept].user_attrs["rungs"][-1]["decision"] == "paused"
    moved = _at(s, [1.0], ["paused"])  # its checkpoint stayed on another machine
    Path(s.study.trials[moved].user_attrs["checkpoint"]).unlink()
    assert s.rescue(s.study.trials[moved])  # keeps its rung value: not trained again
    first = s.study.ask()  # in its first segment: no rung yet
    assert not s.rescue(s.study.trials[first.number])  # failed and queued again


def test_a_promotion_whose_checkpoint_is_gone_trains_from_the_start(tmp_path):
    s = _scheduler(tmp_path)
    n = _ladder(s)
    gone = s.study.trials[n["d"]].user_attrs["checkpoint"]
    Path(gone).unlink()
    lines: list[str] = []
    s.log = lines.append
    trial, segment = s.promote(set(), {"id": "me"})
    assert trial.number == n["d"]
    assert segment == Segment(2, LADDER[2], restart=True, save=None, carry={"val_loss": 0.5})
    assert segment.continues and gone in lines[0] and "from the start" in lines[0]
