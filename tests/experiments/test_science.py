"""Smoke runs of the quality experiments (issues 8 and 19): each script trains a tiny model
end to end on the CPU and writes a result file with the machine header, budget, seeds,
corpus fingerprint, command and git revision, the keys issue 19 asks for, and its PNG."""

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
    assert data["git_revision"] and data["corpus"]["fingerprint"]
    return data


@pytest.fixture(scope="module")
def table1(tmp_path_factory) -> Path:
    """Table 1 at the smoke size: MHA and xSQA, seeds 0 and 1 (4 runs)."""
    out = tmp_path_factory.mktemp("t1") / "t1.json"
    paper_table1.main(["--smoke", "--variants", "MHA,xSQA", "--seeds", "0,1", "--out", str(out)])
    return out


def test_paper_table1_smoke_has_the_keys_issue_19_asks_for(table1):
    data = _load(table1)
    assert data["seeds"] == [0, 1] and data["budget"]["tokens_per_run"] > 0
    assert len(data["runs"]) == 4 and all(r["state"] == "COMPLETE" for r in data["runs"])
    for variant in ("MHA", "xSQA"):
        s = data["summary"][variant]
        assert s["n"] == 2 and s["std"] >= 0 and s["mean"] == s["val_loss"]["mean"]
    pairs = {(p["kind"], p["a"], p["b"]): p for p in data["pairwise"]}
    assert set(pairs) == {("vs MHA", "xSQA", "MHA"), ("paper claim", "MHA", "xSQA")}
    for p in pairs.values():
        assert {"diff_mean", "ci95_low", "ci95_high", "verdict"} <= set(p)
        assert p["ci95_low"] <= p["diff_mean"] <= p["ci95_high"]
    assert "t-interval" in data["interval"]
    # The curve: the point on the way, then the end; the learning-curve PNG beside.
    assert all(len(r["curve"]) == 2 and r["curve"][-1][1] == r["val_loss"] for r in data["runs"])
    assert data["curves"]["MHA"]["n"] == [2, 2]
    assert table1.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    page = results_report.table1(data, table1.with_suffix(".png"))
    assert "paper claim MHA < xSQA" in page and "t1.png" in page


def test_paper_table1_runs_made_apart_are_merged(table1, tmp_path, capsys):
    out = tmp_path / "s2.json"
    paper_table1.main(["--smoke", "--variants", "MHA", "--seeds", "2", "--out", str(out)])
    assert not (tmp_path / "s2.partial.json").exists()  # removed with the result written
    joined = tmp_path / "joined.json"
    paper_table1.main(["--merge", str(table1), str(out), "--out", str(joined)])
    data, one = _load(joined), _load(table1)
    assert data["seeds"] == [0, 1, 2] and len(data["runs"]) == 5
    assert data["summary"]["MHA"]["n"] == 3 and data["summary"]["xSQA"]["n"] == 2
    assert data["machine"] == one["machine"]  # the runs' machine, not the merging one
    assert [m["command"] for m in data["merged_from"]][0] == one["command"]
    assert "joined from `" in results_report.table1(data)

    # Another budget is refused with exit status 2, and nothing is written.
    lr = tmp_path / "lr.json"
    paper_table1.main(
        ["--smoke", "--variants", "MHA", "--seeds", "3", "--lr", "0.01", "--out", str(lr)]
    )
    capsys.readouterr()
    args = ["--merge", str(table1), str(lr), "--out", str(tmp_path / "x.json")]
    assert guarded(lambda: paper_table1.main(args)) == 2
    assert "has another budget" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "MHA,XQA"], "--variants: unknown XQA"),
        (["--corpus", "/no/such/folder"], "not embedded, stdlib, or a folder with prose/"),
    ],
)
def test_paper_table1_refuses_bad_input(tmp_path, capsys, args, message):
    out = tmp_path / "r.json"
    assert guarded(lambda: paper_table1.main(["--smoke", *args, "--out", str(out)])) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_paper_table1_keeps_finished_runs_when_cut_short(tmp_path, monkeypatch, capsys):
    real, calls = paper_table1.train_allocation, []

    def train_then_stop(*args, **kwargs):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(paper_table1, "train_allocation", train_then_stop)
    out = tmp_path / "cut.json"
    with pytest.raises(KeyboardInterrupt):
        paper_table1.main(["--smoke", "--variants", "MHA,xSQA", "--seeds", "0", "--out", str(out)])
    assert not out.exists()  # no result, and a finished one would not be overwritten
    data = _load(out.with_suffix(".partial.json"))
    assert data["partial"] and [r["label"] for r in data["runs"]] == ["MHA"]
    assert "Partial: the run stopped after 1 of 2 runs" in results_report.table1(data)

    # --resume trains only what is missing; a stopped run of other settings is refused.
    again = ["--smoke", "--variants", "MHA,xSQA", "--seeds", "0", "--out", str(out), "--resume"]
    assert guarded(lambda: paper_table1.main([*again, "--lr", "0.01"])) == 2
    assert "was made with another budget" in capsys.readouterr().err
    monkeypatch.setattr(
        paper_table1, "train_allocation", lambda *a, **k: calls.append(k) or real(*a, **k)
    )
    paper_table1.main(again)
    assert [c["label"] for c in calls[1:]] == ["xSQA"]
    assert [r["label"] for r in _load(out)["runs"]] == ["MHA", "xSQA"]
    assert not out.with_suffix(".partial.json").exists()


