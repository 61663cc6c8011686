"""experiments/convert_gqa.py --smoke: the whole comparison on a tiny model (pretrain GQA,
convert, fine-tune, scratch), its result file and plot, and --merge of seeds run apart."""

from __future__ import annotations

import json

import pytest

from experiments import convert_gqa
from sqa_nas.cli import guarded


def test_the_smoke_run_writes_every_comparison_and_seeds_merge(tmp_path, capsys):
    out = tmp_path / "s0.json"
    convert_gqa.main(
        ["--smoke", "--variants", "SQA", "--methods", "select,fit", "--out", str(out)]
    )
    data = json.loads(out.read_text())
    assert data["machine"]["device"] and data["command"] and data["corpus"]["fingerprint"]
    assert (tmp_path / "s0.png").stat().st_size > 0
    assert not (tmp_path / "s0.partial.json").exists()
    kinds = {(r["variant"], r["method"], r["fraction"]) for r in data["runs"]}
    for f in (0.05, 0.1):
        assert {("SQA", "select", f), ("SQA", "fit", f), ("SQA", "scratch", f)} <= kinds
        assert ("GQA", "continued", f) in kinds
    assert {("GQA", "parent", 0.0), ("SQA", "select", 0.0), ("SQA", "fit", 0.0)} <= kinds
    tuned = [r for r in data["runs"] if r["method"] == "fit" and r["fraction"]]
    assert all(r["val_loss_before"] > 0 and r["output_error"] >= 0 for r in tuned)
    scratch = [r for r in data["runs"] if r["method"] == "scratch"]
    assert scratch[0]["train_tokens"] < scratch[1]["train_tokens"]  # 105% read on the way
    assert len(data["answer"]) == 2 and "vs scratch" in data["answer"][0]

    # A second seed run apart (its file made from the first), then joined.
    other = dict(data, seeds=[1], runs=[dict(r, seed=1) for r in data["runs"]])
    (tmp_path / "s1.json").write_text(json.dumps(other))
    joined = tmp_path / "joined.json"
    convert_gqa.main(["--merge", str(out), str(tmp_path / "s1.json"), "--out", str(joined)])
    merged = json.loads(joined.read_text())
    assert merged["seeds"] == [0, 1] and len(merged["runs"]) == 2 * len(data["runs"])
    assert merged["summary"]["SQA/fit/0.1"]["runs"] == 2
    assert merged["machine"] == data["machine"]

    capsys.readouterr()
    status = guarded(lambda: convert_gqa.main(["--merge", str(out), str(out)]))
    assert status == 2 and "in an earlier file" in capsys.readouterr().err


def test_bad_fractions_are_refused(capsys):
    assert guarded(lambda: convert_gqa.main(["--smoke", "--fractions", "0"])) == 2
    assert "--fractions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert_gqa.main(["--smoke", "--seeds", "0,0"])
