"""Smoke runs of the quality experiments (issue 8): each script runs end to end on a tiny
model and writes a result file with the machine header, budget, seeds and command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import light_sqa, paper_table1, per_layer, results_report
from experiments.common import RESULTS
from sqa_nas.cli import guarded


def _load(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert {"device", "torch"} <= set(data["machine"]) and data["command"]
    return data


def test_paper_table1_smoke(tmp_path):
    out = tmp_path / "t1.json"
    paper_table1.main(
        ["--smoke", "--variants", "MHA,SQA,xSQA", "--seeds", "0,1", "--out", str(out)]
    )
    data = _load(out)
    assert data["seeds"] == [0, 1] and data["budget"]["tokens_per_run"] > 0
    assert data["corpus"]["fingerprint"] and data["corpus"]["tokens"]["train"] > 0
    assert len(data["runs"]) == 6 and all(r["state"] == "COMPLETE" for r in data["runs"])
    summary = data["summary"]["xSQA"]["val_loss"]
    assert summary["min"] <= summary["mean"] <= summary["max"] and summary["std"] >= 0
    assert data["ordering"]["our_order"] and data["ordering"]["pairs"]


def test_paper_table1_seeds_run_apart_are_merged(tmp_path, capsys):
    def run(seed: int, *extra: str) -> dict:
        out = tmp_path / f"s{seed}.json"
        paper_table1.main(
            ["--smoke", "--variants", "MHA,xSQA", "--seeds", str(seed), "--out", str(out), *extra]
        )
        return _load(out)

    one, two = run(0), run(1)
    assert "partial" not in one and len(one["runs"]) == 2
    assert not (tmp_path / "s0.partial.json").exists()  # removed with the result written
    out = tmp_path / "joined.json"
    paper_table1.main(
        ["--merge", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"), "--out", str(out)]
    )
    joined = _load(out)
    assert joined["seeds"] == [0, 1] and len(joined["runs"]) == 4
    assert joined["machine"] == one["machine"]  # the runs' machine, not the merging one
    losses = [r["val_loss"] for r in one["runs"] + two["runs"] if r["label"] == "xSQA"]
    assert joined["summary"]["xSQA"]["val_loss"]["min"] == min(losses)
    assert [m["command"] for m in joined["merged_from"]] == [one["command"], two["command"]]
    assert "joined from `" in results_report.table1(joined)

    # The same seed twice, or another budget, is refused with exit status 2.
    paper_table1.main(
        [
            "--smoke",
            "--variants",
            "MHA",
            "--seeds",
            "2",
            "--lr",
            "0.01",
            "--out",
            str(tmp_path / "lr.json"),
        ]
    )
    for other, message in (
        ("s0.json", "MHA seed 0 is in more than one"),
        ("lr.json", "has another budget"),
    ):
        capsys.readouterr()
        args = [
            "--merge",
            str(tmp_path / "s0.json"),
            str(tmp_path / other),
            "--out",
            str(tmp_path / "x.json"),
        ]
        assert guarded(lambda args=args: paper_table1.main(args)) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_paper_table1_keeps_finished_runs_when_cut_short(tmp_path, monkeypatch):
    real, calls = paper_table1.train_allocation, []

    def train_then_stop(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(paper_table1, "train_allocation", train_then_stop)
    out = tmp_path / "cut.json"
    with pytest.raises(KeyboardInterrupt):
        paper_table1.main(
            ["--smoke", "--variants", "MHA,SQA,xSQA", "--seeds", "0", "--out", str(out)]
        )
    assert not out.exists()  # no result, and a finished one would not be overwritten
    data = _load(out.with_suffix(".partial.json"))
    assert data["partial"] and [r["label"] for r in data["runs"]] == ["MHA", "SQA"]
    assert "Partial: the run stopped after 2 of 3 runs" in results_report.table1(data)


def test_light_sqa_smoke(tmp_path):
    out = tmp_path / "ls.json"
    light_sqa.main(["--smoke", "--out", str(out)])
    data = _load(out)
    assert len(data["trials"]) == 4 and any(t["on_front"] for t in data["trials"])
    assert isinstance(data["lsqa_on_front"], bool)
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_per_layer_smoke(tmp_path):
    out = tmp_path / "pl.json"
    per_layer.main(["--smoke", "--n-trials", "5", "--uniform", "MHA,xSQA", "--out", str(out)])
    data = _load(out)
    assert data["mixed"]["allocation"] and len(data["runs"]) == 2 * 3
    assert set(data["verdicts"]) == {"MHA", "xSQA"} and "partial" not in data
    assert not (tmp_path / "pl.partial.json").exists()  # removed once the result is written


def test_per_layer_keeps_the_runs_it_finished_when_stopped(tmp_path, monkeypatch):
    real, calls = per_layer.train_allocation, []

    def stop_on_the_third(*args, **kwargs):
        calls.append(kwargs["label"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(per_layer, "train_allocation", stop_on_the_third)
    out = tmp_path / "pl.json"
    out.write_text('{"a finished result": "a stopped rerun must not overwrite"}')
    with pytest.raises(KeyboardInterrupt):
        per_layer.main(["--smoke", "--n-trials", "5", "--uniform", "MHA,xSQA", "--out", str(out)])
    assert "a finished result" in out.read_text()
    data = _load(tmp_path / "pl.partial.json")
    assert data["partial"] is True and [r["label"] for r in data["runs"]] == ["mixed", "MHA"]
    assert data["mixed"]["allocation"] and data["corpus"]["fingerprint"]
    assert "Stopped after 2 retraining runs" in results_report.per_layer(data)


def test_results_page_is_generated_from_result_files(tmp_path):
    page = results_report.render(RESULTS)
    assert "# Results" in page
