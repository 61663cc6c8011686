"""The efficiency scripts run end to end on the CPU (--smoke) and write what they promise."""

from __future__ import annotations

import json
from pathlib import Path

from experiments import search_efficiency, step_throughput
from sqa_nas.cli import guarded

KEYS = {"label", "tokens_per_trial", "n_trials", "wall_s", "nvml_util_mean", "train_step_share"}


def test_search_efficiency_smoke_records_each_run(tmp_path):
    out = tmp_path / "eff.json"
    assert search_efficiency.main(["--smoke", "--runs", "eager,auto", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["label"] for r in runs] == ["eager", "auto"]
    for r in runs:
        assert KEYS | {"trials_per_gpu_hour"} <= set(r) and r["n_trials"] == 2
        assert r["nvml_util_mean"] is None and "CPU" in r["nvml_note"]  # n/a, said so
        assert 0 < r["train_step_share"] <= 1
        for t in r["trials"]:
            assert t["compile"]["used"] is False and t["train_tokens_per_s"] > 0
            assert {"build_s", "compile_s", "throughput_s", "train_s", "eval_s"} <= set(
                t["timings"]
            )


def test_search_efficiency_refuses_an_unknown_run():
    assert guarded(lambda: search_efficiency.main(["--runs", "turbo"])) == 2


def test_search_efficiency_baseline_run_needs_a_checkout(tmp_path):
    assert guarded(lambda: search_efficiency.main(["--smoke", "--runs", "issue"])) == 2
    nothing = ["--smoke", "--runs", "issue", "--baseline", str(tmp_path)]
    assert guarded(lambda: search_efficiency.main(nothing)) == 2


def test_search_efficiency_runs_another_checkout_as_the_baseline(tmp_path):
    """This checkout stands in for an older one: its CLI runs in a child process."""
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "eff.json"
    argv = ["--smoke", "--runs", "issue", "--baseline", str(root), "--out", str(out)]
    assert search_efficiency.main(argv) == 0
    (r,) = json.loads(out.read_text())["runs"]
    assert r["label"] == "issue" and r["n_trials"] == 2 and r["trials_per_gpu_hour"] > 0
    assert r["settings"]["baseline"] == root.name and r["nvml_util_mean"] is None
    assert all(t["timings"]["train_s"] > 0 for t in r["trials"])
    assert 0 < r["train_step_share"] <= 1


def test_step_throughput_smoke(tmp_path):
    out = tmp_path / "step.json"
    assert step_throughput.main(["--smoke", "--variants", "MHA,xSQA", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["variants"]
    assert [r["variant"] for r in rows] == ["MHA", "xSQA"]
    assert all(r["eager"]["tokens_per_s"] > 0 for r in rows)


def test_merge_replaces_a_run_of_the_same_label_and_budget(tmp_path):
    machine = {"device": "GPU", "device_type": "cuda"}

    def result(name, runs):
        path = tmp_path / name
        path.write_text(json.dumps({"machine": machine, "runs": runs}))
        return str(path)

    old_eager = {"label": "eager", "tokens_per_trial": 1, "wall_s": 5}
    old = result("old.json", [{"label": "auto", "tokens_per_trial": 1, "wall_s": 9}, old_eager])
    new = result("new.json", [{"label": "auto", "tokens_per_trial": 1, "wall_s": 7}])
    out = tmp_path / "merged.json"
    assert search_efficiency.main(["--merge", old, new, "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert sorted((r["label"], r["wall_s"]) for r in runs) == [("auto", 7), ("eager", 5)]
    # Each run names the file it was measured in (runs of one file: one session).
    assert {r["label"]: r["source"] for r in runs} == {"auto": "new.json", "eager": "old.json"}
    assert len(json.loads(out.read_text())["merged_from"]) == 2
