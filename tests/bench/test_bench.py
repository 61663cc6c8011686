"""The benchmark: correctness check before timing, FLOP accounting, JSON schema, CLI."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from pydantic import ValidationError

from sqa_nas import registry
from sqa_nas.attention import MaskSpec, dense_mask
from sqa_nas.attention.config import BlockSparseLayout
from sqa_nas.bench import (
    BenchRow,
    BenchSettings,
    add_fraction_of_best,
    expand_grid,
    model_flops,
    register_backend_spec,
    run_bench,
    run_grid,
)
from sqa_nas.cli import main
from sqa_nas.errors import UserError
from sqa_nas.kernels.sdpa import SdpaBackend
from sqa_nas.timing import time_call

ROW_KEYS = {
    "variant",
    "seq_len",
    "batch",
    "n_q_heads",
    "n_kv_heads",
    "head_dim",
    "pattern",
    "mask",
    "mode",
    "scope",
    "dtype",
    "density",
    "backend",
    "backend_reason",
    "check_error",
    "check_tolerance",
    "check_ok",
    "ms",
    "ms_min",
    "ms_spread",
    "repeats",
    "flops",
    "tflops",
    "speedup_vs_MHA",
}


def _settings(**kw):
    base = dict(
        variants=["SQA", "xSQA"],
        seq_lens=[64],
        n_heads=8,
        head_dim=16,
        warmup=1,
        repeats=2,
        baselines=["MHA"],
    )
    return BenchSettings(**{**base, **kw})


def test_rows_schema_and_flops_from_mask_density():
    result = run_bench(_settings(window=7, mode="fwd+bwd", scope="layer")).to_dict()
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
    from sqa_nas.layer import SparseQueryAttention

    return list(SparseQueryAttention(registry.variant(name, d_model=128, n_heads=8)).parameters())


def test_a_row_reads_and_writes_its_json_unchanged():
    """Rows cross the seam as JSON: a row read from a file and written again keeps every key
    (speedups and columns an experiment added too); absent optional fields read as None and
    stay absent."""
    data = {
        "variant": "xSQA",
        "seq_len": 1024,
        "batch": 2,
        "window": None,
        "backend_requested": "auto",
        "ms": 1.5,
        "tflops": 300.0,
        "speedup_vs_MHA": 3.9,
        "speedup_vs_dense_MHA": 7.5,
        "fraction_of_best": 0.97,
        "part": "lengths",
        "paper_a100_s": 0.3759,
    }
    row = BenchRow.from_dict(data)
    assert row.to_dict() == data and list(row.to_dict()) == [
        "variant",
        "seq_len",
        "batch",
        "backend_requested",
        "window",
        "ms",
        "tflops",
        "speedup_vs_MHA",
        "speedup_vs_dense_MHA",
        "fraction_of_best",
        "part",
        "paper_a100_s",
    ]
    assert row.speedup("MHA") == 3.9 and row.speedup("GQA") is None
    assert row.extra == {"part": "lengths", "paper_a100_s": 0.3759}
    assert row.window is None and "window" in row.to_dict()  # set to None: written as null
    assert row.error is None and "error" not in row.to_dict()  # absent: stays absent
    assert row.value("speedup_vs_dense_MHA") == 7.5 and row.value("part") == "lengths"
    assert row.value("batch") == 2 and row.value("model") is None
    updated = row.update(speedup_vs_GQA=1.2, part="heads")
    assert updated.speedups == {"MHA": 3.9, "dense_MHA": 7.5, "GQA": 1.2}
    assert updated.extra["part"] == "heads" and row.extra["part"] == "lengths"
    failed = BenchRow.from_dict({"variant": "MHA", "seq_len": 8, "error": "out of memory"})
    assert not failed.timed and failed.to_dict() == {
        "variant": "MHA",
        "seq_len": 8,
        "error": "out of memory",
    }
    with pytest.raises(ValidationError):
        BenchRow.from_dict({"seq_len": 8})


def test_correctness_check_catches_a_wrong_kernel():
    class Wrong(SdpaBackend):
        name = "wrong"

        def forward(self, q, k, v, problem):
            return super().forward(q, k, v, problem) * 1.01

    registry.register_backend(Wrong)
    try:
        result = run_bench(_settings(backend="wrong")).to_dict()
    finally:
        registry._backends.pop("wrong")
    assert all("correctness check failed" in r["error"] for r in result["rows"])
    assert all("ms" not in r for r in result["rows"])


def test_correctness_check_catches_a_wrong_backward_in_backward_rows():
    """A kernel right forward and wrong backward (flash-attn-4 at head_dim 16 on the H200)
    passes a forward row and fails a fwd+bwd row before it is timed."""

    class HalfGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.view_as(t)

        @staticmethod
        def backward(ctx, g):
            return g * 0.5

    class WrongBackward(SdpaBackend):
        name = "wrong_backward"

        def forward(self, q, k, v, problem):
            return super().forward(HalfGradient.apply(q), k, v, problem)

    registry.register_backend(WrongBackward)
    try:
        fwd = run_bench(_settings(backend="wrong_backward", variants=["SQA"], baselines=[]))
        both = run_bench(
            _settings(backend="wrong_backward", variants=["SQA"], baselines=[], mode="fwd+bwd")
        )
    finally:
        registry._backends.pop("wrong_backward")
    assert fwd.rows[0].check_ok and fwd.rows[0].timed
    row = both.rows[0]
    assert row.check_ok is False and "correctness check failed" in row.error
    assert row.ms is None and not row.timed


def test_time_call_counts_only_the_timed_part():
    calls = []
    samples = time_call(
        lambda x: calls.append(x),
        device=torch.device("cpu"),
        warmup=2,
        repeats=3,
        setup=lambda: "arg",
    )
    assert len(samples) == 3 and calls == ["arg"] * 5 and all(s >= 0 for s in samples)


@pytest.mark.parametrize(
    "kw,pattern",
    [
        (dict(variants=["Nope"]), "unknown variant"),
        (dict(seq_lens=[0]), "--seq-lens"),
        (dict(device="tpu"), "--device"),
        (dict(device="cuda"), "no CUDA GPU")
        if not torch.cuda.is_available()
        else (dict(mode="sideways"), "--mode"),
        (dict(dtype="int8"), "--dtype"),
    ],
)
def test_bad_settings(kw, pattern):
    with pytest.raises(UserError, match=pattern):
        run_bench(_settings(**kw))


def test_cli_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--variants",
            "MHA,SQA,xSQA",
            "--seq-lens",
            "32,48",
            "--device",
            "cpu",
            "--n-heads",
            "8",
            "--head-dim",
            "16",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 2 * 4  # MHA, GQA baselines + SQA, xSQA at two lengths
    assert "TFLOP/s" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["bench", "--variants", "MHA,Foo", "--device", "cpu"], "unknown variant 'Foo'"),
        (["bench", "--seq-lens", "12,abc"], "comma-separated"),
        (["bench", "--repeats", "0"], "must be >= 1"),
        (["bench", "--mode", "up"], "invalid choice"),
        (["bench", "--row-timeout-s", "-1"], "must be a finite number >= 0"),
        (["bench", "--device", "cpu", "--window", "-3"], "window"),
        (["bench", "--device", "cpu", "--global-tokens", "4"], "global_tokens"),
        (["bench", "--device", "cpu", "--warmup", "-1"], "--warmup must be >= 0"),
        (["bench", "--budget-s", "soon"], "expected a number of seconds"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_cli_bad_arguments_exit_2(argv, message, capsys):
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    assert rc == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------- grid, masks and FLOPs


@pytest.mark.parametrize(
    "pattern,causal,spec",
    [
        ("dense", True, MaskSpec(True)),
        ("dense", False, MaskSpec(False)),
        ("window", True, MaskSpec(True, window=9)),
        ("window", False, MaskSpec(False, window=9)),
        ("flex", True, MaskSpec(True, window=9, global_tokens=3)),
        ("flex", False, MaskSpec(False, window=9, global_tokens=3)),
        ("block_sparse", True, MaskSpec(True, block_sparse=BlockSparseLayout())),
    ],
)
def test_flops_follow_each_masks_density(pattern, causal, spec):
    """TFLOP/s come from the keys each query really sees: the row's density and FLOPs equal
    the count of True entries of the dense mask, for every mask family."""
    n = 150
    result = run_bench(
        _settings(
            variants=["SW-SQA"],
            baselines=[],
            seq_lens=[n],
            pattern=pattern,
            causal=causal,
            window=9,
            global_tokens=3,
            repeats=1,
            warmup=0,
        )
    )
    (row,) = result.rows
    mask = dense_mask(spec, n)
    visible = n * n if mask is None else int(mask.sum())
    assert row.pattern == pattern and row.causal == causal and row.check_ok
    assert row.density == pytest.approx(visible / n**2)
    assert row.flops == pytest.approx(4 * row.n_q_heads * 16 * visible)


def test_grid_over_backends_reports_fraction_of_best_and_machine_header():
    base = _settings(variants=["xSQA"], seq_lens=[48], repeats=1, warmup=0)
    cells = expand_grid(base, backend=["auto", "sdpa", "flex"], pattern=["window"], head_dim=[8])
    assert len(cells) == 3
    saved = []
    result = run_grid(
        cells,
        on_cell=lambda partial: saved.append(
            (len(partial.rows), partial.partial, (partial.running or {}).get("variant"))
        ),
    )
    # Saved before every row (naming it, should it hang) and after every cell, so a run cut
    # short keeps its rows.
    assert saved == [
        (n, True, v) for c in (0, 2, 4) for n, v in ((c, "MHA"), (c + 1, "xSQA"), (c + 2, None))
    ]
    assert not result.partial and result.running is None
    result = result.to_dict()
    assert "partial" not in result and "running" not in result
    assert result["schema"].startswith("sqa-nas/bench/")
    assert {"device", "torch", "cuda", "cudnn", "triton", "flash_attn"} <= set(result["machine"])
    assert result["grid"] == {"backend": ["auto", "sdpa", "flex"]}
    assert len(result["rows"]) == 3 * 2  # MHA baseline + xSQA per cell
    for r in result["rows"]:
        assert r["backend"] == (
            r["backend_requested"] if r["backend_requested"] != "auto" else "sdpa"
        )
        assert r["kernel"].startswith(r["backend"])
        assert 0 < r["fraction_of_best"] <= 1.0 or r["backend_requested"] == "auto"
        named = [
            x
            for x in result["rows"]
            if x["variant"] == r["variant"]
            and x["head_dim"] == r["head_dim"]
            and x["backend_requested"] != "auto"
        ]
        assert r["best_backend"] == max(named, key=lambda x: x["tflops"])["backend_requested"]


def test_fraction_of_best_needs_two_backends_on_one_cell():
    rows = [
        BenchRow(variant="MHA", seq_len=8, backend_requested=b, tflops=t)
        for b, t in (("auto", 5.0), ("sdpa", 4.0), ("flex", 2.0))
    ]
    rows.append(BenchRow(variant="MHA", seq_len=16, backend_requested="sdpa", tflops=1.0))
    rows = add_fraction_of_best(rows)
    assert [r.fraction_of_best for r in rows] == [1.25, 1.0, 0.5, None]
    assert rows[0].best_backend == "sdpa" and rows[3].best_backend is None


def test_model_scope_times_the_paper_family_with_its_flops():
    settings = _settings(
        variants=["xSQA"],
        scope="model",
        n_layers=1,
        head_dim=8,
        seq_lens=[40],
        batch=2,
        repeats=1,
        warmup=0,
        check_len=40,
    )
    (mha, xsqa) = run_bench(settings).rows
    assert xsqa.model == "paper-family-hd8-h8" and xsqa.check_ok
    assert xsqa.backend == "sdpa" and xsqa.n_q_heads == 2
    config = settings.model_config("xSQA")
    assert (config.d_model, config.ffn_dim, config.vocab_size) == (64, 192, 10_000)
    assert xsqa.flops == pytest.approx(model_flops(config, 2, 40))
    assert mha.flops > xsqa.flops


def test_paper_presets_are_the_paper_family():
    from sqa_nas.bench import paper_family

    assert paper_family(16) == (
        "paper",
        dict(vocab_size=10_000, d_model=256, n_layers=8, n_heads=16, ffn_dim=768),
    )
    assert paper_family(128)[0] == "paper-hd128"


def test_a_failing_kernel_is_recorded_and_the_run_goes_on():
    class Flaky(SdpaBackend):
        name = "flaky"

        def forward(self, q, k, v, problem):
            if problem.seq_len > 64:  # passes the check at 64 tokens, fails when timed
                raise RuntimeError("CUDA error: an illegal memory access\nmore lines")
            return super().forward(q, k, v, problem)

    registry.register_backend(Flaky)
    try:
        result = run_bench(_settings(backend="flaky", seq_lens=[32, 96], check_len=64)).to_dict()
    finally:
        registry._backends.pop("flaky")
    by_len = {n: [r for r in result["rows"] if r["seq_len"] == n] for n in (32, 96)}
    assert all("ms" in r for r in by_len[32])
    assert all(
        r["error"] == "RuntimeError: CUDA error: an illegal memory access" and r["check_ok"]
        for r in by_len[96]
    )


def test_time_call_budget_cuts_long_calls_but_keeps_min_repeats():
    import time as _time

    calls = []

    def slow(_):
        calls.append(1)
        _time.sleep(0.03)

    samples = time_call(slow, device=torch.device("cpu"), warmup=3, repeats=10, budget_s=0.05)
    assert len(samples) == 2 and len(calls) == 3  # one warm-up, two timed
    calls.clear()
    samples = time_call(
        lambda _: calls.append(1), device=torch.device("cpu"), warmup=2, repeats=4, budget_s=10.0
    )
    assert len(samples) == 4 and len(calls) == 6  # fast calls: untouched
    calls.clear()

    def compiles_first(_):  # a slow first call (a compile), then a fast kernel
        calls.append(1)
        _time.sleep(0.3 if len(calls) == 1 else 0.0)

    samples = time_call(
        compiles_first, device=torch.device("cpu"), warmup=3, repeats=4, budget_s=1.0
    )
    assert len(calls) == 7 and len(samples) == 4 and max(samples) < 0.1  # full warm-up kept


class _FakeCudaClock:
    """torch.cuda's events and synchronize on a CPU clock, logging what time_call does."""

    def __init__(self, monkeypatch):
        self.log: list[str] = []
        clock = self

        class Event:
            def __init__(self, enable_timing=False):
                self.t = None

            def record(self):
                self.t = time.perf_counter()

            def synchronize(self):
                clock.log.append("sync")

            def elapsed_time(self, end):
                return (end.t - self.t) * 1e3

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: self.log.append("sync"))


