"""The search end to end on the CPU: trials stored with both objectives, resume, crash
recovery (SIGKILL), Ctrl-C, plain-Optuna compatibility, and user text data."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from sqa_nas.cli import main
from sqa_nas.search.records import load_study, trial_records
from sqa_nas.search.storage import default_storage
from sqa_nas.search.study_attrs import read_study_attrs

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "study": "tiny",
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "ffn_dim": 64, "seq_len": 32},
    "search": {"n_q_heads": ["H", "H/2"], "n_kv_heads": ["H/2", 1]},
    "objectives": ["val_loss", "throughput_tokens_per_s"],
    "seed_trials": ["MHA", "SQA"],
    "budget": {
        "n_trials": 4,
        "train": {"steps": 4, "batch_size": 2, "eval_batches": 2},
        "throughput": {"batch_size": 2, "warmup": 1, "repeats": 1, "max_seconds": 1.0},
    },
}


def ladder_space(study: str, n_trials: int) -> dict:
    """TINY under MO-ASHA: rungs at 3, 9 and 27 steps' tokens, val_loss only, random draws."""
    per_step = TINY["budget"]["train"]["batch_size"] * TINY["model"]["seq_len"]
    budget = {
        **TINY["budget"],
        "n_trials": n_trials,
        "train": {"tokens": 27 * per_step, "batch_size": 2, "eval_batches": 2},
        "early_stopping": {"scheduler": "mo_asha", "eta": 3, "min_tokens": 3 * per_step},
    }
    return {
        **TINY,
        "study": study,
        "objectives": ["val_loss"],
        "budget": budget,
        "sampler": {"name": "random", "seed": 0},
    }


def _write(tmp_path: Path, space: dict, name="space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(space))
    return path


def _run(tmp_path, *args, **kw):
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        **kw,
    )


def _states(study):
    return [t.state.name for t in study.get_trials()]


def test_search_stores_trials_and_resumes_without_repeating(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = _write(tmp_path, TINY)
    assert main(["search", str(space)]) == 0
    out = capsys.readouterr().out
    assert "Pareto front of tiny" in out
    # Piped: the header is one line however long, and no line is padded with blanks.
    (header,) = [x for x in out.splitlines() if "architectures, objectives" in x]
    assert header.startswith("sqa-nas search ") and header.endswith(
        "storage sqlite:///runs/tiny/study.db"
    )
    assert all(x == x.rstrip() for x in out.splitlines())
    assert "in_trial_fraction:" in out  # the local executor reports its workers' time in trials
    assert "busy_fraction" not in out
    assert "GPU utilisation (NVML): " in out and "training-step share: " in out
    study = load_study("tiny")
    records = trial_records(study)
    complete = [r for r in records if r.state == "COMPLETE"]
    assert len(complete) == 4 and all(set(r.values) == set(TINY["objectives"]) for r in complete)
    assert [r.seed_variant for r in records[:2]] == ["MHA", "SQA"]
    first = {r.number: r.values for r in complete}
    mha = records[0]
    assert mha.allocation == "4/4 x2"
    window = mha.timings.train_window
    assert window is not None and window[0] <= window[1]
    run = read_study_attrs(study, default_storage("tiny")).runs[-1]
    assert 0 < run["train_step_share"] <= 1 and run["train_step_share_by_gpu"]
    assert mha.attrs["layers"][0]["backend"] == "sdpa"
    assert mha.attrs["corpus"]["fingerprint"] == study.user_attrs["corpus"]["fingerprint"]
    assert study.metric_names == TINY["objectives"]

    # Same command again: nothing to do, nothing lost.
    assert main(["search", str(space)]) == 0
    assert "nothing to run" in capsys.readouterr().out
    # More trials: only the difference runs, earlier trials unchanged.
    assert main(["search", str(space), "--n-trials", "6"]) == 0
    records = trial_records(load_study("tiny"))
    again = {r.number: r.values for r in records if r.state == "COMPLETE"}
    trained = [r for r in records if r.state == "COMPLETE" and r.typed.duplicate_of is None]
    assert len(trained) == 6 and all(again[n] == v for n, v in first.items())
    for r in records:  # a repeated layout is told its original's values, never trained
        if r.typed.duplicate_of is not None and r.state == "COMPLETE":
            assert r.values == again[r.typed.duplicate_of]


def test_plain_optuna_tools_open_the_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "search",
                str(_write(tmp_path, {**TINY, "budget": {**TINY["budget"], "n_trials": 2}})),
            ]
        )
        == 0
    )
    url = "sqlite:///runs/tiny/study.db"
    optuna_cli = Path(sys.executable).with_name("optuna")  # the console script of optuna
    proc = subprocess.run(
        [str(optuna_cli), "trials", "--study-name", "tiny", "--storage", url, "-f", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    trials = json.loads(proc.stdout)
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]
    assert set(trials[0]["values"]) == {"val_loss", "throughput_tokens_per_s"}  # named metrics
    optuna_dashboard = pytest.importorskip("optuna_dashboard")

    app = optuna_dashboard.wsgi(url)

    def get(path):
        status = []
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "0",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
        }
        body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
        assert status[0].startswith("200"), status
        return json.loads(body)

    summary = get("/api/studies")["study_summaries"][0]
    assert summary["study_name"] == "tiny"
    assert summary["directions"] == ["minimize", "maximize"]
    detail = get(f"/api/studies/{summary['study_id']}")
    assert detail["objective_names"] == TINY["objectives"] and len(detail["trials"]) == 2


