"""docs/results.md and the README's Results section from the committed result files: the
decode section (issue 18), the GQA -> SQA conversion with its answer judged against Table 1's
seed spread (issue 20), Table 1 at 200M tokens shown as partial (issue 19); a result file
that cannot be rendered stops the report in one line, exit 2, with nothing written."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from experiments import report_convert, report_inference, results_report
from experiments.common import RESULTS
from sqa_nas.cli import guarded


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
    assert "Decode speed does not follow H_q or H_kv here: the 7 variants" in text
    assert "H_kv 4: GQA (16/4), SQA (8/4), xSQA (4/4) hold 16 KiB per token" in text
    assert "| SW-SQA | 8/4 | " in text and "513 (window 512)" in text
    assert "times faster than SQA, which has the same heads and no window" in text
    assert "decode_h200.png" in text


def test_decode_findings_name_what_differs_and_claim_nothing_without_peers(decode):
    slow = copy.deepcopy(decode)
    sqa = next(r for r in slow["variants"] if r["variant"] == "SQA")
    sqa["batch_1"]["kv_cache_bytes"] += 2  # a cache that is not H_kv's
    text = report_inference.decode(slow)
    assert "differs from `sqa_nas.analytics`' count in SQA batch 1" in text
    assert "GQA (16/4), SQA (8/4)" not in text  # no longer one H_kv group of equal bytes
    alone = {**decode, "variants": decode["variants"][:1]}
    assert report_inference.findings(alone) == []


def test_convert_section_answers_with_one_seed_against_table1_spread(converted, table_200m):
    text = report_convert.convert(converted, None, [table_200m])
    assert "**One seed (0): every value below is a single run.**" in text
    sigma = max(
        s["val_loss"]["std"] for s in table_200m["summary"].values() if s["val_loss"]["n"] >= 2
    )
    assert f"val loss std {sigma:.4f} over 2 seeds" in text and f"{2 * sigma:.4f}" in text
    assert "**Answer (one seed): no**" in text
    summary = converted["summary"]
    for variant in converted["variants"]:
        best = min(summary[f"{variant}/{m}/0.1"]["mean"] for m in converted["methods"])
        gap = best - summary[f"{variant}/scratch/0.1"]["mean"]
        assert f"| {variant} | +10% | " in text and f"{gap:+.4f} (beyond)" in text
    assert f"| GQA | parent (200M tokens) | | {summary['GQA/parent/0.0']['mean']:.4f} |" in text
    assert "Table 1 at the same tokens per run (paper_table1_200M_h200.json), seed 0: GQA" in text
    assert "convert_h200.json" in converted["command"] and converted["merged_from"]


def test_convert_answer_is_yes_no_or_not_resolved_by_the_spread(converted, table_200m):
    def shifted(by: float) -> dict:
        d = copy.deepcopy(converted)
        for key, s in d["summary"].items():
            if key.split("/")[1] in d["methods"] and not key.endswith("/0.0"):
                s["mean"] = d["summary"][key.replace(key.split("/")[1], "scratch")]["mean"] + by
        return d

    assert (
        report_convert.answer(shifted(-0.1), report_convert.spread(converted, [table_200m]))[0]
        == "yes"
    )
    kind, why = report_convert.answer(
        shifted(0.001), report_convert.spread(converted, [table_200m])
    )
    assert kind == "not resolved" and "some within" in why
    # Without a spread at this budget (no Table 1 file of its tokens) nothing is judged.
    kind, why = report_convert.answer(converted, report_convert.spread(converted, []))
    assert kind == "not resolved" and "no seed-to-seed spread" in why
    other = {**table_200m, "budget": {**table_200m["budget"], "tokens_per_run": 12_000_000}}
    assert report_convert.spread(converted, [other]) is None
    assert "the gaps below are not judged" in report_convert.convert(converted, None, [other])


def test_table1_at_200m_is_partial_with_n_per_variant(table_200m):
    text = results_report.table1(table_200m)
    assert (
        "**Partial: not every variant has every seed of [0, 1] (n = 2 for MHA, GQA, SQA, "
        "xSMQA; n = 1 for MQA, lSQA, sSQA, xSQA).**"
    ) in text
    assert "| sSQA | 8/8 | 0.6301 (1) | +0.0140 (n=1) |" in text and "± 0.0000" not in text
    assert "paper claim GQA < sSQA: **cannot tell**" in text


def test_page_and_readme_section_render_every_new_result():
    page = results_report.render(RESULTS)
    for title in (
        "### Paper Table 1 at every budget run",
        "### Paper Table 1 at 200M tokens per run",
        "### Paper Table 1 at 12M tokens per run",
        "### Converting the trained GQA model to SQA layouts",
        "### Decoding with the exported model",
    ):
        assert page.count(title) == 1, title
    assert "- embedded 200M: partial, n = 2 for MHA" in page
    # The low-budget column stays beside the 200M one.
    assert "| variant | embedded 12M | embedded 200M | paper (1.5B) |" in page
    section = results_report.readme_section(RESULTS)
    assert section.startswith("## Results: does the paper's quality ordering hold?")
    assert "- embedded 12M (NVIDIA H200; 3 seeds per variant)" in section
    assert "- embedded 200M (NVIDIA H200; partial: n = 2 for MHA, GQA, SQA, xSMQA" in section
    assert "**Converting a trained GQA model to SQA layouts** (one seed" in section
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
