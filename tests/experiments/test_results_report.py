"""docs/results.md and the README's Results section from the committed result files: the
decode section (issue 18), the GQA -> SQA conversion with its answer judged against Table 1's
seed spread (issue 20), Table 1 at 200M tokens shown as partial (issue 19); a result file
that cannot be rendered stops the report in one line, exit 2, with nothing written."""

from __future__ import annotations

import copy
import json
import math
import statistics
from pathlib import Path

import pytest

from experiments import (
    paper_table1,
    report_allocation,
    report_convert,
    report_inference,
    report_science,
    results_report,
)
from experiments.common import RESULTS
from sqa_nas.cli import guarded
from sqa_nas.stats import f_sf


def _load(name: str) -> dict:
    return {**json.loads((RESULTS / name).read_text()), "_file": name}


@pytest.fixture(scope="module")
def decode() -> dict:
    return _load("decode_h200.json")


@pytest.fixture(scope="module")
def converted() -> dict:
    return _load("convert_h200.json")


@pytest.fixture(scope="module")
def table_200m() -> dict:
    return _load("paper_table1_200M_h200.json")


def test_decode_section_has_a_row_per_variant_and_what_it_shows(decode):
    text = report_inference.decode(decode, RESULTS / "decode_h200.png")
    assert "NVIDIA H200" in text and decode["command"] in text
    m = decode["model"]
    head_dim = m["d_model"] // m["n_heads"]
    for row in decode["variants"]:
        h_q, h_kv = row["layers"]["n_q_heads"], row["layers"]["n_kv_heads"]
        # K and V, bf16, every layer: the per-token bytes follow H_kv, never H_q
        kib = 2 * m["n_layers"] * h_kv * head_dim * 2 / 1024
        speed = row["batch_32"]["decode_tokens_per_s"]
        assert f"| {row['variant']} | {h_q}/{h_kv} | " in text
        assert f"({row['batch_1']['ms_per_step']:.1f}) | {speed:,.0f} (" in text
        assert f"| {kib:g} KiB | " in text.split(f"| {row['variant']} | ")[1].split("\n")[0]
    assert "equals `sqa_nas.analytics`' count in every row" in text
    assert "The 7 variants that keep every token (MHA, GQA, MQA, SQA, sSQA, xSQA, xSMQA)" in text
    full = [r for r in decode["variants"] if r["layers"].get("window") is None]
    for b in decode["batch"]:  # each batch's sentence is what its own correlation says
        r, t = _pearson(full, b)
        sentence = text.split(f"At batch {b} ")[1].split("\n")[0]
        assert f"r = {r:.2f}, n = 7" in sentence
        if t <= 2.571:
            assert "whether the step time follows the cache cannot be told" in sentence
            continue
        assert sentence.startswith("the step time rises with the cache")
        # One row carries the line when, without it, r is no longer different from 0.
        lost = [
            (abs(_pearson(full[:i] + full[i + 1 :], b)[0]), row["variant"])
            for i, row in enumerate(full)
            if _pearson(full[:i] + full[i + 1 :], b)[1] <= 2.776  # t, 97.5%, df 4
        ]
        if lost:
            assert f"the line rests on {min(lost)[1]}: without it r = " in sentence
        else:
            assert "rests on" not in sentence
    assert "H_kv 4: GQA (16/4), SQA (8/4), xSQA (4/4) hold 16 KiB per token" in text
    assert "| SW-SQA | 8/4 | " in text and "513 (window 512)" in text
    sw = next(r for r in decode["variants"] if r["variant"] == "SW-SQA")
    sqa = next(r for r in decode["variants"] if r["variant"] == "SQA")
    ratio = sorted(
        sqa[f"batch_{b}"]["ms_per_step"] / sw[f"batch_{b}"]["ms_per_step"] for b in decode["batch"]
    )
    assert (
        f"SQA, which has the same heads and no window, takes {ratio[0]:.2f}-{ratio[-1]:.2f} "
        "times as long a step"
    ) in text
    assert "the file keeps only the median of 2 runs, not their spread, so no difference" in text
    assert "decode_h200.png" in text


def _pearson(variants: list[dict], batch: int) -> tuple[float, float]:
    """Pearson's r between KV-cache bytes and step time over `variants`, and its t
    statistic (n - 2 degrees of freedom), from first principles."""
    rows = [r[f"batch_{batch}"] for r in variants]
    x = [c["kv_cache_bytes"] for c in rows]
    y = [c["ms_per_step"] for c in rows]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    r = sxy / (sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y)) ** 0.5
    return r, abs(r) * ((len(x) - 2) / (1 - r * r)) ** 0.5


