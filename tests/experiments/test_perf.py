"""The GPU experiment scripts at CPU sizes: experiments.paper_table3, long_context, report,
host_time, clocks; and the report reading every committed result file.

The sizes are tiny so the suite stays fast; what is checked is the plumbing the GPU run
relies on: every cell is a row with its machine header and configuration, failures are rows
too, the paper's numbers are attached where they apply, and the report turns the files into
tables, target checks and PNGs without a hand-typed number.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

from experiments.common import RESULTS, ROOT
from sqa_nas.bench import BenchRow, BenchSettings
from sqa_nas.cli import guarded


@pytest.fixture(scope="module")
def scripts():
    return {
        name: importlib.import_module(f"experiments.{name}")
        for name in ("paper_table3", "long_context", "report", "host_time", "clocks")
    }


@pytest.fixture(scope="module")
def runs(scripts, tmp_path_factory):
    """One tiny run of each script, shared by the tests below."""
    out = tmp_path_factory.mktemp("results")
    paper, long = out / "paper_table3_cpu.json", out / "long_context_cpu.json"
    assert (
        scripts["paper_table3"].main(
            [
                "--device",
                "cpu",
                "--head-dims",
                "8",
                "--seq-lens",
                "32,64",
                "--batch",
                "1",
                "--variants",
                "MHA,GQA,xSQA,SW-SQA",
                "--window",
                "16",
                "--n-layers",
                "1",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--check-len",
                "48",
                "--profile",
                "64",
                "--out",
                str(paper),
            ]
        )
        == 0
    )
    assert (
        scripts["long_context"].main(
            [
                "--device",
                "cpu",
                "--seq-lens",
                "64,96",
                "--sweep-len",
                "64",
                "--head-dim",
                "8",
                "--n-heads",
                "8",
                "--window",
                "8",
                "--global-tokens",
                "2",
                "--dense-max-len",
                "64",
                "--window-heads",
                "MHA,xSQA",
                "--flex-heads",
                "MHA,xSQA",
                "--dense",
                "MHA,SQA",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--out",
                str(long),
            ]
        )
        == 0
    )
    return {
        "dir": out,
        "paper": json.loads(paper.read_text()),
        "long": json.loads(long.read_text()),
    }


def test_paper_table3_rows_header_and_profile(runs):
    result = runs["paper"]
    assert result["schema"] == "sqa-nas/paper_table3/1"
    assert {"device", "torch", "cuda", "cudnn", "triton", "flash_attn"} <= set(result["machine"])
    rows = result["rows"]
    assert [(r["seq_len"], r["variant"]) for r in rows] == [
        (n, v) for n in (32, 64) for v in ("MHA", "GQA", "xSQA", "SW-SQA")
    ]
    for r in rows:
        assert r["scope"] == "model" and r["check_ok"] and r["ms"] > 0 and r["n_layers"] == 1
        assert r["speedup_vs_MHA"] > 0 and r["speedup_vs_GQA"] > 0
        assert r["softmax_exp_floor_s"] > 0
    sw = next(r for r in rows if r["variant"] == "SW-SQA" and r["seq_len"] == 64)
    assert sw["window"] == 16 and sw["density"] < 0.5
    assert {p["variant"] for p in result["profiles"]} == {"MHA", "GQA", "xSQA", "SW-SQA"}
    assert all(p["top"] and 0 <= p["attention_share"] <= 1 for p in result["profiles"])
    assert result["reference"]["paper_a100_s"]["131072"]["xSQA"] == 0.3759


def test_paper_numbers_attach_to_the_paper_cells_only(scripts):
    annotate = scripts["paper_table3"].annotate
    row = annotate(
        BenchRow(
            variant="GQA",
            seq_len=131072,
            batch=1,
            head_dim=16,
            ms=400.0,
            density=0.5,
            n_q_heads=16,
            n_kv_heads=4,
        )
    )
    assert row.extra["paper_a100_s"] == 1.2558 and row.extra["anchor_h200_sdpa_s"] == 0.5831
    assert row.extra["fraction_of_paper"] == pytest.approx(0.4 / 1.2558)
    # exponentials: 8 layers x 16 heads x N^2 / 2 visible pairs, at 3.9e12 per second
    assert row.to_dict()["softmax_exp_floor_s"] == pytest.approx(8 * 16 * 131072**2 / 2 / 3.9e12)
    other = annotate(BenchRow(variant="GQA", seq_len=131072, batch=1, head_dim=64, ms=1.0))
    assert "paper_a100_s" not in other.to_dict()
    assert scripts["paper_table3"].batch_for(32768) == 4
    assert scripts["paper_table3"].batch_for(65536) == 2


def test_long_context_parts_and_dense_speedups(runs):
    result = runs["long"]
    assert result["schema"] == "sqa-nas/long_context/1"
    heads = [r for r in result["rows"] if r["part"] == "heads"]
    assert {(r["variant"], r["pattern"]) for r in heads} == {
        (v, p) for v in ("MHA", "xSQA") for p in ("window", "flex")
    }
    for r in heads:
        assert r["seq_len"] == 64 and r["mode"] == "fwd" and r["check_ok"]
        assert r["check_len"] == 64 and r["window"] == 8
    assert {r["global_tokens"] for r in heads if r["pattern"] == "flex"} == {2}
    lengths = [r for r in result["rows"] if r["part"] == "lengths"]
    windowed = {
        (r["variant"], r["seq_len"], r["mode"]) for r in lengths if r["pattern"] != "dense"
    }
    assert windowed == {
        (v, n, m) for v in ("SW-SQA", "Flex-SQA") for n in (64, 96) for m in ("fwd", "fwd+bwd")
    }
    # the check covers twice the window and the global tokens (2 x 8 + 64 tokens)
    assert {r["check_len"] for r in lengths if r["seq_len"] == 96} == {80}
    dense = {(r["variant"], r["seq_len"]) for r in lengths if r["pattern"] == "dense"}
    assert dense == {("MHA", 64), ("SQA", 64)}  # --dense-max-len 64
    at64 = [r for r in lengths if r["seq_len"] == 64 and r["mode"] == "fwd"]
    assert all("speedup_vs_dense_MHA" in r for r in at64)
    assert not any("speedup_vs_dense_MHA" in r for r in lengths if r["seq_len"] == 96)


def test_report_writes_page_section_and_pngs(scripts, runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    report = scripts["report"]
    page = tmp_path / "docs" / "performance.md"
    files = sorted(str(p) for p in runs["dir"].glob("*.json"))
    assert report.main([*files, "--out", str(page), "--png-dir", str(tmp_path)]) == 0
    text = page.read_text()
    for heading in (
        "# Performance",
        "## Targets",
        "## Paper Table 3",
        "## Long context",
        "### head_dim 8",
        "| seq (batch) | MHA | GQA |",
    ):
        assert heading in text
    assert "paper_table3_cpu.json" in text and "python -m experiments.report" in text
    for name in ("paper_table3_cpu.png", "long_context_cpu.png"):
        assert (tmp_path / name).stat().st_size > 10_000
        assert f"](../{name})" in text  # linked relative to the page, one folder up
    capsys.readouterr()
    assert report.main([*files, "--section", "--no-png"]) == 0
    section = capsys.readouterr().out
    assert section.startswith("## Performance") and "Targets: " in section
    assert "docs/performance.md" in section and "### Paper Table 3" in section


def test_report_targets_measure_margins_from_the_rows(scripts):
    report = scripts["report"]

    def row(variant, speedup, tflops, **kw):
        base = {
            "variant": variant,
            "seq_len": 131072,
            "batch": 1,
            "head_dim": 128,
            "causal": False,
            "pattern": "dense",
            "mode": "fwd",
            "scope": "kernel",
            "backend_requested": "auto",
            "backend": "flash_attn",
            "n_q_heads": 4,
            "kernel": "flash-attn-4",
            "ms": 10.0 / speedup,
            "tflops": tflops,
            "speedup_vs_MHA": speedup,
        }
        return base | kw

    bench = {
        "schema": "sqa-nas/bench/2",
        "machine": {"device": "NVIDIA H200"},
        "rows": [
            row("MHA", 1.0, 600.0),
            row("SQA", 2.0, 600.0),
            row("xSQA", 3.7, 560.0),
            row("MHA", 1.0, 660.0, seq_len=32768, causal=True),
        ],
        "_path": "b.json",
    }
    paper = {
        "schema": "sqa-nas/paper_table3/1",
        "machine": {},
        "_path": "p.json",
        "rows": [
            {
                "variant": v,
                "seq_len": 131072,
                "head_dim": 16,
                "batch": 1,
                "ms": ms,
                "paper_a100_s": paper_s,
                "fraction_of_paper": ms / 1e3 / paper_s,
                "softmax_exp_floor_s": 0.28,
            }
            for v, ms, paper_s in (("GQA", 380.0, 1.2558), ("xSQA", 150.0, 0.3759))
        ],
        "profiles": [
            {"variant": "GQA", "seq_len": 131072, "head_dim": 16, "attention_share": 0.8}
        ],
    }
    found = {t["target"]: t for t in report.targets([bench, paper])}
    sqa = found["kernel, hd128, 128k, non-causal fwd: SQA vs MHA (auto, batch 1)"]
    assert sqa["ok"] and sqa["margin"] == "+3%"
    xsqa = found["kernel, hd128, 128k, non-causal fwd: xSQA vs MHA (auto, batch 1)"]
    assert xsqa["ok"] is False and xsqa["margin"] == "-3%" and "4,096 query tiles" in xsqa["note"]
    assert found["kernel, hd128, 32k, causal fwd: MHA heads (batch 1)"]["ok"]
    gqa = found["Table 3, hd16, 131,072: GQA / A100"]
    assert gqa["ok"] is True  # 0.380 / 1.2558 = 30% <= 33%
    xsqa_cell = found["Table 3, hd16, 131,072: xSQA / A100"]
    assert xsqa_cell["ok"] is False and "softmax exp floor" in xsqa_cell["note"]
    assert found["Table 3, hd16, 131,072: xSQA vs GQA"]["measured"] == "2.53x"
    markdown = report.targets_markdown(list(found.values()))
    assert "**missed**" in markdown and "met" in markdown


def test_report_explains_a_tflops_miss_with_the_clocks_and_renders_the_diagnoses(
    scripts, tmp_path
):
    report = scripts["report"]
    h200 = {"device": "NVIDIA H200", "device_type": "cuda", "torch": "2.11.0"}
    bench = {
        "schema": "sqa-nas/bench/2",
        "machine": h200,
        "_path": "b.json",
        "rows": [
            {
                "variant": "MHA",
                "seq_len": 32768,
                "batch": 4,
                "head_dim": 128,
                "causal": True,
                "pattern": "dense",
                "mode": "fwd",
                "scope": "kernel",
                "backend_requested": "auto",
                "n_q_heads": 16,
                "kernel": "flash-attn-4",
                "ms": 27.0,
                "tflops": 640.0,
                "flops": 640e12 * 0.027,
            }
        ],
    }
    clocks = {
        "schema": "sqa-nas/clocks/1",
        "machine": h200,
        "_path": "clocks_x.json",
        "command": "python experiments/clocks.py",
        "settings": {"head_dim": 128, "seq_len": 32768, "seconds": 3.0},
        "rows": [
            {
                "variant": "MHA",
                "batch": b,
                "seq_len": 32768,
                "calls": 9,
                "ms": ms,
                "ms_min": ms,
                "ms_per_sequence": ms / b,
                "sm_clock_mhz": 1590.0,
                "sm_clock_min_mhz": 1395.0,
                "power_w": 689.0,
                "temperature_c": 61.0,
                "event_reasons": ["0x0000000000000004"],
                "samples": 9,
            }
            for b, ms in ((1, 6.9), (4, 28.8))
        ],
    }
    host = {
        "schema": "sqa-nas/host_time/1",
        "machine": h200,
        "_path": "host_x.json",
        "settings": {"pattern": "flex", "mode": "fwd", "head_dim": 128, "seq_len": 131072},
        "rows": [
            {
                "variant": "xSQA",
                "synced_ms": 2.2,
                "queued_ms": 1.7,
                "device_ms": 1.8,
                "host_ms": 0.3,
            }
        ],
    }
    (miss,) = report.targets([bench, clocks, host])
    assert miss["ok"] is False and miss["margin"] == "-2%"
    assert "28.80 ms a call = 600 TFLOP/s" in miss["note"] and "SW power cap" in miss["note"]
    assert "batch 1 6.90, batch 4 7.20" in miss["note"]
    assert report.clock_events(["0x4", "0x40", "[N/A]"]) == "SW power cap, HW thermal"
    page = report.body([clocks, host], {}, tmp_path)
    assert "| xSQA | 2.200 | 1.700 | 1.800 | 0.300 |" in page
    assert "| MHA | 4 | 9 | 28.800 | 7.200 | 1590 / 1395 | 689 | 61 | SW power cap |" in page
    assert "made by `python experiments/clocks.py`" in page


def test_report_names_the_row_a_cut_run_hung_in(scripts, runs, tmp_path):
    hung = runs["long"] | {
        "partial": True,
        "running": {
            "variant": "MHA",
            "seq_len": 131072,
            "cell": "kernel fwd bfloat16 hd128 b1 causal flex auto",
            "row_timeout_s": 900.0,
            "part": "heads",
        },
    }
    path = tmp_path / "long_context_cpu.json"
    path.write_text(json.dumps(hung))
    page = tmp_path / "performance.md"
    assert scripts["report"].main([str(path), "--out", str(page), "--no-png"]) == 0
    assert (
        "Long context: SW-SQA and Flex-SQA (partial: stopped in MHA @ 131072, kernel fwd "
        "bfloat16 hd128 b1 causal flex auto, which did not return within 900.0 s)"
    ) in page.read_text()


def test_a_target_whose_run_hung_is_listed_as_not_measured_with_why(scripts, runs, tmp_path):
    report = scripts["report"]
    hung = runs["long"] | {
        "rows": [r for r in runs["long"]["rows"] if r["pattern"] != "flex"],
        "partial": True,
        "_path": str(tmp_path / "long_context_x.json"),
        "running": {
            "variant": "MHA",
            "seq_len": 131072,
            "row_timeout_s": 120.0,
            "cell": "kernel fwd bfloat16 hd128 b1 causal flex auto",
        },
    }
    flex = [t for t in report.targets([hung]) if t["target"].startswith("Flex")]
    assert [(t["measured"], t["ok"]) for t in flex] == [("not measured", None)]
    assert flex[0]["note"] == (
        "the run stopped while its first row was running (long_context_x.json; row limit 120 s)"
    )
    # The only long-context file may hold no rows at all; a limit of None or 0 is no limit.
    empty = hung | {"rows": [], "running": hung["running"] | {"row_timeout_s": None}}
    flex = [t for t in report.targets([empty]) if t["target"].startswith("Flex")]
    assert (
        flex[0]["note"] == "the run stopped while its first row was running (long_context_x.json)"
    )
    # Nothing timed: no PNG of empty axes.
    assert report.write_pngs(hung | {"rows": []}, tmp_path) == []


def test_host_time_rows_and_errors(scripts, tmp_path, capsys):
    out = tmp_path / "host_time.json"
    assert (
        scripts["host_time"].main(
            [
                "--device",
                "cpu",
                "--variants",
                "MHA,xSQA",
                "--seq-len",
                "64",
                "--head-dim",
                "8",
                "--window",
                "16",
                "--global-tokens",
                "2",
                "--repeats",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert data["machine"]["device_type"] == "cpu" and data["command"].startswith("python ")
    assert [r["variant"] for r in data["rows"]] == ["MHA", "xSQA"]
    for r in data["rows"]:
        assert all(r[k] > 0 for k in ("synced_ms", "queued_ms", "device_ms", "host_ms"))
    assert "| xSQA |" in capsys.readouterr().out
    bad = ["--device", "cpu", "--variants", "Nope"]
    assert guarded(lambda: scripts["host_time"].main(bad)) == 2
    assert "unknown variant 'Nope'" in capsys.readouterr().err


FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *-lms*) while true; do echo "1980, 650.5, 61, 0x0000000000000000"; \
          echo "1755, 699.9, 63, 0x0000000000000004"; echo "1400, [N/A], 63, 0x0"; \
          sleep 0.05; done ;;
  *) echo "clocks_event_reasons.active"; echo "0x0" ;;
esac
"""