def test_time_call_on_cuda_queues_the_repeats_after_a_synchronised_warm_up(monkeypatch):
    clock = _FakeCudaClock(monkeypatch)
    cuda = torch.device("cuda")
    samples = time_call(lambda _: clock.log.append("call"), device=cuda, warmup=3, repeats=5)
    # three warm-up calls, each alone (a synchronize before, the end event's after), then the
    # five repeats back to back and one synchronize at the end
    assert len(samples) == 5
    assert clock.log == ["sync", "call", "sync"] * 3 + ["call"] * 5 + ["sync"]
    clock.log.clear()
    samples = time_call(lambda _: clock.log.append("call"), device=cuda, warmup=0, repeats=4)
    assert len(samples) == 4  # no warm-up: the first two calls judge the plan, alone
    assert clock.log == ["sync", "call", "sync"] * 2 + ["call"] * 2 + ["sync"]


def test_time_call_on_cuda_does_not_let_a_compile_cut_the_plan(monkeypatch):
    clock = _FakeCudaClock(monkeypatch)
    calls = []

    def compiles_first(_):
        calls.append(1)
        time.sleep(0.3 if len(calls) == 1 else 0.0)

    samples = time_call(
        compiles_first, device=torch.device("cuda"), warmup=3, repeats=4, budget_s=1.0
    )
    assert len(calls) == 7 and len(samples) == 4 and max(samples) < 0.1
    clock.log.clear()
    calls.clear()

    def slow(_):
        calls.append(1)
        time.sleep(0.03)

    samples = time_call(slow, device=torch.device("cuda"), warmup=3, repeats=10, budget_s=0.05)
    assert len(samples) == 2 and len(calls) == 3  # one warm-up, two timed
    assert clock.log.count("sync") == 5  # two calls alone, the last one queued