def test_decode_trend_is_a_line_through_the_cache_only_when_the_points_say_so(decode):
    exact = copy.deepcopy(decode)
    for row in exact["variants"]:
        for b in exact["batch"]:  # 4 ms + 0.25 ms per GiB: reads at 2^30 / 0.25 ms
            cell = row[f"batch_{b}"]
            cell["ms_per_step"] = 4 + 0.25 * cell["kv_cache_bytes"] / 2**30
            cell["ms_per_step_runs"] = [cell["ms_per_step"] * 0.98, cell["ms_per_step"] * 1.03]
    said = report_inference.findings(exact)
    assert any("the step time rises with the cache" in f and "r = 1.00" in f for f in said)
    assert any("4.0 ms plus 0.250 ms per GiB" in f and "at 4.3 TB/s" in f for f in said)
    assert "Between rows, the runs behind each median differ by up to 5% of it." in said
    flat = copy.deepcopy(decode)
    for i, row in enumerate(flat["variants"]):
        for b in flat["batch"]:  # alternating, unrelated to the cache
            row[f"batch_{b}"]["ms_per_step"] = 5.0 + (0.3 if i % 2 else -0.3)
    said = report_inference.findings(flat)
    assert not any("rises with the cache" in f or "falls" in f for f in said)
    told = "whether the step time follows the cache cannot be told"
    assert sum(told in f for f in said) == len(flat["batch"])
    falling = copy.deepcopy(exact)
    for row in falling["variants"]:
        for b in falling["batch"]:  # a step that gets faster as its cache grows
            cell = row[f"batch_{b}"]
            cell["ms_per_step"] = 9 - 0.25 * cell["kv_cache_bytes"] / 2**30
    said = report_inference.findings(falling)
    assert sum("the step time falls as the cache grows" in f for f in said) == 2
    assert not any("TB/s" in f or "cannot be told" in f for f in said)
    two = {**exact, "variants": [r for r in exact["variants"] if r["variant"] in {"MHA", "MQA"}]}
    said = report_inference.findings(two)
    assert sum("too few rows or cache sizes to relate the two" in f for f in said) == 2
    assert not any("r = " in f for f in said)
    once = {**decode, "repeats": 1}
    assert (
        "Between rows, the file keeps one run each, not their spread, so no difference "
        "between two rows is resolved." in report_inference.findings(once)
    )


def test_decode_findings_name_what_differs_and_claim_nothing_without_peers(decode):
    slow = copy.deepcopy(decode)
    sqa = next(r for r in slow["variants"] if r["variant"] == "SQA")
    sqa["batch_1"]["kv_cache_bytes"] += 2  # a cache that is not H_kv's
    text = report_inference.decode(slow)
    assert "differs from `sqa_nas.analytics`' count in SQA batch 1" in text
    assert "GQA (16/4), SQA (8/4)" not in text  # no longer one H_kv group of equal bytes
    alone = {**decode, "variants": decode["variants"][:1]}
    assert report_inference.findings(alone) == []


@pytest.fixture(scope="module")
def one_seed() -> dict:
    return {**json.loads((RESULTS / "parts" / "convert_h200_s0.json").read_text()), "_file": "s0"}


T975 = {1: 12.706, 2: 4.303, 3: 3.182}  # Student's t, 97.5% quantile, by degrees of freedom


