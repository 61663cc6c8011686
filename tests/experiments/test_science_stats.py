"""The analysis of issue 19's results on made-up runs (no training): paired intervals and
verdicts, the paper's claims, the scaling of gaps, light SQA's front with intervals, the
per-layer answer, the split of the noise under common random numbers, and the command-line
refusals of `--merge` and `--scaling`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments import light_sqa, paper_table1, per_layer, report_science
from experiments.paper_table1 import scaling
from experiments.science import SMOKE_MODEL, aggregate, curves, noise_parts, pairwise
from sqa_nas.cli import guarded
from sqa_nas.errors import UserError

MHA = {0: 1.00, 1: 1.10, 2: 1.20}


def _rows(losses: dict[str, dict[int, float]], speed: dict[str, float] | None = None):
    """COMPLETE runs with these val losses by label and seed."""
    return [
        {
            "label": label,
            "seed": seed,
            "state": "COMPLETE",
            "allocation": "16/16 x8",
            "val_loss": loss,
            "accuracy": 0.5,
            "train_tokens_per_s": (speed or {}).get(label, 1e6) * (1 + 0.001 * seed),
            "throughput_tokens_per_s": (speed or {}).get(label, 1e6),
            "curve": [[100, loss + 1.0], [200, loss + 0.5]],
            "corpus": {"kind": "embedded", "fingerprint": "f" * 64, "tokens": {"train": 9}},
        }
        for label, by_seed in losses.items()
        for seed, loss in by_seed.items()
    ]


def _shift(by_seed: dict[int, float], *deltas: float) -> dict[int, float]:
    return {s: v + d for (s, v), d in zip(by_seed.items(), deltas)}


def test_pairwise_says_supports_contradicts_or_cannot_tell():
    rows = _rows(
        {
            "MHA": MHA,
            "GQA": _shift(MHA, 0.020, 0.021, 0.019),  # above MHA on every seed: the paper's
            "sSQA": _shift(MHA, 0.010, 0.011, 0.009),  # below GQA: "GQA < sSQA" contradicted
            "SQA": _shift(MHA, 0.05, -0.04, 0.02),  # noisy: cannot tell against sSQA
        }
    )
    pairs = pairwise(rows, ["MHA", "GQA", "sSQA", "SQA"])
    by = {(p["kind"], p["a"], p["b"]): p for p in pairs}
    gqa = by[("vs MHA", "GQA", "MHA")]
    assert gqa["n"] == 3 and gqa["diff_mean"] == pytest.approx(0.02)
    assert gqa["ci95_low"] > 0 and gqa["verdict"] == "higher"
    assert by[("vs GQA", "sSQA", "GQA")]["verdict"] == "lower"
    assert ("vs GQA", "MHA", "GQA") not in by  # MHA - GQA is GQA - MHA again
    claims = {p["claim"]: p["verdict"] for p in pairs if p["kind"] == "paper claim"}
    assert claims == {
        "MHA < GQA": "supports",
        "GQA < sSQA": "contradicts",
        "sSQA < SQA": "cannot tell",
    }
    agg = aggregate(rows)
    assert {k: agg["GQA"][k] for k in ("n",)} == {"n": 3}
    assert agg["GQA"]["mean"] == agg["GQA"]["val_loss"]["mean"]
    assert curves(rows)["MHA"]["tokens"] == [100, 200]


def test_a_pair_with_one_seed_cannot_tell():
    rows = _rows({"MHA": {0: 1.0}, "GQA": {0: 1.5}})
    (pair, claim) = pairwise(rows, ["MHA", "GQA"])
    assert pair["ci95_low"] is None and pair["verdict"] == "cannot tell"
    assert claim["verdict"] == "cannot tell"


def _table(tokens: int, gaps: dict[str, tuple[float, ...]], **extra) -> dict:
    losses = {"MHA": MHA} | {v: _shift(MHA, *d) for v, d in gaps.items()}
    rows = _rows(losses)
    header = {
        "budget": {"tokens_per_run": tokens, "batch_size": 4, "seq_len": 64, "lr": 2e-3}
        | {"eval_batches": 2, "compile": False, "curve_points": 1},
        "model": SMOKE_MODEL,
        "seeds": [0, 1, 2],
        "variants": list(losses),
        "corpus_name": "embedded",
        "data": {"kind": "embedded"},
        "git_revision": "abc",
    }
    table = paper_table1._payload(rows, header, 1.0) | extra
    return table | {"machine": {"device": "cpu", "torch": "x"}, "command": f"made {tokens}"}


def test_scaling_says_grows_shrinks_stays():
    small = _table(
        1000, {"GQA": (0.01, 0.011, 0.009), "SQA": (0.05, 0.051, 0.049), "xSQA": (0.03,) * 3}
    )
    large = _table(
        4000, {"GQA": (0.03, 0.031, 0.029), "SQA": (0.01, 0.011, 0.009), "xSQA": (0.0301,) * 3}
    )
    result = scaling([large, small], margin=0.005)
    assert result["budgets"] == [1000, 4000]
    verdicts = {(t["a"], t["b"]): t["verdict"] for t in result["trends"]}
    assert verdicts[("GQA", "MHA")] == "grows"
    assert verdicts[("SQA", "MHA")] == "shrinks"
    assert verdicts[("xSQA", "MHA")] == "stays"
    assert "**grows**" in report_science.scaling(result | {"seeds": [0, 1, 2]} | small)
    with pytest.raises(UserError, match="differ in model"):
        scaling([small, _table(4000, {}, model={"d_model": 1})], margin=0.005)


def test_light_sqa_front_with_intervals():
    base = {0: 1.0, 1: 1.1, 2: 1.2}
    rows = _rows(
        {
            "MHA": base,
            "lSQA": _shift(base, 0.05, 0.051, 0.049),  # worse than SQA, and slower
            "SQA": _shift(base, 0.01, 0.011, 0.009),
            "xSQA": _shift(base, 0.05, -0.05, 0.0),  # fastest; its loss is noise
        },
        speed={"MHA": 1e6, "lSQA": 1.3e6, "SQA": 1.5e6, "xSQA": 2e6},
    )
    front = light_sqa.front_verdicts(rows)
    assert front["lSQA"]["verdict"] == "off the front" and "SQA" in front["lSQA"]["beaten_by"]
    assert front["xSQA"]["verdict"] == "on the front"  # fastest beyond the noise
    # The lowest loss, but xSQA's loss is noise: it may be as good and it is faster.
    assert front["MHA"] == {
        "verdict": "not resolved",
        "beaten_by": [],
        "could_be_beaten_by": ["xSQA"],
    }
    clear = [r | {"val_loss": r["val_loss"] + 0.3} if r["label"] == "xSQA" else r for r in rows]
    assert light_sqa.front_verdicts(clear)["MHA"]["verdict"] == "on the front"


def test_per_layer_answer_yes_no_not_resolved():
    base = {100: 1.0, 101: 1.1, 102: 1.2}
    speed = {"mixed1": 1.5e6, "MHA": 1e6, "SQA": 1.5e6, "xSQA": 2e6}

    def answer(mixed_shift, xsqa_shift=(0.2, 0.2, 0.2)):
        rows = _rows(
            {
                "mixed1": _shift(base, *mixed_shift),
                "MHA": _shift(base, -0.1, -0.1, -0.1),
                "SQA": base,
                "xSQA": _shift(base, *xsqa_shift),
            },
            speed=speed,
        )
        comparisons = per_layer.compare(rows, aggregate(rows), ["mixed1"], 0.05)
        assert comparisons["mixed1"]["xSQA"]["speed_ratio"] == pytest.approx(4 / 3)
        return per_layer.answer(comparisons, 0.05)["answer"], {
            u: c["verdict"] for u, c in comparisons["mixed1"].items()
        }

    # Better than MHA (slower) and SQA (as fast); xSQA is faster with a higher loss.
    assert answer((-0.20, -0.21, -0.19)) == (
        "yes",
        {"MHA": "mixed better", "SQA": "mixed better", "xSQA": "trade-off"},
    )
    # SQA, as fast, has the lower loss; MHA's lower loss is bought with speed.
    assert answer((0.05, 0.051, 0.049)) == (
        "no",
        {"MHA": "trade-off", "SQA": "uniform better", "xSQA": "trade-off"},
    )
    assert answer((-0.05, 0.05, 0.0))[0] == "not resolved"
    # A faster uniform variant with a lower loss beats it, however much faster.
    assert answer((-0.20, -0.21, -0.19), xsqa_shift=(-0.3, -0.3, -0.3)) == (
        "no",
        {"MHA": "mixed better", "SQA": "mixed better", "xSQA": "uniform better"},
    )


def test_per_layer_speed_is_the_paired_speedup_with_its_interval():
    base = {100: 1.0, 101: 1.1, 102: 1.2}
    rows = _rows({"mixed1": _shift(base, -0.2, -0.21, -0.19), "SQA": base})
    # The machine drifts from run to run (throughputs); the speedups, paired with the MHA
    # step inside each run, do not.
    drift = {("mixed1", 100): 2.0, ("mixed1", 101): 1.3, ("SQA", 102): 0.8}
    speedup = {"mixed1": {100: 1.2, 101: 1.21, 102: 1.19}, "SQA": {100: 1.2, 101: 1.2, 102: 1.2}}
    for r in rows:
        key = (r["label"], r["seed"])
        r["speedup_vs_mha"] = speedup[r["label"]][r["seed"]]
        r["throughput_tokens_per_s"] = 1e6 * drift.get(key, 1.0) * r["speedup_vs_mha"]
    c = per_layer.compare(rows, aggregate(rows), ["mixed1"], 0.05)["mixed1"]["SQA"]
    low, high = c["speed_ci95"]
    assert c["speed_ratio"] == pytest.approx(1.0, abs=1e-3) and c["speed_n"] == 3
    assert low < c["speed_ratio"] < high < 1.05
    assert c["verdict"] == "mixed better"
    # A seed whose run lacks its speedup compares throughputs, never one with the other.
    del rows[0]["speedup_vs_mha"]  # mixed1, seed 100
    ratio = per_layer.speed_ratio(rows, "SQA", "mixed1")
    seed100 = 1.2 / (2.0 * 1.2)  # SQA over mixed1 throughputs: mixed1's run drifted 2x
    expected = (seed100 * (1.2 / 1.21) * (1.2 / 1.19)) ** (1 / 3)  # speedups at 101, 102
    assert ratio["n"] == 3 and ratio["ratio"] == pytest.approx(expected)
    # Speeds too noisy to say whether the mixed one is as fast: no verdict.
    for r in rows:
        if r["label"] == "SQA":
            r["speedup_vs_mha"] = {100: 1.0, 101: 1.6, 102: 1.2}[r["seed"]]
    c = per_layer.compare(rows, aggregate(rows), ["mixed1"], 0.05)["mixed1"]["SQA"]
    assert c["speed_ci95"][1] > 1.05 and c["verdict"] == "cannot tell"


def test_per_layer_yes_needs_a_uniform_variant_at_its_speed():
    base = {100: 1.0, 101: 1.1, 102: 1.2}
    rows = _rows(
        {
            "mixed1": _shift(base, -0.20, -0.21, -0.19),
            "MHA": base,
            "SQA": _shift(base, -0.5, -0.5, -0.5),
        },
        speed={"mixed1": 1.5e6, "MHA": 1e6, "SQA": 0.5e6},
    )
    # Better than MHA only where MHA is slower; SQA is slower still, with a lower loss.
    comparisons = per_layer.compare(rows, aggregate(rows), ["mixed1"], 0.05)
    assert {u: c["verdict"] for u, c in comparisons["mixed1"].items()} == {
        "MHA": "mixed better",
        "SQA": "trade-off",
    }
    assert per_layer.answer(comparisons, 0.05)["answer"] == "not resolved"
    # A uniform variant without a finished run leaves the question open.
    rows = [r for r in rows if r["label"] != "SQA"] + [
        {"label": "SQA", "seed": 100, "state": "FAIL", "val_loss": None}
    ]
    comparisons = per_layer.compare(rows, aggregate(rows), ["mixed1"], 0.05)
    assert comparisons["mixed1"]["SQA"] == {"verdict": "no runs"}


def _write(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def _refused(capsys, main, args, message):
    capsys.readouterr()
    assert guarded(lambda: main(args)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_merge_and_scaling_refuse_what_does_not_join(tmp_path, capsys):
    one = _write(tmp_path / "one.json", _table(1000, {"GQA": (0.01,) * 3}))
    other = _table(1000, {"GQA": (0.01,) * 3}, corpus_name="prose")
    other["runs"] = [r | {"seed": r["seed"] + 10} for r in other["runs"]]
    out = str(tmp_path / "out.json")
    cases = [
        ([_write(tmp_path / "bad.json", {}) + "x"], "cannot read"),  # no such file
        ([_write(tmp_path / "t3.json", {"experiment": "paper_table3"})], "not a paper_table1"),
        ([one, one], "MHA seed 0 is in more than one"),
        ([one, _write(tmp_path / "p.json", other)], "has another corpus_name"),
    ]
    for files, message in cases:
        _refused(capsys, paper_table1.main, ["--merge", *files, "--out", out], message)
    later = _write(tmp_path / "later.json", _table(1000, {"GQA": (0.02,) * 3}))
    for files, message in (
        ([one], "two budgets or more"),
        ([one, later], "two tables at the same budget"),
    ):
        _refused(capsys, paper_table1.main, ["--scaling", *files, "--out", out], message)
    assert not Path(out).exists() and not Path(out).with_suffix(".png").exists()


def test_scaling_command_writes_the_verdicts_and_a_plot(tmp_path):
    files = [
        _write(tmp_path / f"t{n}.json", _table(n, {"GQA": (g, g + 0.001, g - 0.001)}))
        for n, g in ((1000, 0.01), (4000, 0.02), (16000, 0.04))
    ]
    out = tmp_path / "s.json"
    paper_table1.main(["--scaling", *files, "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["budgets"] == [1000, 4000, 16000] and data["git_revision"]
    assert {(t["a"], t["verdict"]) for t in data["trends"]} >= {("GQA", "grows")}
    assert [t["command"] for t in data["tables"]] == ["made 1000", "made 4000", "made 16000"]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_noise_parts_split_the_seeds_shared_effect_from_the_rest():
    # y = allocation + seed + e: with e = 0 everything is shared, nothing pairs
    seeds = [0, 1, 2]
    shared = {"a": {0: 1.0, 1: 1.1, 2: 0.9}, "b": {0: 2.0, 1: 2.1, 2: 1.9}}
    parts = noise_parts(shared, seeds)
    assert parts["pair"] == pytest.approx(0.0, abs=1e-12) and parts["df"] == 2
    assert parts["shared"] == pytest.approx(0.1)  # the seed means' std: 1.5 +- 0.1
    # a residual of +-d on one seed pair: residuals d/2... by hand: table [[0, d], [0, -d]]
    d = 0.02
    table = {"a": {0: 0.0, 1: d, 2: 0.0}, "b": {0: 0.0, 1: -d, 2: 0.0}, "c": {0: 0.0}}
    parts = noise_parts(table, seeds)  # c lacks seeds: left out
    # row means d/3, -d/3; column means 0; residuals: a: -d/3, 2d/3, -d/3; b the negatives
    ss = 2 * (d**2 / 9 + 4 * d**2 / 9 + d**2 / 9)
    assert parts["allocations"] == 2 and parts["pair"] == pytest.approx(math.sqrt(ss / 2))
    assert noise_parts({"a": {0: 1.0, 1: 2.0}}, [0, 1]) is None


def test_a_confirm_run_starts_only_when_it_would_end_in_time():
    assert per_layer.fits(100.0, [], None) and per_layer.fits(100.0, [], 100.0)
    assert not per_layer.fits(100.5, [], 100.0)  # past the limit, whatever a run takes
    rows = [{"wall_s": 90.0}, {"wall_s": None}, {"wall_s": 100.0}]
    assert per_layer.fits(300.0, rows, 400.0)
    assert not per_layer.fits(301.0, rows, 400.0)  # the longest run decides
    # A row from before wall times were kept: its training time, with the run's overhead.
    old = [{"train_s": 80.0}]
    assert per_layer.fits(300.0, old, 300.0 + 80 * per_layer.RUN_OVERHEAD)
    assert not per_layer.fits(300.0, old, 300.0 + 80.0)
