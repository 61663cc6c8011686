"""The benchmark: correctness check before timing, FLOP accounting, JSON schema, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from sqa_nas import registry
from sqa_nas.bench import BenchSettings, run_bench, time_call
from sqa_nas.cli import main
from sqa_nas.errors import UserError
from sqa_nas.kernels.sdpa import SdpaBackend

ROW_KEYS = {"variant", "seq_len", "batch", "n_q_heads", "n_kv_heads", "head_dim", "pattern",
            "mask", "mode", "scope", "dtype", "density", "backend", "backend_reason",
            "check_error", "check_tolerance", "check_ok", "ms", "ms_min", "ms_spread",
            "repeats", "flops", "tflops", "speedup_vs_MHA"}


def _settings(**kw):
    base = dict(variants=["SQA", "xSQA"], seq_lens=[64], n_heads=8, head_dim=16, warmup=1,
                repeats=2, baselines=["MHA"])
    return BenchSettings(**{**base, **kw})


def test_rows_schema_and_flops_from_mask_density():
    result = run_bench(_settings(window=7, mode="fwd+bwd", scope="layer"))
    assert {"device", "torch", "python"} <= set(result["machine"])
    assert result["settings"]["window"] == 7
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"MHA", "SQA", "xSQA"}
    for r in rows.values():
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["check_ok"]
        # window 7, causal, N=64: query i sees min(i, 7) + 1 keys.
        visible = sum(min(i, 7) + 1 for i in range(64))
        assert r["density"] == pytest.approx(visible / 64**2)
    kernel = 4 * 8 * 16 * visible * 3.5
    proj = 2 * 64 * sum(p.numel() for p in _layer_params("MHA")) * 3
    assert rows["MHA"]["flops"] == pytest.approx(kernel + proj)
    assert rows["MHA"]["speedup_vs_MHA"] == 1.0


def _layer_params(name):
    from sqa_nas.attention import SparseQueryAttention

    return list(SparseQueryAttention(registry.variant(name, d_model=128, n_heads=8)).parameters())


def test_correctness_check_catches_a_wrong_kernel():
    class Wrong(SdpaBackend):
        name = "wrong"

        def forward(self, q, k, v, problem):
            return super().forward(q, k, v, problem) * 1.01

    registry.register_backend(Wrong)
    try:
        result = run_bench(_settings(backend="wrong"))
    finally:
        registry._backends.pop("wrong")
    assert all("correctness check failed" in r["error"] for r in result["rows"])
    assert all("ms" not in r for r in result["rows"])


def test_time_call_counts_only_the_timed_part():
    calls = []
    samples = time_call(lambda x: calls.append(x), device=torch.device("cpu"), warmup=2,
                        repeats=3, setup=lambda: "arg")
    assert len(samples) == 3 and calls == ["arg"] * 5 and all(s >= 0 for s in samples)


@pytest.mark.parametrize("kw,pattern", [
    (dict(variants=["Nope"]), "unknown variant"),
    (dict(seq_lens=[0]), "--seq-lens"),
    (dict(device="tpu"), "--device"),
    (dict(device="cuda"), "no CUDA GPU") if not torch.cuda.is_available() else
    (dict(mode="sideways"), "--mode"),
    (dict(dtype="int8"), "--dtype"),
])
def test_bad_settings(kw, pattern):
    with pytest.raises(UserError, match=pattern):
        run_bench(_settings(**kw))


def test_cli_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--variants", "MHA,SQA,xSQA", "--seq-lens", "32,48", "--device", "cpu",
               "--n-heads", "8", "--head-dim", "16", "--repeats", "2", "--warmup", "1",
               "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 2 * 4  # MHA, GQA baselines + SQA, xSQA at two lengths
    assert "TFLOP/s" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["bench", "--variants", "MHA,Foo", "--device", "cpu"], "unknown variant 'Foo'"),
    (["bench", "--seq-lens", "12,abc"], "comma-separated"),
    (["bench", "--repeats", "0"], "must be >= 1"),
    (["bench", "--mode", "up"], "invalid choice"),
    (["nonsense"], "invalid choice"),
])
def test_cli_bad_arguments_exit_2(argv, message, capsys):
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    assert rc == 2
    assert message in capsys.readouterr().err