def test_clocks_summarises_the_sampled_clocks(scripts, tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(FAKE_NVIDIA_SMI)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    settings = BenchSettings(variants=["MHA"], seq_lens=[64], batch=2, head_dim=8, baselines=())
    r = scripts["clocks"].measure(settings, "MHA", 64, 0.05)
    assert r["calls"] >= 3 and r["ms_per_sequence"] == pytest.approx(r["ms"] / 2)
    assert r["sm_clock_min_mhz"] == 1755 and 1755 <= r["sm_clock_mhz"] <= 1980
    assert r["event_reasons"] == ["0x0000000000000000", "0x0000000000000004"]
    if not torch.cuda.is_available():
        assert guarded(lambda: scripts["clocks"].main([])) == 2


def test_every_committed_result_file_the_report_reads_still_loads(scripts, tmp_path):
    """The typed row reads every committed benchmark file and writes each row back
    unchanged (older files included), and the report renders every committed file."""
    report = scripts["report"]
    files = report.load(sorted(RESULTS.glob("*.json")))
    kinds = [report.kind(res) for res in files if "rows" in res]
    assert {"bench", "paper_table3", "long_context", "clocks", "host_time"} <= set(kinds)
    for res in files:
        if "rows" in res and report.kind(res) in ("bench", "paper_table3", "long_context"):
            rows = report.rows_of(res)
            assert rows and all(isinstance(r, BenchRow) for r in rows)
            assert [r.to_dict() for r in rows] == res["rows"], res["_path"]
    page = report.body(files, {}, tmp_path)
    assert page.count("From [`") == len(files) and "## Targets" in page


def test_every_script_runs_as_a_module_of_the_experiments_package():
    """`python -m experiments.NAME --help` from the repository root, for every script."""
    names = sorted(
        p.stem
        for p in (ROOT / "experiments").glob("*.py")
        if p.stem
        not in (
            "__init__",
            "common",
            "science",
            "results_report",
            "report_science",
            "report_allocation",
            "report_convert",
            "report_inference",
        )
    )
    assert {
        "paper_table3",
        "long_context",
        "report",
        "host_time",
        "clocks",
        "paper_table1",
        "light_sqa",
        "per_layer",
        "ray_search",
        "fa4_backward_check",
        "step_throughput",
        "search_efficiency",
        "noise_floor",
        "paired_timing",
        "mo_asha",
        "faults",
        "corpora",
        "decode",
        "convert_gqa",
    } == set(names)
    for name in names:
        run = subprocess.run(
            [sys.executable, "-m", f"experiments.{name}", "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0 and "usage:" in run.stdout, (name, run.stderr)
    # The GPU scripts and the report run where only torch is installed: no search stack.
    gpu = ("paper_table3", "long_context", "host_time", "clocks", "report", "fa4_backward_check")
    code = (
        "import sys\n"
        + "".join(f"import experiments.{n}\n" for n in gpu)
        + "print(sorted({'optuna', 'ray', 'textual', 'matplotlib'} & set(sys.modules)))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and run.stdout.strip() == "[]", (run.stdout, run.stderr)
