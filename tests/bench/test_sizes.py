"""`sqa-nas bench` with sizes no device of the run can hold: refused before anything runs
(one line naming the flags, the row's estimate and the device's memory; exit code 2;
nothing written); and a row that runs out of memory anyway is marked in its table, the
other rows run, and the command ends with one line naming it and exit code 2."""

from __future__ import annotations

import json

import pytest
import torch

from sqa_nas.bench import run as bench_run
from sqa_nas.bench.memory import row_memory
from sqa_nas.bench.settings import BenchSettings
from sqa_nas.cli import main

SMALL = ["--device", "cpu", "--n-heads", "4", "--head-dim", "8", "--repeats", "1", "--warmup", "0"]

# (bench arguments, what the one line must say)
TOO_BIG = [
    (["--seq-lens", "1000000000"], "--seq-lens 1,000,000,000 x --batch 1: the row MHA at N="),
    (["--batch", "1000000000"], "--seq-lens 1,024 x --batch 1,000,000,000"),
    (["--seq-lens", "1024,1000000000"], "the row MHA at N=1,000,000,000 (kernel fwd float32)"),
    (["--head-dim", "1000000000"], "--n-heads 16 x --head-dim 1,000,000,000"),
    (["--n-heads", "1000000000"], "--n-heads 1,000,000,000 x --head-dim 64"),
    (["--head-dim", "16,1000000"], "--head-dim 1,000,000: the row MHA"),
    (["--seq-lens", "65536", "--check-len", "1000000000"], "with --check-len 1,000,000,000"),
    (["--scope", "layer", "--seq-lens", "1000000000"], "(layer fwd float32) needs ~"),
    (["--scope", "model", "--seq-lens", "100000000"], "(model fwd float32) needs ~"),
    (["--scope", "model", "--n-layers", "1000000000"], "--n-layers: 1,000,000,000 is not in"),
    (["--scope", "model", "--batch", "100000000"], "--seq-lens 1,024 x --batch 100,000,000"),
    (["--mode", "fwd+bwd", "--batch", "100000000"], "(kernel fwd+bwd float32) needs ~"),
    (["--mode", "bwd", "--seq-lens", "1000000000"], "(kernel bwd float32)"),
    (["--dtype", "bfloat16", "--seq-lens", "1000000000"], "(kernel fwd bfloat16)"),
    (
        ["--patterns", "window", "--window", "8", "--seq-lens", "1000000000"],
        "--seq-lens 1,000,000,000 x --batch 1",
    ),
    (
        ["--backend", "flex", "--patterns", "flex", "--window", "8", "--seq-lens", "1000000"],
        "timed call 128 TB",  # eager FlexAttention's (B, H, N, N) float32 scores on the CPU
    ),
    (["--variants", "xSQA", "--baselines", "xSQA", "--batch", "1000000000"], "the row xSQA"),
    (["--batch", "1,1000000000"], "--batch 1,000,000,000"),
]


@pytest.mark.parametrize("argv,message", TOO_BIG, ids=[" ".join(a) for a, _ in TOO_BIG])
def test_a_row_too_big_is_refused_before_anything_runs(
    tmp_path, monkeypatch, capsys, argv, message
):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.json"

    def never(*args, **kwargs):
        raise AssertionError("a row ran")

    monkeypatch.setattr(bench_run, "_bench_one", never)
    assert main(["bench", "--device", "cpu", *argv, "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    if "--n-layers" not in message:
        assert "more than this machine's" in err and "of RAM" in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_row_estimate_grows_with_each_size():
    """Each size the estimate takes moves it the way the tensors it counts do."""
    base = BenchSettings(variants=["MHA"], seq_lens=[256], check=False)
    need = row_memory(base, "MHA", 256, 4).timed
    q_k_v_out = 4 * 256 * 16 * 64 * 4  # (B, H, N, D) float32, four of them
    assert need == q_k_v_out + 24 * 256  # and the density count's vectors
    for field, value in (("batch", 2), ("head_dim", 128), ("n_heads", 32)):
        bigger = BenchSettings(variants=["MHA"], seq_lens=[256], check=False, **{field: value})
        assert row_memory(bigger, "MHA", 256, 4).timed > need, field
    backward = BenchSettings(variants=["MHA"], seq_lens=[256], check=False, mode="fwd+bwd")
    assert row_memory(backward, "MHA", 256, 4).timed == 2 * q_k_v_out + 24 * 256


@pytest.mark.parametrize(
    "exc,size",
    [
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB. GPU 0"),
            "8.00 GiB",
        ),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                "allocate memory: you tried to allocate 8000000000 bytes. Error code 12"
            ),
            "8.0 GB",
        ),
    ],
)
def test_a_row_out_of_memory_is_marked_and_the_command_fails(
    tmp_path, monkeypatch, capsys, exc, size
):
    """Rows are independent: the others run and are written, the table marks the failed
    row, and one line at the end names it with its size (exit code 2)."""
    timed = bench_run.time_call

    def short_at_48(fn, **kwargs):
        if kwargs["device"].type == "cpu" and short_at_48.n == 48:
            raise exc
        return timed(fn, **kwargs)

    real_timed_fn = bench_run._timed_fn

    def timed_fn(layer, settings, n, device, dtype, name):
        short_at_48.n = n
        return real_timed_fn(layer, settings, n, device, dtype, name)

    monkeypatch.setattr(bench_run, "_timed_fn", timed_fn)
    monkeypatch.setattr(bench_run, "time_call", short_at_48)
    out = tmp_path / "bench.json"
    rc = main(["bench", *SMALL, "--variants", "SQA", "--seq-lens", "32,48", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 2
    table = [x.split() for x in captured.out.splitlines()]
    assert [x[:2] for x in table if "out of memory" in " ".join(x)] == [
        ["MHA", "48"],
        ["GQA", "48"],
        ["SQA", "48"],
    ]
    # stderr: the grid's progress (plain off a terminal: "rows 6/6 ..."), then one line
    line = "\n".join(x for x in captured.err.splitlines() if not x.startswith("rows "))
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert "3 row(s) ran out of memory: MHA at N=48 (batch 1, head_dim 8, kernel fwd " in line
    assert f"float32): tried to allocate {size}; GQA at N=48" in line
    assert line.endswith("the other rows ran (lower --seq-lens or --batch, or free the device)")
    rows = json.loads(out.read_text())["rows"]
    assert {r["seq_len"] for r in rows if "ms" in r} == {32}
    failed = [r["error"] for r in rows if r["seq_len"] == 48]
    assert failed == [f"out of memory (tried to allocate {size})"] * 3
