"""The issue-15 scripts run end to end on the CPU (--smoke) and write what they promise:
the noise floor with a confirm of its front, and paired timing alone and under load."""

from __future__ import annotations

import json

from experiments import noise_floor, paired_timing


def test_noise_floor_smoke_measures_the_noise_and_confirms_the_front(tmp_path):
    out = tmp_path / "noise.json"
    argv = ["--smoke", "--n-trials", "3", "--top", "2", "--seeds", "2", "--out", str(out)]
    assert noise_floor.main(argv) == 0
    result = json.loads(out.read_text())
    noise = result["noise"]
    assert noise["n"] == 3 and noise["val_loss_std"] > 0 and noise["trial"] == 0
    assert noise["speedup_rel_std"] is not None
    verdict = result["verdict"]
    assert verdict["front"] and verdict["summary"].split(" ")[0] in ("Front", "Not")
    confirm = result["confirm"]
    assert 1 <= len(confirm["trials"]) <= 2 and len(confirm["seeds"]) == 2
    assert set(confirm["survivors"]) <= {int(n) for n in confirm["trials"]}
    noise_trial = next(t for t in result["trials"] if t["noise_trial"])
    assert len(noise_trial["metrics"]["val_loss_seeds"]) == 3


def test_paired_timing_smoke_records_both_conditions(tmp_path):
    out = tmp_path / "paired.json"
    assert paired_timing.main(["--smoke", "--runs", "1", "--load", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["condition"], r["variant"]) for r in result["timings"]] == [
        ("alone", "MHA"),
        ("alone", "xSQA"),
        ("competing", "MHA"),
        ("competing", "xSQA"),
    ]
    for r in result["timings"]:
        low, high = r["speedup_ci95"]
        assert low <= r["speedup_vs_mha"] <= high and r["rounds"] >= 2
    assert set(result["summary"]) == {"alone/MHA", "alone/xSQA", "competing/MHA", "competing/xSQA"}


def test_the_report_renders_the_committed_noise_and_timing_results():
    from experiments import results_report
    from experiments.common import RESULTS

    noise = json.loads((RESULTS / "noise_h200.json").read_text())
    text = results_report.noise(noise)
    assert noise["verdict"]["summary"] in text
    for number in noise["verdict"]["front"]:
        assert f"| {number} |" in text
    assert "times smaller than the spread" in text
    paired = json.loads((RESULTS / "paired_timing_cpu.json").read_text())
    text = results_report.paired(paired)
    low, high = paired["summary"]["competing/MHA"]["speedup_vs_mha"]
    assert f"| competing | MHA | {low:.3f}-{high:.3f} |" in text
    assert 0.8 <= low <= high <= 1.25  # the bar: MHA against itself under load