def test_light_sqa_reuses_table1_and_places_lsqa(table1, tmp_path, capsys):
    out = tmp_path / "ls.json"
    args = ["--smoke", "--seeds", "0,1", "--allocations", "16/16,12/4,4/4", "--out", str(out)]
    light_sqa.main([*args, "--table1", str(table1)])
    data = _load(out)
    trained = [r for r in data["runs"] if r["label"] == "lSQA"]
    assert len(data["runs"]) == 6 and len(trained) == 2  # MHA and xSQA came from Table 1
    assert data["lsqa"]["verdict"] in {"on the front", "off the front", "not resolved"}
    assert set(data["front"]) == {"MHA", "lSQA", "xSQA"}
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert sum(1 for r in data["runs"] if r.get("reused")) == 4
    page = results_report.light(data, None)
    assert "Light SQA (H_q = 3H/4) with intervals" in page
    assert " lSQA were trained by this command, the others reused" in page
    capsys.readouterr()
    bad = [*args[:-1], str(tmp_path / "no.json")]
    for extra, message in (
        (["--allocations", "16/3"], "not in the grid"),
        (["--compile", "--table1", str(table1)], "trained another budget"),
    ):
        assert guarded(lambda extra=extra: light_sqa.main([*bad, *extra])) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "no.json").exists()


