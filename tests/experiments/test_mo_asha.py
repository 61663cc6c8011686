"""experiments/mo_asha.py on the CPU (--smoke): both arms run under one time limit, the file
holds each run's hypervolume history, ladder and rank correlations, the summary compares the
arms per sampler seed, and --merge joins runs made apart (refusing other settings)."""

from __future__ import annotations

import json

from experiments import mo_asha
from sqa_nas.cli import guarded


def test_smoke_runs_both_arms_and_summarises(tmp_path):
    out = tmp_path / "asha.json"
    assert mo_asha.main(["--smoke", "--seeds", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    runs = {r["arm"]: r for r in result["runs"]}
    assert set(runs) == {"nsga2", "mo_asha"} and result["reference"] == mo_asha.SMOKE_REFERENCE
    for r in runs.values():
        assert r["history"] and r["final_hypervolume"] == r["history"][-1][1] > 0
        assert [t for t, _ in r["history"]] == sorted(t for t, _ in r["history"])
        assert r["trials"]["complete"] >= 1 and r["gpus"] == 1
    ladder = runs["mo_asha"]["rungs"]
    assert [g["rung"] for g in ladder] == [0, 1, 2] and ladder[0]["reached"] >= ladder[-1][
        "reached"
    ]
    assert not runs["nsga2"]["rungs"]  # full budgets: no ladder
    assert runs["mo_asha"]["rank_correlation"][0]["to_rung"] == 2
    (pair,) = result["summary"]["pairs"]
    assert pair["seed"] == 0 and pair["nsga2_final_hv"] == runs["nsga2"]["final_hypervolume"]
    assert "target" in result["summary"]["verdict"]


def test_merge_joins_runs_and_refuses_other_settings(tmp_path):
    def result(name, runs, tokens=100):
        path = tmp_path / name
        machine = {"device": "GPU", "device_type": "cuda"}
        settings = {"tokens": tokens}
        path.write_text(json.dumps({"machine": machine, "settings": settings, "runs": runs}))
        return str(path)

    def one(arm, seed, hv, gpu_s):
        return {
            "arm": arm,
            "seed": seed,
            "gpu_seconds": gpu_s,
            "final_hypervolume": hv,
            "history": [[gpu_s / 4, hv / 2], [gpu_s, hv]],
            "rank_correlation": [],
        }

    a = result("a.json", [one("nsga2", 0, 1.0, 400.0)])
    b = result("b.json", [one("mo_asha", 0, 1.2, 400.0)])
    out = tmp_path / "merged.json"
    assert mo_asha.main(["--merge", a, b, "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert {r["source"] for r in merged["runs"]} == {"a.json", "b.json"}
    (pair,) = merged["summary"]["pairs"]
    assert pair["mo_asha_gpu_s_to_reach"] == 400.0 and pair["nsga2_gpu_s"] == 400.0
    assert pair["share_of_nsga2_gpu_time"] == 1.0
    assert merged["summary"]["target_met"] is False
    other = result("c.json", [one("mo_asha", 1, 1.0, 1.0)], tokens=5)
    assert guarded(lambda: mo_asha.main(["--merge", a, other, "--out", str(out)])) == 2


def test_unknown_arms_and_bad_seeds_are_refused():
    assert guarded(lambda: mo_asha.main(["--smoke", "--arms", "hyperband"])) == 2
    assert guarded(lambda: mo_asha.main(["--smoke", "--seeds", "x"])) == 2
