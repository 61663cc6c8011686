"""`sqa-nas bench --format table|plain|csv|json`: piped output (plain) and rich tables at 40,
80 and 120 columns never cut a value with an ellipsis; csv and json parse and hold every
row at full precision; a bad --format is one line and exit code 2; the grid's progress goes
to stderr, plain off a terminal."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

import sqa_nas.cli.bench as bench_cli
from sqa_nas import cli
from sqa_nas.bench import BenchResult, BenchRow, add_fraction_of_best
from sqa_nas.cli import main

SMALL = ["--device", "cpu", "--n-heads", "4", "--head-dim", "8", "--repeats", "1", "--warmup", "0"]
ELLIPSIS = re.compile(r"…|\.\.\.")


def gpu_like_rows() -> list[BenchRow]:
    """Rows as an H200 run at long lengths writes them: wide lengths, long kernel names,
    times past a second, two backends per cell, an out-of-memory row and a refused one."""
    rows = []
    for backend, kernel, scale in (
        ("flash_attn", "flash_attn/fa4 (pack_gqa, varlen)", 1.0),
        ("flex", "flex (compiled, block 128x128)", 1.7),
    ):
        for n in (131072, 1048576):
            for variant, hq, hkv in (("MHA", 16, 16), ("GQA", 16, 4), ("xSQA", 4, 4)):
                ms = 1310.123456789 * scale * hq / 16 * (n / 131072) ** 2
                rows.append(
                    BenchRow(
                        variant=variant,
                        seq_len=n,
                        batch=1,
                        n_heads=16,
                        head_dim=128,
                        mode="fwd+bwd",
                        scope="kernel",
                        dtype="bfloat16",
                        causal=True,
                        pattern="native",
                        backend_requested=backend,
                        n_q_heads=hq,
                        n_kv_heads=hkv,
                        mask="causal",
                        backend=backend,
                        backend_reason="requested by the config",
                        kernel=kernel,
                        check_ok=True,
                        ms=ms,
                        tflops=612.3456789 / scale * hq / 16,
                        speedups={"MHA": 1310.123456789 * scale * (n / 131072) ** 2 / ms},
                    )
                )
    rows.append(
        BenchRow(
            variant="MHA",
            seq_len=4194304,
            batch=1,
            head_dim=128,
            mode="fwd+bwd",
            scope="kernel",
            dtype="bfloat16",
            causal=True,
            pattern="native",
            backend_requested="flex",
            n_q_heads=16,
            n_kv_heads=16,
            error="out of memory (tried to allocate 1.50 TiB)",
        )
    )
    rows.append(
        BenchRow(
            variant="xSQA",
            seq_len=4194304,
            batch=1,
            head_dim=128,
            mode="fwd+bwd",
            scope="kernel",
            dtype="bfloat16",
            causal=True,
            pattern="native",
            backend_requested="flash_attn",
            n_q_heads=4,
            n_kv_heads=4,
            error="flash_attn cannot run head_dim 128 with this window on sm_90",
        )
    )
    return add_fraction_of_best(rows)


@pytest.fixture()
def fake_grid(monkeypatch):
    """`sqa-nas bench` on `gpu_like_rows` without timing anything: `run_grid` announces each
    row to the progress callback, as the real one does, and returns them."""
    rows = gpu_like_rows()

    def run_grid(cells, progress=None, on_cell=None, **_):
        for r in rows:
            progress(f"{r.variant} @ {r.seq_len}")
        machine = {"device": "NVIDIA H200", "torch": "2.9.0"}
        return BenchResult(machine=machine, settings={}, rows=rows)

    monkeypatch.setattr(bench_cli, "run_grid", run_grid)
    monkeypatch.setattr(bench_cli, "grid_size", lambda cells: len(rows))
    return rows


def args(*extra: str) -> list[str]:
    return ["bench", "--device", "cpu", "--variants", "xSQA", "--no-check", *extra]


def test_piped_output_is_plain_with_every_value_whole(fake_grid, capsys):
    # capsys: stdout is not a terminal, so plain is the default; 2: a row ran out of memory
    assert main(args()) == 2
    out, err = capsys.readouterr()
    assert "\x1b" not in out and not ELLIPSIS.search(out)
    header = next(line for line in out.splitlines() if line.startswith("variant"))
    assert header.split() == (
        "variant N heads backend kernel ms TFLOP/s vs MHA vs GQA of best check".split()
    )
    for r in fake_grid:
        if r.ms is not None:  # the row's line holds its length, kernel and time whole
            line = next(
                x
                for x in out.splitlines()
                if f"{r.ms:.3f}" in x and x.split()[:2] == [r.variant, str(r.seq_len)]
            )
            assert r.kernel in line and f"{r.tflops:.2f}" in line
    assert "flash_attn cannot run head_dim 128 with this window on sm_90" in out
    assert "1.50 TiB" in err  # the out-of-memory row is named in the closing line
    # the progress, on stderr, is plain off a terminal: no control characters
    assert "rows 14/14 (100%)" in err and "\x1b" not in err and "\r" not in err


@pytest.mark.parametrize("width", [40, 80, 120])
def test_tables_fit_the_terminal_without_cutting_a_value(fake_grid, capsys, monkeypatch, width):
    monkeypatch.setattr(cli.console, "width", width)
    assert main(args("--format", "table")) == 2
    out = capsys.readouterr().out
    assert not ELLIPSIS.search(out), out
    assert all(len(line) <= width for line in out.splitlines()), out
    times = [f"{r.ms:.3f}" for r in fake_grid if r.ms is not None]
    assert all(t in out for t in times)  # ms is never dropped nor broken
    assert all(f" {r.seq_len} " in out for r in fake_grid)
    note = " ".join(out.split())  # the note may wrap
    assert f"not shown at {width} columns:" in note and "--format plain shows" in note
    if width == 120:  # only the long kernel names are given up
        assert "not shown at 120 columns: kernel (--format plain" in note


def test_csv_parses_with_every_row_at_full_precision(fake_grid, capsys):
    assert main(args("--format", "csv")) == 2
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == len(fake_grid)
    for parsed, r in zip(rows, fake_grid):
        assert parsed["variant"] == r.variant and int(parsed["seq_len"]) == r.seq_len
        if r.ms is not None:
            assert float(parsed["ms"]) == r.ms and float(parsed["tflops"]) == r.tflops
            assert float(parsed["speedup_vs_MHA"]) == r.speedup("MHA")
        else:
            assert parsed["ms"] == "" and parsed["error"] == r.error
    assert "NVIDIA H200" in err  # the header is not in the data


def test_json_parses_and_is_the_result_file(fake_grid, capsys, tmp_path):
    out_file = tmp_path / "r.json"
    assert main(args("--format", "json", "--json", str(out_file))) == 2
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data == json.loads(out_file.read_text())
    assert [r["ms"] for r in data["rows"] if "ms" in r] == [
        r.ms for r in fake_grid if r.ms is not None
    ]
    assert f"wrote {out_file}" in err  # only the data on stdout


@pytest.mark.parametrize("value", ["xml", "", "TABLE", "csv,json"])
def test_a_bad_format_is_one_line_and_exit_2(value, capsys, tmp_path):
    out_file = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exc:
        main([*args(), "--format", value, "--json", str(out_file)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "argument --format: invalid choice" in err
    assert not out_file.exists()


def test_a_real_bench_piped_prints_plain_rows(capsys):
    assert main(["bench", *SMALL, "--variants", "SQA", "--seq-lens", "16"]) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out and not ELLIPSIS.search(out)
    assert [line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["16"]] == [
        "MHA",
        "GQA",
        "SQA",
    ]
    assert "rows 3/3 (100%)" in err