def test_light_sqa_refuses_table1_of_another_corpus_before_training(
    table1, tmp_path, capsys, monkeypatch
):
    other = _load(table1)
    for run in other["runs"]:
        run["corpus"] = {**run["corpus"], "fingerprint": "f" * 64}
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    monkeypatch.setattr(light_sqa, "train_allocation", lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "ls.json"
    argv = ["--smoke", "--seeds", "0,1", "--table1", str(path), "--out", str(out)]
    assert guarded(lambda: light_sqa.main(argv)) == 2
    err = capsys.readouterr().err
    assert "trained on a corpus of another fingerprint (ffff" in err and "Traceback" not in err
    assert not out.exists() and not out.with_suffix(".partial.json").exists()
    for run in other["runs"]:  # none recorded, by the runs or the file
        del run["corpus"]
    other["corpus"] = None
    path.write_text(json.dumps(other))
    assert guarded(lambda: light_sqa.main(argv)) == 2
    assert "does not record the fingerprint of its corpus" in capsys.readouterr().err


def test_per_layer_smoke_answers_with_intervals(tmp_path, capsys):
    out = tmp_path / "pl.json"
    args = ["--smoke", "--n-trials", "3", "--top", "1", "--uniform", "MHA", "--out", str(out)]
    args += ["--storage", f"sqlite:///{tmp_path / 'study.db'}"]  # the resume reads the search
    per_layer.main([*args, "--seeds", "100,101", "--stop-after", "0"])  # searches, then stops
    assert not out.exists() and "stopped before seed 100 mixed1" in capsys.readouterr().out
    per_layer.main([*args, "--seeds", "100,101", "--resume"])
    data = _load(out)
    assert all(r["wall_s"] > 0 for r in data["runs"])
    assert [m["label"] for m in data["mixed"]] == ["mixed1"] and len(data["runs"]) == 4
    assert set(data["comparisons"]["mixed1"]) == {"MHA"} and "partial" not in data
    assert data["search"]["trials"] == data["search"]["full_budget"] == 3  # none stopped early
    (row,) = data["pairwise"]  # the comparison as the rows every science result carries
    assert row["a"] == "MHA" and row["b"] == "mixed1"
    c = data["comparisons"]["mixed1"]["MHA"]
    assert [row[k] for k in ("diff_mean", "ci95_low", "ci95_high", "verdict")] == [
        c["diff_mean"],
        c["ci95_low"],
        c["ci95_high"],
        c["verdict"],
    ]
    assert data["verdict"]["answer"] in {"yes", "no", "not resolved"}
    assert "Answer:" in results_report.per_layer(data)
    capsys.readouterr()
    assert guarded(lambda: per_layer.main([*args, "--seeds", "100"])) == 2
    assert "give two seeds or more" in capsys.readouterr().err


def test_per_layer_counts_the_trials_a_scheduler_stopped_and_not_the_failed_ones():
    states = ["COMPLETE", "PRUNED", "PRUNED", "FAIL", "COMPLETE", "RUNNING", "WAITING"]
    records = [per_layer.argparse.Namespace(state=s) for s in states]
    assert per_layer.trial_counts(records) == {"trials": 4, "full_budget": 2}


def test_per_layer_search_can_use_mo_asha(tmp_path):
    args = per_layer.argparse.Namespace(
        space=per_layer.SEARCH_SPACES / "paper_dense.yaml",
        smoke=True,
        n_trials=9,
        tokens=None,
        noise_seeds=2,
        scheduler="mo_asha",
        min_tokens=None,
        corpus=None,
    )
    spec = per_layer.search_space(args)
    stopping = spec.budget.early_stopping
    assert stopping.scheduler == "mo_asha" and stopping.rungs(spec.budget.train.tokens)[0] == 56
    assert spec.budget.noise_seeds == 2 and spec.search.tying == "per_layer"


def test_results_page_is_generated_from_result_files():
    page = results_report.render(RESULTS)
    assert "# Results" in page and "Paper Table 1 at 12M tokens per run" in page
    assert "paper claim GQA < sSQA" in page


def test_a_gpu_run_records_what_nvml_saw_of_it(monkeypatch):
    """The wiring of `train_allocation` on a GPU (here a fake one: the trial and NVML are
    stand-ins) -- a run's row gets the GPU's busy share overall and in its training steps
    alone."""
    import time
    from types import SimpleNamespace

    import torch

    from experiments import science
    from sqa_nas.search.utilisation import GpuSampler

    busy = {"now": 0}  # percent: 100 while the fake trial trains, 0 around it

    class Nvml:  # one GPU
        def nvmlInit(self):
            pass

        def nvmlShutdown(self):
            pass

        def nvmlDeviceGetCount(self):
            return 1

        def nvmlDeviceGetHandleByIndex(self, i):
            return i

        def nvmlDeviceGetUUID(self, h):
            return "GPU-0"

        def nvmlDeviceGetName(self, h):
            return "Fake GPU"

        def nvmlDeviceGetUtilizationRates(self, h):
            return SimpleNamespace(gpu=busy["now"])

        def nvmlDeviceGetMemoryInfo(self, h):
            return SimpleNamespace(used=2**30)

    def trial(job, device):
        time.sleep(0.3)  # building: idle
        start, busy["now"] = time.time(), 100
        time.sleep(0.5)  # training, sampled at 20 Hz meanwhile
        end, busy["now"] = time.time(), 0
        time.sleep(0.3)  # evaluating: idle
        timings = {"train_s": 0.5, "train_window": [start + 0.05, end - 0.05]}
        metrics = {"val_loss": 1.0, "train_tokens": 1000}
        return SimpleNamespace(state="COMPLETE", attrs={"metrics": metrics, "timings": timings})

    monkeypatch.setattr(science, "pick_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(science, "run_trial", trial)
    monkeypatch.setattr(
        science, "GpuSampler", lambda gpus: GpuSampler(gpus, nvml=Nvml(), period_s=0.05)
    )
    spec = science.make_spec(
        study="fake",
        model=science.SMOKE_MODEL,
        variants=["MHA"],
        tokens=1000,
        batch=2,
        lr=1e-3,
        seed=0,
        site_packages=False,
        compile=False,
        eval_batches=1,
    )
    row = science.train_allocation(spec, spec.seed_params()[0][1], seed_index=0, label="MHA")
    assert row["gpu_busy_training"] == 1.0 and 0.2 < row["gpu_busy"] < 0.8
    assert row["train_tokens_per_s"] == 2000