@pytest.mark.gpu
def test_time_call_hides_host_time_shorter_than_the_kernels():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cuda = torch.device("cuda")
    a = torch.randn(8192, 8192, device=cuda, dtype=torch.bfloat16)

    def work(_):
        a @ a

    kernel = statistics.median(time_call(work, device=cuda, warmup=2, repeats=10))

    def slow_host(_):  # half a kernel of host time before every launch
        time.sleep(kernel / 2)
        work(None)

    queued = statistics.median(time_call(slow_host, device=cuda, warmup=2, repeats=10))
    assert queued < 1.2 * kernel, (queued, kernel)  # synchronising per call: ~1.5x


def test_backend_options_are_benchmarked_under_their_spec():
    name = register_backend_spec("flex:compile=0")
    assert name == "flex:compile=0" and registry.get_backend(name).compile is False
    (mha,) = run_bench(_settings(variants=["MHA"], backend=name, repeats=1, warmup=0)).rows
    assert mha.backend == name and mha.kernel == "flex (eager)"
    with pytest.raises(UserError, match="takes no option"):
        register_backend_spec("sdpa:tiles=3")
    with pytest.raises(UserError, match="key=value"):
        register_backend_spec("sdpa:tiles")


def test_cli_grid_json_png_and_calibration(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, png, cal = tmp_path / "b.json", tmp_path / "b.png", tmp_path / "cal.json"
    rc = main(
        [
            "bench",
            "--variants",
            "xSQA",
            "--seq-lens",
            "32",
            "--device",
            "cpu",
            "--n-heads",
            "8",
            "--head-dim",
            "8",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--backend",
            "sdpa,flex",
            "--causal-modes",
            "causal,noncausal",
            "--patterns",
            "window",
            "--window",
            "8",
            "--baselines",
            "MHA",
            "--json",
            str(out),
            "--png",
            str(png),
            "--calibration-out",
            str(cal),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 2 * 2 * 2  # backends x masks x variants
    assert {r["causal"] for r in data["rows"]} == {True, False}
    assert png.stat().st_size > 10_000
    entries = json.loads(cal.read_text())["entries"]
    assert {(e["pattern"], e["causal"], e["train"]) for e in entries} == {
        ("window", True, False),
        ("window", False, False),
    }
    assert all(set(e["order"]) == {"sdpa", "flex"} for e in entries)
    assert "of best" in capsys.readouterr().out


def test_python_m_sqa_nas_bench_imports_only_what_the_bench_needs(tmp_path):
    """`python -m sqa_nas bench` imports the bench command's module alone (the GPU machine
    lacks the other commands' dependencies: optuna, textual, ray) and records its command."""
    out = tmp_path / "b.json"
    script = textwrap.dedent(f"""
        import sys
        sys.argv = ["sqa_nas", "bench", "--variants", "xSQA", "--seq-lens", "24",
                    "--device", "cpu", "--n-heads", "4", "--head-dim", "8", "--repeats", "1",
                    "--baselines", "MHA", "--json", {str(out)!r}]
        from sqa_nas.cli import main
        rc = main()
        assert not {{"optuna", "textual", "ray"}} & set(sys.modules), sorted(sys.modules)
        assert main(["bench", "--variants", "Nope", "--device", "cpu"]) == 2
        sys.exit(rc)
        """)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "unknown variant 'Nope'" in run.stderr
    assert json.loads(out.read_text())["settings"]["command"].startswith(
        "sqa-nas bench --variants xSQA"
    )


def test_a_hung_row_is_cut_with_its_stacks_and_named_in_the_json(tmp_path):
    """A call that never returns cannot be interrupted from Python: past --row-timeout-s the
    process prints every thread's stack and exits, and the JSON saved before the row keeps
    the finished rows and names the one in flight."""
    out = tmp_path / "b.json"
    script = textwrap.dedent(f"""
        import time
        from sqa_nas import registry
        from sqa_nas.cli import main
        from sqa_nas.kernels.sdpa import SdpaBackend

        class Hangs(SdpaBackend):
            name = "hangs"

            def forward(self, q, k, v, problem):
                if problem.seq_len > 64:  # the check (64 tokens) passes; the timed call hangs
                    while True:
                        time.sleep(1)
                return super().forward(q, k, v, problem)

        registry.register_backend(Hangs)
        argv = ["bench", "--variants", "xSQA", "--device", "cpu", "--n-heads", "4",
                "--head-dim", "8", "--repeats", "1", "--warmup", "0", "--baselines", "MHA",
                "--backend", "hangs",
                "--check-len", "64"]
        main(argv + ["--seq-lens", "32", "--row-timeout-s", "0"])  # imports done, no timer
        main(argv + ["--seq-lens", "32,96", "--row-timeout-s", "3", "--json", {str(out)!r}])
        """)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    assert "Timeout" in run.stderr and "in forward" in run.stderr  # where it hung
    data = json.loads(out.read_text())
    assert data["partial"] and [(r["variant"], r["seq_len"]) for r in data["rows"]] == [
        ("MHA", 32),
        ("xSQA", 32),
    ]
    assert data["running"]["variant"] == "MHA" and data["running"]["seq_len"] == 96
    assert data["running"]["row_timeout_s"] == 3


def test_the_kernel_is_read_again_only_after_the_timed_tensors_are_freed(monkeypatch):
    """The second kernel probe allocates q / k / v of its own: at 1M tokens they must reuse
    the timed tensors' memory, not add to it."""
    import gc

    timed_shape = (3, 8, 64, 16)  # batch 3: the probe's own tensors have batch 1
    live_at_probe = []
    real = SdpaBackend.kernel_name

    def probe(self, problem, inputs=None):
        live_at_probe.append(
            sum(
                issubclass(type(o), torch.Tensor) and tuple(o.shape) == timed_shape
                for o in gc.get_objects()
            )
        )
        return real(self, problem, inputs)

    monkeypatch.setattr(SdpaBackend, "kernel_name", probe)
    result = run_bench(
        _settings(variants=["MHA"], baselines=[], batch=3, backend="sdpa", check=False)
    )
    assert result.rows[0].timed
    assert live_at_probe == [0, 0]  # before the timing, and after it once freed
