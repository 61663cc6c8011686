"""Smoke runs of the quality experiments (issue 8): each script runs end to end on a tiny
model and writes a result file with the machine header, budget, seeds and command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))


def _load(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert {"device", "torch"} <= set(data["machine"]) and data["command"]
    return data


def test_paper_table1_smoke(tmp_path):
    import paper_table1

    out = tmp_path / "t1.json"
    paper_table1.main(["--smoke", "--variants", "MHA,SQA,xSQA", "--seeds", "0,1",
                       "--out", str(out)])
    data = _load(out)
    assert data["seeds"] == [0, 1] and data["budget"]["tokens_per_run"] > 0
    assert data["corpus"]["fingerprint"] and data["corpus"]["tokens"]["train"] > 0
    assert len(data["runs"]) == 6 and all(r["state"] == "COMPLETE" for r in data["runs"])
    summary = data["summary"]["xSQA"]["val_loss"]
    assert summary["min"] <= summary["mean"] <= summary["max"] and summary["std"] >= 0
    assert data["ordering"]["our_order"] and data["ordering"]["pairs"]


def test_light_sqa_smoke(tmp_path):
    import light_sqa

    out = tmp_path / "ls.json"
    light_sqa.main(["--smoke", "--out", str(out)])
    data = _load(out)
    assert len(data["trials"]) == 4 and any(t["on_front"] for t in data["trials"])
    assert isinstance(data["lsqa_on_front"], bool)
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_per_layer_smoke(tmp_path):
    import per_layer

    out = tmp_path / "pl.json"
    per_layer.main(["--smoke", "--n-trials", "5", "--uniform", "MHA,xSQA",
                    "--out", str(out)])
    data = _load(out)
    assert data["mixed"]["allocation"] and len(data["runs"]) == 2 * 3
    assert set(data["verdicts"]) == {"MHA", "xSQA"} and "partial" not in data
    assert not (tmp_path / "pl.partial.json").exists()  # removed once the result is written


def test_per_layer_keeps_the_runs_it_finished_when_stopped(tmp_path, monkeypatch):
    import per_layer

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
        per_layer.main(["--smoke", "--n-trials", "5", "--uniform", "MHA,xSQA",
                        "--out", str(out)])
    assert "a finished result" in out.read_text()
    data = _load(tmp_path / "pl.partial.json")
    assert data["partial"] is True and [r["label"] for r in data["runs"]] == ["mixed", "MHA"]
    assert data["mixed"]["allocation"] and data["corpus"]["fingerprint"]
    import results_report

    assert "Stopped after 2 retraining runs" in results_report.per_layer(data)


def test_results_page_is_generated_from_result_files(tmp_path):
    import results_report

    page = results_report.render(EXPERIMENTS / "results")
    assert "# Results" in page
    del sys.modules["results_report"]