def _ci(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval of a few numbers, from first principles (not sqa_nas.stats)."""
    n, mean = len(diffs), sum(diffs) / len(diffs)
    sd = (sum((x - mean) ** 2 for x in diffs) / (n - 1)) ** 0.5
    half = T975[n - 1] * sd / n**0.5
    return mean, mean - half, mean + half


def test_convert_section_judges_each_gap_by_its_interval_paired_by_seed(converted, table_200m):
    text = report_convert.convert(converted, None, [table_200m])
    seeds = converted["seeds"]
    assert len(seeds) >= 2 and "One seed" not in text
    assert f"paired by seed, with its 95% t-interval over {len(seeds)} seeds" in text
    loss = {
        (r["variant"], r["method"], r["fraction"], r["seed"]): r["val_loss"]
        for r in converted["runs"]
    }
    summary, verdicts = converted["summary"], []
    for variant in converted["variants"]:
        for f in converted["budget"]["fractions"]:
            method = min(converted["methods"], key=lambda m: summary[f"{variant}/{m}/{f}"]["mean"])
            diffs = [loss[variant, method, f, s] - loss[variant, "scratch", f, s] for s in seeds]
            mean, low, high = _ci(diffs)
            row = f"| {variant} | +{f:.0%} | {method} "
            assert row in text and f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]" in text.split(row)[1]
            verdicts.append("above" if low > 0 else "below" if high < 0 else "spans 0")
    kind = {frozenset({"above"}): "no", frozenset({"below"}): "yes"}.get(
        frozenset(verdicts), "not resolved"
    )
    assert f"**Answer ({len(seeds)} seeds): {kind}**" in text
    if kind == "not resolved":
        assert f"{verdicts.count('above')} end above scratch" in text
    assert f"| GQA | parent (200M tokens) | | {summary['GQA/parent/0.0']['mean']:.4f} ± " in text
    assert "Table 1 at the same tokens per run (paper_table1_200M_h200.json), seed 0: GQA" in text
    assert "convert_h200.json" in converted["command"] and converted["merged_from"]


def test_convert_answer_with_intervals_is_yes_no_or_not_resolved(converted):
    def shifted(by: float, spread: float) -> dict:
        """Every conversion `by` away from scratch at each seed, +-`spread` by seed."""
        d = copy.deepcopy(converted)
        scratch = {
            (r["variant"], r["fraction"], r["seed"]): r["val_loss"]
            for r in d["runs"]
            if r["method"] == "scratch"
        }
        for r in d["runs"]:
            if r["method"] in d["methods"] and r["fraction"] > 0:
                sign = 1 if r["seed"] % 2 else -1
                r["val_loss"] = (
                    scratch[r["variant"], r["fraction"], r["seed"]] + by + sign * spread
                )
        return d

    assert report_convert.answer(shifted(-0.05, 0.001), None)[0] == "yes"
    kind, why = report_convert.answer(shifted(0.05, 0.001), None)
    assert kind == "no" and "each 95% interval paired by seed (n=2) above 0" in why
    kind, why = report_convert.answer(shifted(0.05, 0.04), None)
    assert kind == "not resolved" and "0 end above scratch and 0 below" in why


def test_one_seed_is_judged_against_table1_spread(one_seed, table_200m):
    found = report_convert.spread(one_seed, [table_200m])
    sigma = max(s["val_loss"]["std"] for s in table_200m["summary"].values())
    assert found is not None and found["sigma"] == sigma
    text = report_convert.convert(one_seed, None, [table_200m])
    assert "**One seed (0): every value below is a single run.**" in text
    assert f"val loss std {sigma:.4f} over 3 seeds" in text and f"{2 * sigma:.4f}" in text
    gaps = [g["vs_scratch"]["mean"] for g in report_convert.gaps(one_seed)]
    for g in gaps:
        assert f"{g:+.4f} ({'beyond' if g > 2 * sigma else 'within'})" in text
    kind = report_convert.answer(one_seed, found)[0]
    assert kind == ("no" if min(gaps) > 2 * sigma else "not resolved")
    # a spread small enough: every gap beyond it; a large one: some within
    assert report_convert.answer(one_seed, {**found, "sigma": min(gaps) / 3})[0] == "no"
    kind, why = report_convert.answer(one_seed, {**found, "sigma": 1.0})
    assert kind == "not resolved" and "some within" in why
    # Without a spread at this budget (no Table 1 file of its tokens) nothing is judged.
    kind, why = report_convert.answer(one_seed, report_convert.spread(one_seed, []))
    assert kind == "not resolved" and "no seed-to-seed spread" in why
    other = {**table_200m, "budget": {**table_200m["budget"], "tokens_per_run": 12_000_000}}
    assert report_convert.spread(one_seed, [other]) is None
    assert "the gaps below are not judged" in report_convert.convert(one_seed, None, [other])


def test_convert_compares_only_with_table1_of_its_corpus(converted, table_200m):
    prose = _load("paper_table1_prose_200M_h200.json")
    assert prose["corpus"]["fingerprint"] != converted["corpus"]["fingerprint"]
    assert prose["budget"]["tokens_per_run"] == converted["budget"]["pretrain_tokens"]
    said = "\n".join(report_convert.notes(converted, [table_200m, prose]))
    assert "(paper_table1_200M_h200.json), seed 0" in said
    assert "paper_table1_prose_200M_h200.json" not in said
    assert report_convert.spread(converted, [prose])["where"].endswith(" here")


def test_the_paper_claims_have_one_row_each_and_a_column_per_table1_run():
    tables = [_load(p.name) for p in sorted(RESULTS.glob("paper_table1*_h200.json"))]
    text = report_science.claims_by_budget(tables)
    header, _, *rows = text.splitlines()
    cols = [c.strip() for c in header.strip("|").split("|")][1:]
    assert "embedded 12M" in cols and "prose 200M" in cols and len(cols) == len(tables)
    by_col = {
        f"{t.get('corpus_name', 'embedded')} {t['budget']['tokens_per_run'] / 1e6:g}M": t
        for t in tables
    }
    claims = set()
    for row in rows:
        claim, *cells = [c.strip() for c in row.strip("|").split("|")]
        claims.add(claim)
        for col, cell in zip(cols, cells, strict=True):
            diffs = _paired(by_col[col], *claim.split(" < "))
            if not diffs:  # a variant of the claim did not run there
                assert cell == ""
                continue
            mine = _ci(diffs)
            numbers = cell.split("** ")[1].split(" (n=")[0]
            said = numbers.replace("[", "").replace("]", "").replace(",", "").split()
            assert all(abs(float(x) - y) < 3e-4 for x, y in zip(said, mine, strict=True))
            low, high = mine[1:]
            verdict = "supports" if high < 0 else "contradicts" if low > 0 else "cannot tell"
            assert cell.startswith(f"**{verdict}** ") and cell.endswith(f"(n={len(diffs)})")
    # every adjacent pair of the paper's order that a table judged, once; GQA < SQA is
    # judged where both ran, though only the 50M table has them adjacent
    assert len(claims) == len(rows) and {"MHA < GQA", "MQA < xSMQA", "GQA < SQA"} <= claims
    gqa_sqa = next(r for r in rows if r.startswith("| GQA < SQA |"))
    assert all(c.strip() for c in gqa_sqa.strip("|").split("|")[1:])  # both ran everywhere
    assert text in results_report.render(RESULTS)
    assert text in results_report.readme_section(RESULTS)


def _paired(table: dict, a: str, b: str) -> list[float]:
    """a - b in val loss per seed where both ran, from the runs."""
    loss = {(r["label"], r["seed"]): r["val_loss"] for r in table["runs"]}
    return [loss[a, s] - loss[b, s] for s in table["seeds"] if (a, s) in loss and (b, s) in loss]


def test_a_table1_that_reads_its_corpus_more_than_once_says_how_often(table_200m):
    prose = _load("paper_table1_prose_200M_h200.json")
    passes = prose["budget"]["tokens_per_run"] / prose["corpus"]["tokens"]["train"]
    assert passes > 1 and f"(a run reads them {passes:.1f} times)" in results_report.table1(prose)
    assert "a run reads them" not in results_report.table1(table_200m)  # 200M of 377M


def _partial(table: dict, keep: set[tuple[str, int]]) -> dict:
    """`table` as if only the runs in `keep` (label, seed) had finished."""
    computed = {"corpus", "wall_s", "paper", "interval", "runs", "summary", "pairwise"}
    computed |= {"ordering", "curves", "experiment"}
    header = {k: v for k, v in table.items() if k not in computed}
    rows = [r for r in table["runs"] if (r["label"], r["seed"]) in keep]
    return paper_table1._payload(rows, header, table["wall_s"])


def test_table1_with_unequal_seeds_is_partial_with_n_per_variant(table_200m):
    first = {"MHA", "GQA", "SQA", "xSMQA"}
    keep = {
        (r["label"], r["seed"])
        for r in table_200m["runs"]
        if r["seed"] == 0 or (r["seed"] == 1 and r["label"] in first)
    }
    text = results_report.table1(_partial(table_200m, keep))
    assert (
        "**Partial: not every variant has every seed of [0, 1, 2] (n = 2 for MHA, GQA, SQA, "
        "xSMQA; n = 1 for MQA, lSQA, sSQA, xSQA).**"
    ) in text
    s0 = {r["label"]: r["val_loss"] for r in table_200m["runs"] if r["seed"] == 0}
    assert f"| sSQA | 8/8 | {s0['sSQA']:.4f} (1) | {s0['sSQA'] - s0['MHA']:+.4f} (n=1) |" in text
    assert "± 0.0000" not in text and "paper claim GQA < sSQA: **cannot tell**" in text


def test_page_and_readme_section_render_every_new_result():
    page = results_report.render(RESULTS)
    for title in (
        "### Paper Table 1 at every budget run",
        "### Paper Table 1 at 200M tokens per run, embedded corpus",
        "### Paper Table 1 at 200M tokens per run, prose corpus",
        "### Paper Table 1 at 50M tokens per run",
        "### Paper Table 1 at 12M tokens per run",
        "### Does the gap between variants grow with the budget?",
        "### Converting the trained GQA model to SQA layouts",
        "### Decoding with the exported model",
    ):
        assert page.count(title) == 1, title
    # The low-budget columns stay beside the 200M one.
    assert (
        "| variant | embedded 12M | embedded 50M | embedded 200M | prose 200M | paper (1.5B) |"
    ) in page
    section = results_report.readme_section(RESULTS)
    assert section.startswith("## Results: does the paper's quality ordering hold?")
    assert "- embedded 12M (NVIDIA H200; 3 seeds per variant)" in section
    assert "- embedded 200M (NVIDIA H200; 3 seeds per variant)" in section
    assert "- embedded 50M (NVIDIA H200; 3 seeds per variant)" in section
    assert "- prose 200M (NVIDIA H200; " in section
    assert "**Converting a trained GQA model to SQA layouts** (2 seeds" in section
    assert "**Decoding with the exported model**" in section
    assert "CPU" not in section  # the README's lines are the GPU results


def _without_batch(d: dict) -> None:
    del d["batch"]


def _without_a_cell(d: dict) -> None:
    del d["summary"]["SQA/fit/0.1"]


def _seeds_not_a_list(d: dict) -> None:
    d["seeds"] = 7


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("decode_h200.json", "{not json", "not a readable result file"),
        ("decode_h200.json", "[1, 2]", "not a result file (a JSON object was expected)"),
        ("decode_h200.json", _without_batch, "cannot render this decode result: missing key"),
        ("convert_h200.json", _without_a_cell, "missing key 'SQA/fit/0.1'"),
        ("convert_h200.json", _seeds_not_a_list, "cannot render this convert_gqa result"),
    ],
    ids=["not-json", "not-an-object", "decode-no-batch", "convert-cell-missing", "seeds-not-list"],
)
def test_a_result_file_that_cannot_be_rendered_is_one_line_and_nothing_written(
    tmp_path, capsys, name, content, message
):
    results = tmp_path / "results"
    results.mkdir()
    if callable(content):
        data = json.loads((RESULTS / name).read_text())
        content(data)
        content = json.dumps(data)
    (results / name).write_text(content)
    out = tmp_path / "results.md"
    for extra in ([], ["--section"]):
        argv = [*extra, "--results", str(results), "--out", str(out)]
        assert guarded(lambda argv=argv: results_report.main(argv)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in " ".join(err.split())
        assert len(err.strip().splitlines()) == 1 and name in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["results"]


def test_missing_folders_are_refused_before_anything_is_written(tmp_path, capsys):
    assert guarded(lambda: results_report.main(["--results", str(tmp_path / "none")])) == 2
    assert "not a folder" in capsys.readouterr().err
    out = tmp_path / "no" / "results.md"
    argv = ["--results", str(RESULTS), "--out", str(out)]
    assert guarded(lambda: results_report.main(argv)) == 2
    assert f"no folder {out.parent}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_page_is_written_where_asked(tmp_path, capsys):
    out = tmp_path / "results.md"
    assert results_report.main(["--out", str(out)]) == 0
    assert out.read_text() == results_report.render(RESULTS)
    assert Path(capsys.readouterr().out.split()[-1]) == out


def test_scaling_names_the_seeds_of_each_budget():
    d = json.loads((RESULTS / "scaling_h200.json").read_text())
    text = report_science.scaling(d)
    for budget, point in zip(d["budgets"], d["points"], strict=True):
        seeds = sorted({s for gap in point["gaps"] for s in gap["seeds"]})
        assert f"{budget / 1e6:g}M {seeds}" in text


def _light(losses: dict[str, list[float]], speeds: dict[str, list[float]], lsqa: dict) -> dict:
    """A light-SQA result of the issue-19 format with these per-seed values."""
    runs = [
        {"label": k, "seed": s, "state": "COMPLETE", "val_loss": x, "train_tokens_per_s": v}
        for k in losses
        for s, (x, v) in enumerate(zip(losses[k], speeds[k]))
    ]
    return {
        "allocations": ["12/4", "8/8", "8/4"],
        "seeds": [0, 1, 2],
        "budget": {"tokens_per_run": 1000},
        "machine": {"device": "test"},
        "light": "12/4",
        "summary": {
            "lSQA": {"allocation": "12/4 x8"},
            "sSQA": {"allocation": "8/8 x8"},
            "SQA": {"allocation": "8/4 x8"},
        },
        "runs": runs,
        "front": {"lSQA": lsqa, "sSQA": {}, "SQA": {}},
        "lsqa": lsqa,
    }


def test_the_light_sqa_line_gives_the_intervals_that_decide_lsqa():
    losses = {"lSQA": [0.640, 0.638, 0.637], "sSQA": [0.630, 0.632, 0.626], "SQA": [0.64] * 3}
    speeds = {"lSQA": [100.0, 100.0, 100.0], "sSQA": [104.0, 103.0, 105.0], "SQA": [99.0] * 3}
    beaten = {"verdict": "off the front", "beaten_by": ["sSQA"], "could_be_beaten_by": ["SQA"]}
    line = report_allocation.light_digest(_light(losses, speeds, beaten))
    # sSQA - lSQA per seed: -0.010, -0.006, -0.011; speeds +4, +3, +5 on lSQA's 100
    assert (
        "lSQA (12/4) off the front, beaten beyond the noise by sSQA (8/8): val loss sSQA − lSQA "
        "-0.0090" in line
    )
    assert "tokens/s +4.0% [+1.5%, +6.5%] of lSQA's (n=3, paired by seed; down to -2%" in line
    assert "SQA (8/4)" not in line  # the undecided ones are named only when none decides
    assert "the other 2 allocations; the intervals are not adjusted" in line

    undecided = {"verdict": "not resolved", "beaten_by": [], "could_be_beaten_by": ["SQA"]}
    line = report_allocation.light_digest(_light(losses, speeds, undecided))
    assert "not resolved, could be beaten by SQA (8/4): val loss SQA − lSQA +0.0017" in line

    alone = {"verdict": "on the front", "beaten_by": [], "could_be_beaten_by": []}
    line = report_allocation.light_digest(_light(losses, speeds, alone))
    assert line.endswith("lSQA (12/4) on the front.")
    not_run = report_allocation.light_digest(_light(losses, speeds, {"verdict": "not run"}))
    assert not_run.endswith("lSQA (12/4) not run.")

    no_speed = _light(losses, speeds, beaten)  # a run without a speed: left out, as judged
    del no_speed["runs"][0]["train_tokens_per_s"]
    assert "(n=2, paired by seed" in report_allocation.light_digest(no_speed)


def test_the_light_page_names_what_it_trained_and_what_it_reused(tmp_path):
    table = {"runs": [{"label": "MHA", "seed": 0}], "git_revision": "abcdef123"}
    (tmp_path / "t1.json").write_text(json.dumps(table))
    runs = [{"label": "MHA", "seed": 0}, {"label": "16/8", "seed": 0}]
    d = {"reused_from": str(tmp_path / "t1.json"), "runs": runs}  # absolute: ROOT / it is it
    text = report_allocation._reuse_caveat(d)
    assert text.startswith(
        " 16/8 were trained by this command, the others reused (reused runs: git revision abcdef1)"
    )
    d["reused_from"] = str(tmp_path / "gone.json")  # unmarked runs, no table to match
    assert report_allocation._reuse_caveat(d) == (
        " Which runs were reused is not recorded, and the table is not here."
    )
    d["runs"][0]["reused"] = True  # marked runs need no table
    assert report_allocation._reuse_caveat(d).startswith(" 16/8 were trained by this command")


def _per_layer(losses: dict[str, list[float]], noise: dict | None, found: float) -> dict:
    """A per-layer result whose confirm retrained these labels with these val losses."""
    runs = [
        {"label": k, "seed": 100 + i, "state": "COMPLETE", "val_loss": x}
        for k, xs in losses.items()
        for i, x in enumerate(xs)
    ]
    return {
        "space": {"budget": {"train": {"tokens": 1000}}},
        "budget": {"tokens_per_run": 1000},
        "search": {"trials": 48, "noise": noise},
        "seeds": [100, 101, 102],
        "machine": {"device": "test"},
        "mixed": [{"label": "mixed1", "trial": 17, "search_values": {"val_loss": found}}],
        "runs": runs,
        "verdict": {"answer": "not resolved", "why": "the reason"},
        "comparisons": {},
        "tolerance": 0.05,
    }


def test_the_per_layer_confirm_checks_the_search_noise_floor_and_its_choice():
    losses = {"mixed1": [0.640, 0.650, 0.660], "MHA": [0.610, 0.614, 0.618]}
    floor = {"n": 3, "val_loss_std": 0.001, "trial": 0, "device": "test"}
    # two-way table: seed means 0.625, 0.632, 0.639, allocation means 0.650, 0.614; the
    # residuals +-0.003, 0, -+0.003 -> SS 4 * 9e-6 = 3.6e-5 over (2-1)(3-1) = 2 df
    pair = math.sqrt(3.6e-5 / 2)
    p = f_sf((pair / 0.001) ** 2, 2, 2)
    lucky = report_allocation.search_check(_per_layer(losses, floor, 0.5990))
    text = "\n".join(lucky["lines"])
    # Two degrees of freedom place a sigma within 0.52-6.3 times the measured one.
    floor_ci = "[0.0005, 0.0063]"
    assert f"val_loss sigma 0.0010 {floor_ci} (3 seeds of trial 0, one layout, 2 degrees" in text
    low, high = 0.5207 * pair, 6.2847 * pair
    assert f"has sigma {pair:.4f} [{low:.4f}, {high:.4f}] (2 allocations x 3 seeds, 2 degrees" in (
        text
    )
    assert f"{pair / 0.001:.1f} times the floor (one-sided F test, p = {p:.3f})" in text
    verdict = "beyond chance" if p < 0.05 else "cannot be told from it"
    assert verdict in text
    assert "Std over seeds per allocation: mixed1 0.0100, MHA 0.0040." in text
    # mixed1's prediction interval: 0.650 +- 4.303 * 0.01 * sqrt(4/3) = 0.650 +- 0.0497
    assert "lands in 0.6003-0.6997" in text and "below it, as choosing on a lucky run" in text
    assert lucky["short"] == (
        f"allocation x seed noise sigma {pair:.4f}, {pair / 0.001:.1f} times the search's "
        f"noise floor (p = {p:.3f}); 1 of 1 mixed allocations' search values below where a "
        "fresh seed lands"
    )
    fair = report_allocation.search_check(_per_layer(losses, floor, 0.6010))
    assert "within it" in "\n".join(fair["lines"]) and "0 of 1 mixed" in fair["short"]

    unmeasured = {"n": 0, "reason": "off on the CPU"}
    text = "\n".join(report_allocation.search_check(_per_layer(losses, unmeasured, 0.6))["lines"])
    assert "Noise: the search measured no noise floor (off on the CPU). In the confirm" in text
    other = _per_layer(losses, floor, 0.5990)
    other["budget"]["tokens_per_run"] = 2000  # a study searched at another budget
    text = "\n".join(report_allocation.search_check(other)["lines"])
    assert "The search trained 1000 tokens per trial, the confirm 2000" in text
    assert "lands in" not in text
    line = report_allocation.per_layer_digest(_per_layer(losses, floor, 0.5990))
    assert line.endswith(f"(the reason). The search against its confirm: {lucky['short']}.")


def test_the_per_layer_confirm_checks_the_search_speed_floor():
    losses = {"mixed1": [0.640, 0.650, 0.660], "MHA": [0.610, 0.614, 0.618]}
    floor = {"n": 3, "val_loss_std": 0.001, "speedup_rel_std": 0.001, "trial": 0}
    d = _per_layer(losses, floor, 0.65)
    speedups = {"mixed1": [1.0, 1.1, 1.2], "MHA": [1.0, 1.0, 1.0]}
    for r in d["runs"]:
        r["speedup_vs_mha"] = speedups[r["label"]][r["seed"] - 100]
    logs = [math.log(x) for x in speedups["mixed1"]]
    mean = sum(logs) / 3
    spread = math.sqrt(sum((x - mean) ** 2 for x in logs) / 4)  # MHA's 2 df add no spread
    check = report_allocation.search_check(d)
    text = "\n".join(check["lines"])
    assert f"differs between its confirm runs by {spread:.2%}" in text
    assert "pooled over 2 allocations, 4 degrees of freedom" in text
    assert "the search took 0.10% (3 timings of its noise trial in one process): " in text
    assert f"{spread / 0.001:.1f} times that" in text and "noisier than the search's floor" in text
    assert f"speedup spread between runs {spread:.2%}" in check["short"]
    # Within the floor: the same spread against a floor as large.
    calm = report_allocation.Noise(n=3, speedup_rel_std=spread)
    assert (
        "the floor cannot be told from it"
        in (report_allocation.speed_check(d["runs"], calm)["lines"][0])
    )
    # No run repeated: nothing to say about speed.
    assert report_allocation.speed_check(d["runs"][:1], report_allocation.Noise())["lines"] == []


def test_an_open_per_layer_answer_says_which_axis_keeps_it_open():
    d = _per_layer({"mixed1": [0.64, 0.65, 0.66]}, None, 0.65)

    def pair(speed, diff, low, high, verdict="cannot tell"):
        return {
            "speed_ratio": sum(speed) / 2,
            "speed_ci95": speed,
            "diff_mean": diff,
            "ci95_low": low,
            "ci95_high": high,
            "verdict": verdict,
        }

    d["comparisons"] = {
        "mixed1": {
            # uniform lower beyond the noise; its speed at least the mixed one's less 5%
            "MHA": pair([0.97, 1.04], -0.03, -0.04, -0.02, "uniform better"),
            # mixed lower beyond the noise; the speed interval shows neither as fast
            "GQA": pair([0.90, 1.30], 0.01, 0.002, 0.018),
            "SQA": pair([1.10, 1.20], 0.0, -0.01, 0.01),  # the uniform one faster
            "lSQA": pair([0.80, 0.90], 0.0, -0.01, 0.01),  # the mixed one faster
            "sSQA": pair([0.95, 1.20], 0.0, -0.01, 0.01),  # at the edge: as fast
            "xSQA": {"verdict": "no runs"},  # not a pair
        }
    }
    still = report_allocation.what_keeps_it_open(d)
    assert still["short"] == (
        "the val loss differs beyond the noise in 2 of 5 pairs (MHA lower than mixed1 by "
        "0.0300 [0.0200, 0.0400], speed ratio 1.005 [0.970, 1.040]: uniform better; mixed1 "
        "lower than GQA by 0.0100 [0.0020, 0.0180], speed ratio 1.100 [0.900, 1.300]: cannot "
        "tell); the speed interval shows one of the two at least as fast (ratio at or above "
        "0.95, or at or below 1.05) in 4 of 5, the intervals a median 0.10 wide"
    )
    assert still["lines"][0] == f"What keeps it open: {still['short']}."
    assert "What keeps it open: " + still["short"] in report_allocation.per_layer_digest(d)
    d["verdict"]["answer"] = "no"
    assert report_allocation.what_keeps_it_open(d) == {"lines": [], "short": ""}


def test_a_per_layer_result_names_its_budget_and_the_trials_a_scheduler_stopped():
    d = _per_layer({"mixed1": [0.64, 0.65]}, None, 0.65)
    assert report_allocation.trials_text(d) == "48 trials"  # from before the count
    d["search"]["full_budget"] = 13
    assert report_allocation.trials_text(d) == "48 trials, 13 at the full budget"
    assert report_allocation.run_tokens(d) == 1000
    del d["budget"]  # a file from before its budget: its space's tokens
    d["space"]["budget"]["train"]["tokens"] = 15_000_000
    line = report_allocation.per_layer_digest(d)
    assert "(a search of 48 trials, 13 at the full budget, its mixed allocations " in line
    assert "retrained with seeds [100, 101, 102] at 15,000,000 tokens, test)" in line


def test_a_merged_table_names_the_revision_each_of_its_parts_ran_at():
    one = {"command": "merge", "git_revision": "aaa", "merged_from": []}
    assert report_science.provenance(one).endswith("Git revision aaa.")
    parts = [
        {"file": "parts/t_s0.json", "command": "c0", "git_revision": "aaa"},
        {"file": "parts/t_s1.json", "command": "c1", "git_revision": "aaa"},
        {"file": "parts/t_s2.json", "command": "c2", "git_revision": "bbb"},
    ]
    text = report_science.provenance({**one, "merged_from": parts})
    assert text.endswith("Git revisions: aaa (t_s0.json, t_s1.json); bbb (t_s2.json).")
    same = report_science.provenance({**one, "merged_from": parts[:2]})
    assert same.endswith("joined from `c1`. Git revision aaa.")


def test_table1_gives_the_range_of_each_variant_s_training_speed_and_its_worst_spread(
    table_200m,
):
    page = report_science.table1(table_200m)
    speeds = {}
    for r in table_200m["runs"]:
        if r["state"] == "COMPLETE":
            speeds.setdefault(r["label"], []).append(r["train_tokens_per_s"])
    low, high = min(speeds["xSQA"]) / 1e6, max(speeds["xSQA"]) / 1e6
    assert f"({low:.2f}-{high:.2f}M) |" in page
    worst = max(
        speeds, key=lambda v: (max(speeds[v]) - min(speeds[v])) / statistics.fmean(speeds[v])
    )
    spread = (max(speeds[worst]) - min(speeds[worst])) / statistics.fmean(speeds[worst])
    assert f"lie up to {spread:.0%} of its mean apart ({worst})" in page


def test_gpu_busy_counts_only_the_samples_inside_the_training_steps():
    from experiments.science import gpu_busy
    from sqa_nas.search.utilisation import Utilisation

    seen = Utilisation(
        0.5,
        {"GPU 0": 0.5},
        trace={"t_s": [1.0, 2.0, 3.0, 4.0], "by_gpu": {"GPU 0": [0.0, 1.0, 0.6, None]}},
    )
    # sampled from t = 100 s; training ran 101.5-103.5 s: the samples at 102 and 103 s
    assert gpu_busy(seen, 100.0, [(101.5, 103.5)]) == {
        "gpu_busy": 0.5,
        "gpu_busy_training": 0.8,
    }
    assert gpu_busy(seen, 100.0, [])["gpu_busy_training"] is None
    assert gpu_busy(Utilisation(None, note="no NVML"), 0.0, []) == {
        "gpu_busy": None,
        "gpu_busy_note": "no NVML",
    }


def test_table1_says_how_busy_the_gpu_was_in_the_slowest_and_fastest_run(table_200m):
    d = copy.deepcopy(table_200m)
    xsqa = sorted(
        (r for r in d["runs"] if r["label"] == "xSQA"), key=lambda r: r["train_tokens_per_s"]
    )
    xsqa[0]["gpu_busy_training"], xsqa[-1]["gpu_busy_training"] = 0.61, 0.99
    assert (
        "its slowest run kept the GPU busy 61% of its training steps' time, its fastest 99%"
        in (report_science.table1(d))
    )
    assert "kept the GPU busy" not in report_science.table1(table_200m)  # not recorded there


def test_table1_splits_its_noise_into_the_seeds_shared_part_and_what_pairs_face(table_200m):
    from experiments.science import noise_parts

    losses: dict = {}
    for r in table_200m["runs"]:
        losses.setdefault(r["label"], {})[r["seed"]] = r["val_loss"]
    parts = noise_parts(losses, [0, 1, 2])
    page = report_science.table1(table_200m)
    assert f"share part of their noise, sigma {parts['shared']:.4f} here" in page
    assert f"has sigma {parts['pair']:.4f} (8 variants x 3 seeds, 14 degrees of freedom)" in page
    assert f"sigma {parts['pair'] * math.sqrt(2):.4f} at one seed" in page
