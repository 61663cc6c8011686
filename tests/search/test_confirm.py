"""sqa_nas.search.confirm and `sqa-nas confirm`: the front's first K members retrained with
fresh seeds (the same for each), the front recomputed from the confirmed means, survivors
and the result stored in the study; bad input is one line and exit code 2."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from sqa_nas.cli import main
from sqa_nas.errors import UserError
from sqa_nas.search.confirm import Confirmation, confirm
from sqa_nas.search.driver import Driver
from sqa_nas.search.space import parse_space
from sqa_nas.search.study_attrs import read_study_attrs
from sqa_nas.search.trial import TrialOutcome, crn_seeds
from tests.search.test_driver import InProcess
from tests.search.test_search import TINY


def _study(tmp_path, losses):
    """A study whose trials completed with `losses` (MHA, SQA, then sampled), throughput
    rising with the trial number, so every trial is on the front."""
    values = iter(losses)

    def outcome(job):
        loss = next(values)
        return TrialOutcome(
            job.number,
            "COMPLETE",
            {"val_loss": loss, "throughput_tokens_per_s": 10.0 * (job.number + 1)},
            {"allocation": f"a{job.number}", "metrics": {"val_loss": loss}},
        )

    spec = parse_space({**TINY, "study": "conf"})
    driver = Driver(spec, InProcess(outcome), storage_url=f"sqlite:///{tmp_path}/s.db")
    driver.run(len(losses))
    return driver.study, spec, driver.url


def retrained(losses_by_trial):
    """An executor whose retrainings give trial N the per-seed losses `losses_by_trial[N]`."""

    def outcome(job):
        seeds = losses_by_trial[job.number]
        assert len(job.seeds) == len(seeds)
        m = {"val_loss": sum(seeds) / len(seeds), "val_loss_seeds": seeds}
        return TrialOutcome(job.number, "COMPLETE", {}, {"metrics": m})

    return InProcess(outcome)


def test_the_front_is_retrained_with_fresh_seeds_and_survivors_recomputed(tmp_path):
    # Trials 0..2 all on the front: losses 1.0, 2.0, 3.0 with speeds 10, 20, 30.
    study, spec, url = _study(tmp_path, [1.0, 2.0, 3.0])
    executor = retrained({0: [1.0, 1.2], 1: [3.5, 3.7], 2: [2.9, 3.1]})
    result = confirm(study, spec, executor, top=3, seeds=2, url=url)
    jobs = executor.jobs
    assert [j.number for j in jobs] == [0, 1, 2]
    fresh = crn_seeds(spec, 2, "confirm")
    assert all(j.seeds == fresh for j in jobs) and result["seeds"] == fresh
    assert set(fresh).isdisjoint(crn_seeds(spec, 2))
    t = result["trials"]
    assert t["0"]["val_loss_mean"] == pytest.approx(1.1)
    assert t["0"]["val_loss_std"] == pytest.approx(0.1414, abs=1e-4)
    # Confirmed: 1 -> 3.6 at speed 20, 2 -> 3.0 at speed 30: trial 2 now dominates trial 1.
    assert (t["0"]["on_front"], t["1"]["on_front"], t["2"]["on_front"]) == (True, False, True)
    assert result["survivors"] == [0, 2]
    assert result["summary"].startswith("2 of 3 front members confirmed with 2 fresh seed(s)")
    assert read_study_attrs(study, url).confirm == result
    assert "confirm" not in study.user_attrs  # a record beside the storage


def test_top_limits_the_retrained_members(tmp_path):
    study, spec, url = _study(tmp_path, [1.0, 2.0, 3.0])
    executor = retrained({0: [1.0, 1.0]})
    assert list(confirm(study, spec, executor, top=1, seeds=2, url=url)["trials"]) == ["0"]


def test_a_study_measured_the_old_way_is_refused(tmp_path):
    study, spec, url = _study(tmp_path, [1.0, 2.0])
    study.set_user_attr("method", 1)
    with pytest.raises(UserError, match="measured the old way"):
        confirm(study, spec, retrained({}), top=1, seeds=2, url=url)


def test_the_command_retrains_prints_and_stores(tmp_path, monkeypatch, capsys):
    study, _, _ = _study(tmp_path, [1.0, 2.0])
    executor = retrained({0: [1.0, 1.1], 1: [2.0, 2.2]})
    monkeypatch.setattr("sqa_nas.cli.confirm.make_executor", lambda spec: executor)
    url = f"sqlite:///{tmp_path}/s.db"
    assert main(["confirm", "conf", "--storage", url, "--seeds", "2", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "1.0500 +- 0.0707" in out and "2 of 2 front members" in out
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2  # untouched


def test_the_command_off_a_terminal_logs_plain_progress_lines(tmp_path, monkeypatch, capsys):
    _study(tmp_path, [1.0, 2.0])
    executor = retrained({0: [1.0, 1.1], 1: [2.0, 2.2]})
    monkeypatch.setattr("sqa_nas.cli.confirm.make_executor", lambda spec: executor)
    url = f"sqlite:///{tmp_path}/s.db"
    assert main(["confirm", "conf", "--storage", url, "--seeds", "2", "--top", "2"]) == 0
    out = capsys.readouterr().out  # capsys: not a terminal, as a pipe or a log file
    assert "\x1b" not in out and "\r" not in out
    lines = [x for x in out.splitlines() if x.startswith("members ")]
    assert lines[0].startswith("members 0/2 (0%), 0:00:00 elapsed, - members/h, ETA -")
    assert lines[-1].startswith("members 2/2 (100%), ") and lines[-1].endswith(", done")


def test_an_unknown_study_is_one_line_and_exit_code_2(tmp_path, capsys):
    _study(tmp_path, [1.0])
    assert main(["confirm", "nope", "--storage", f"sqlite:///{tmp_path}/s.db"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message", [(["--seeds", "1"], "must be >= 2"), (["--top", "0"], "must be >= 1")]
)
def test_bad_arguments_are_one_line_and_exit_code_2(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        main(["confirm", "conf", *flags])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_stored_result_reads_back_as_the_dashboard_shows_it(tmp_path):
    study, spec, url = _study(tmp_path, [1.0, 2.0])
    confirm(study, spec, retrained({0: [1.0, 1.2], 1: [2.0, 2.0]}), top=2, seeds=2, url=url)
    read = Confirmation.read(read_study_attrs(study, url).as_attrs())
    assert read is not None and read.survivors == [0, 1]
    first = read.of(0)
    assert first is not None
    assert first.describe() == "val_loss 1.1 ± 0.141 over 2 seeds (survives on the front)"


def test_the_final_table_lists_trials_within_noise_and_says_whether_resolved(tmp_path):
    import io

    from rich.console import Console

    from sqa_nas.cli.search import print_front

    # Losses 1.2, 1.0, 3.0 at speeds 10, 20, 30: trial 1 dominates trial 0 (0.2 lower loss,
    # twice the speed); 1 and 2 make the front.
    study, spec, _ = _study(tmp_path, [1.2, 1.0, 3.0])

    def table() -> str:
        out = io.StringIO()
        print_front(study, spec.objectives, Console(file=out, width=200))
        return out.getvalue()

    assert "Not known whether the front is resolved" in table()
    # Sigmas of 0.01 and 1%: trial 0 stays behind by far more than 2 sigma.
    study.set_user_attr("noise", {"n": 3, "val_loss_std": 0.01, "throughput_rel_std": 0.01})
    text = table()
    assert "Front resolved at this budget" in text and "within 2 sigma" not in text
    # Sigmas of 0.5 and 50%: 2 sigma covers the gap, so trial 0 is listed, within noise.
    study.set_user_attr("noise", {"n": 3, "val_loss_std": 0.5, "throughput_rel_std": 0.5})
    text = table()
    assert "Front NOT resolved at this budget: 1 trial(s) (0)" in text
    assert "within 2 sigma" in text
