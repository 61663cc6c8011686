"""experiments.decode runs end to end on the CPU (--smoke): a row per variant and batch with
decode tokens/s and the KV cache's bytes (measured, equal to the analytics), the check before
timing, the machine header and command, a PNG; bad arguments are one line and exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from experiments import decode
from experiments.science import git_revision
from sqa_nas.cli import guarded


def test_decode_smoke_writes_a_row_per_variant_and_batch(tmp_path, capsys):
    out = tmp_path / "decode_cpu.json"
    argv = ["--smoke", "--variants", "MHA,GQA,xSMQA,SW-SQA", "--out", str(out)]
    assert decode.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["device_type"] == "cpu" and data["command"]
    assert data["git_revision"] == git_revision()  # the code that measured, in the file
    assert [r["variant"] for r in data["variants"]] == ["MHA", "GQA", "xSMQA", "SW-SQA"]
    assert data["batch"] == [1, 3] and data["prompt"] == 24 and data["new"] == 6
    kv = {}
    for row in data["variants"]:
        assert row["check_error"] <= 1e-3
        for batch in data["batch"]:
            cell = row[f"batch_{batch}"]
            assert cell["decode_tokens_per_s"] > 0 and cell["prefill_ms"] > 0
            assert cell["kv_cache_bytes"] == cell["kv_cache_bytes_analytics"] > 0
            runs = cell["ms_per_step_runs"]  # every timed run, not only their median
            assert len(runs) == data["repeats"] and min(runs) <= cell["ms_per_step"] <= max(runs)
            kv[row["variant"], batch] = cell["kv_cache_bytes"]
    # float32, 2 layers, head_dim 8, 30 tokens: K and V of H_kv heads per token
    assert kv["MHA", 1] == 2 * 2 * 4 * 8 * 4 * 30
    assert kv["GQA", 3] == 3 * kv["GQA", 1] == 3 * kv["MHA", 1] // 4  # H_kv = H / 4
    assert kv["xSMQA", 1] == kv["MHA", 1] // 4
    assert kv["SW-SQA", 1] == kv["GQA", 1] * (8 + 1) // 30  # window 8: its last 9 tokens
    assert (tmp_path / "decode_cpu.png").stat().st_size > 0
    printed = capsys.readouterr()
    assert "| SW-SQA | 2/1 |" in printed.out and "SW-SQA  batch   3" in printed.err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--smoke", "--variants", "MHA,BS-SQA"], "--variants: unknown BS-SQA"),
        (["--smoke", "--batch", "1,x"], "--batch: expected whole numbers"),
        (["--smoke", "--batch", "0"], "must be at least 1"),
    ],
    ids=["unknown-variant", "batch-not-a-number", "batch-zero"],
)
def test_decode_refuses_bad_arguments_in_one_line(tmp_path, capsys, argv, message):
    assert guarded(lambda: decode.main([*argv, "--out", str(tmp_path / "d.json")])) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error:") and message in err
    assert not list(tmp_path.iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_on_a_gpu_times_with_cuda_events(tmp_path):
    out = tmp_path / "decode_gpu.json"
    argv = ["--model", "paper", "--variants", "MHA,SW-SQA", "--prompt", "600", "--new", "8"]
    assert decode.main([*argv, "--batch", "1,2", "--repeats", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["device_type"] == "cuda" and data["dtype"] == "bfloat16"
    for row in data["variants"]:
        for batch in (1, 2):
            cell = row[f"batch_{batch}"]
            assert cell["decode_tokens_per_s"] > 0
            assert cell["kv_cache_bytes"] == cell["kv_cache_bytes_analytics"]