def _wait_for(predicate, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def _running(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from trials where state = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_or_interrupted_search_resumes(tmp_path, sig):
    # Long enough trials that the signal lands in the first one even when this test's
    # process is slow to see it start (two test files share a 2-core machine in CI).
    train = {**TINY["budget"]["train"], "steps": 150}
    space = _write(tmp_path, {**TINY, "budget": {**TINY["budget"], "n_trials": 3, "train": train}})
    db = tmp_path / "runs" / "tiny" / "study.db"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "search", str(space)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # Ctrl-C's default: a suite started in the background (`cmd &` in a script) passes
        # SIGINT down ignored, and Python then leaves it ignored, as a user's `nohup` asks.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # A trial is RUNNING from the moment it is asked for; its worker is still starting
        # (importing torch) for a few seconds after that, so a kill now lands mid-trial.
        assert _wait_for(lambda: _running(db) > 0), "no trial started"
        time.sleep(0.5)
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    if sig == signal.SIGINT:
        assert proc.returncode == 130, proc.stderr
        interrupted = [t for t in study.get_trials() if t.user_attrs.get("interrupted")]
        assert interrupted and all(t.state.name == "FAIL" for t in interrupted)
        assert "WAITING" in _states(study)  # re-queued
    else:
        assert "RUNNING" in _states(study)  # what a SIGKILLed driver leaves behind
    rerun = _run(tmp_path, "search", str(space), timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    states = _states(study)
    assert "RUNNING" not in states and "WAITING" not in states
    assert states.count("COMPLETE") == 3
    first = study.get_trials()[0]
    assert first.state.name == "FAIL"
    assert first.user_attrs.get("reaped" if sig == signal.SIGKILL else "interrupted")
    retry = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == 0]
    assert retry and retry[0].params == first.params and retry[0].state.name == "COMPLETE"
    assert retry[0].user_attrs["seed_variant"] == "MHA"


def test_search_on_user_text_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    space = {
        **TINY,
        "study": "text",
        "data": {"kind": "text", "paths": [str(text)]},
        "budget": {**TINY["budget"], "n_trials": 2},
    }
    assert main(["search", str(_write(tmp_path, space))]) == 0
    records = trial_records(load_study("text"))
    assert sum(r.state == "COMPLETE" for r in records) == 2
    assert records[0].attrs["corpus"]["kind"] == "text"


def test_constraints_make_trials_infeasible_without_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {
        **TINY,
        "study": "cons",
        "constraints": {"max_kv_cache_vs_mha": 0.5},
        "budget": {**TINY["budget"], "n_trials": 2},
    }
    assert main(["search", str(_write(tmp_path, space))]) == 0
    records = trial_records(load_study("cons"))
    mha = records[0]
    assert mha.seed_variant == "MHA" and mha.state == "PRUNED"
    assert "max_kv_cache_vs_mha" in mha.attrs["infeasible"][0]
    assert "metrics" not in mha.attrs  # never trained
    study = load_study("cons")
    # Optuna's constraint value: KV cache 1.0x MHA's against a 0.5 limit -> 1.0 / 0.5 - 1.
    assert study.get_trials()[0].constraints == {"max_kv_cache_vs_mha": 1.0}
    assert sum(r.state == "COMPLETE" for r in records) == 2


def test_other_space_or_version_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    space = _write(tmp_path, {**TINY, "budget": {**TINY["budget"], "n_trials": 1}})
    assert main(["search", str(space)]) == 0
    changed = {
        **TINY,
        "budget": {
            **TINY["budget"],
            "n_trials": 1,
            "train": {**TINY["budget"]["train"], "lr": 0.01},
        },
    }
    assert main(["search", str(_write(tmp_path, changed, "changed.yaml")), "--study", "tiny"]) == 2
    assert "different search space" in capsys.readouterr().err
    study = load_study("tiny")
    study.set_user_attr("sqa_nas", {"format": 99, "version": "9.9"})
    assert main(["search", str(space)]) == 2
    assert "format 99" in capsys.readouterr().err


def test_grid_search_covers_the_grid_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {
        **TINY,
        "study": "grid",
        "search": {**TINY["search"], "tying": "all"},
        "sampler": {"name": "grid"},
        "budget": {**TINY["budget"], "n_trials": 10},
    }
    assert main(["search", str(_write(tmp_path, space))]) == 0
    records = [r for r in trial_records(load_study("grid")) if r.state == "COMPLETE"]
    allocations = [r.allocation for r in records]
    # H in {4, 2} x H_kv in {2, 1} plus the MHA seed's 4/4: 5 architectures, each once.
    assert sorted(allocations) == sorted(set(allocations)) and len(allocations) == 5
    assert {r.seed_variant for r in records} >= {"MHA", "SQA"}  # baselines labelled


def test_an_outcome_for_a_trial_reaped_meanwhile_is_dropped_not_raised(tmp_path, monkeypatch):
    from rich.console import Console

    from sqa_nas.search.driver import Driver
    from sqa_nas.search.executors.local import LocalExecutor
    from sqa_nas.search.space import parse_space
    from sqa_nas.search.trial import TrialOutcome

    spec = parse_space({**TINY, "study": "race", "seed_trials": []})
    log = io.StringIO()
    driver = Driver(
        spec,
        LocalExecutor(workers=1),
        storage_url=f"sqlite:///{tmp_path}/s.db",
        console=Console(file=log, width=200),
    )
    study = driver.open_study()
    trial = study.ask(driver.distributions)
    write = driver.storage.set_trial_user_attr

    def reaped_meanwhile(trial_id, key, value):  # another driver fails it first
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        write(trial_id, key, value)

    monkeypatch.setattr(driver.storage, "set_trial_user_attr", reaped_meanwhile)
    driver._tell(TrialOutcome(trial.number, "COMPLETE", {"val_loss": 1.0}, {"note": "late"}))
    assert study.get_trials()[0].state.name == "FAIL"
    assert f"trial {trial.number} was finished elsewhere meanwhile" in log.getvalue()


def test_an_idle_local_worker_that_died_is_replaced_before_it_gets_a_trial():
    from sqa_nas.search.executors.local import LocalExecutor

    executor = LocalExecutor(workers=1, device="cpu")
    executor.start()
    try:
        dead = executor.workers[0].process
        os.kill(dead.pid, signal.SIGKILL)  # e.g. the OOM killer, between two trials
        dead.join(timeout=30)
        assert executor.free_slots() == 1
        fresh = executor.workers[0].process
        assert fresh is not dead and fresh.is_alive()
    finally:
        executor.shutdown(cancel=True)
