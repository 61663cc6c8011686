"""Every built-in backend passes `BackendContract`; GPU-only ones are skipped without CUDA."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from sqa_nas import registry
from sqa_nas.attention import MaskSpec, dense_mask
from sqa_nas.attention.problem import AttentionProblem
from sqa_nas.bench import register_backend_spec
from sqa_nas.errors import UserError
from sqa_nas.kernels import calibration, flash_attn, flex
from sqa_nas.kernels.base import AttentionBackend
from sqa_nas.kernels.flash_attn import FlashAttnBackend
from sqa_nas.kernels.flex import FlexBackend
from sqa_nas.kernels.sdpa import SdpaBackend
from sqa_nas.kernels.xformers import XformersBackend, attn_bias_for
from sqa_nas.registry import list_backends, select_backend
from sqa_nas.testing import BackendContract

pytestmark = pytest.mark.usefixtures("seeded")


class TestSdpaContract(BackendContract):
    backend = SdpaBackend()


class TestFlexContractEager(BackendContract):
    backend = FlexBackend(compile=False)


def test_a_backend_must_implement_the_contract():
    """`AttentionBackend` is an ABC: a subclass without `forward` / `unsupported` cannot be
    built, so a plugin learns at registration, not at its first call."""

    class Half(AttentionBackend):
        name = "half"

        def unsupported(self, problem):
            return None

    with pytest.raises(TypeError, match="forward"):
        Half()
    with pytest.raises(TypeError, match="expects an AttentionBackend"):
        registry.register_backend(object())


@pytest.mark.gpu
class TestSdpaContractCuda(BackendContract):
    backend = SdpaBackend()
    device = "cuda"
    dtype = torch.bfloat16


@pytest.mark.gpu
class TestFlexContractCuda(BackendContract):
    backend = FlexBackend()
    device = "cuda"
    dtype = torch.bfloat16


@pytest.mark.gpu
class TestFlashAttnContract(BackendContract):
    backend = FlashAttnBackend()
    device = "cuda"
    dtype = torch.bfloat16


@pytest.mark.gpu
class TestFlashAttnContractHeadDim16(BackendContract):
    """The paper's head_dim: flash-attn-4's backward is wrong there, so it must refuse."""

    backend = FlashAttnBackend()
    device = "cuda"
    dtype = torch.bfloat16
    head_dim = 16


@pytest.mark.gpu
class TestXformersContract(BackendContract):
    backend = XformersBackend()
    device = "cuda"
    dtype = torch.bfloat16


@pytest.mark.parametrize(
    "spec", [MaskSpec(True), MaskSpec(True, window=5), MaskSpec(False, window=3), MaskSpec(False)]
)
def test_xformers_biases_equal_our_masks(spec):
    """The bias classes are plain Python: materialise them on CPU and compare."""
    pytest.importorskip("xformers.ops")
    n = 23
    bias = attn_bias_for(spec)
    ours = dense_mask(spec, n)
    if bias is None:
        assert ours is None
        return
    theirs = bias.materialize((n, n), dtype=torch.float32) == 0  # 0 = visible, -inf = masked
    assert torch.equal(theirs, ours)


def test_xformers_refuses_global_tokens():
    pytest.importorskip("xformers.ops")
    with pytest.raises(ValueError, match="no bias for flex"):
        attn_bias_for(MaskSpec(True, window=4, global_tokens=2))


# --------------------------------------------------------------------------- calibration
def _cuda_problem(grad=False, dtype=torch.bfloat16, **mask):
    return AttentionProblem(
        MaskSpec(**{"causal": True, **mask}), 16, 4, 128, 4096, dtype, "cuda", 128**-0.5, grad
    )


def test_builtin_calibration_cites_measurements_and_names_real_backends():
    names = {b.name for b in list_backends()}
    for entry in calibration.BUILTIN:
        assert set(entry.order) <= names, entry
        assert "measure" in entry.source and "TFLOP/s" in entry.source or "only" in entry.source
    assert {e.pattern for e in calibration.BUILTIN} == {"dense", "window", "flex", "block_sparse"}


def test_measured_order_drives_auto_and_falls_back_in_order(monkeypatch):
    """On an H200 the measured order decides; without flash-attn-4 (this machine) `auto`
    takes the next backend of that order, and its reason says whose order it followed."""
    monkeypatch.setattr(calibration, "gpu_name", lambda index=None: "NVIDIA H200")
    backend, reason = select_backend(_cuda_problem())
    assert backend.name == "sdpa" and "measured order on H200" in reason
    assert "flash_attn > sdpa > flex" in reason
    backend, _ = select_backend(_cuda_problem(window=512))
    assert backend.name == "flex"  # flash_attn first, then flex; sdpa would build N x N
    # Another GPU, or the CPU, keeps the backends' own scores.
    monkeypatch.setattr(calibration, "gpu_name", lambda index=None: "NVIDIA A100-SXM4-40GB")
    assert SdpaBackend().priority(_cuda_problem())[0] == 80
    cpu = AttentionProblem(MaskSpec(True), 16, 4, 128, 4096, torch.float32, "cpu", 0.1)
    assert calibration.lookup(cpu, gpu="NVIDIA H200") is None


def test_a_measured_file_overrides_the_builtin_order(monkeypatch, tmp_path):
    monkeypatch.setattr(calibration, "gpu_name", lambda index=None: "NVIDIA H200")
    measured = calibration.Calibration(
        "H200",
        "dense",
        "bfloat16",
        ("flex", "sdpa"),
        "a test measurement",
        causal=True,
        train=False,
    )
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"entries": [measured.as_dict()]}))
    monkeypatch.setenv(calibration.ENV_VAR, str(path))
    assert select_backend(_cuda_problem())[0].name == "flex"
    # Only where it applies: training and bidirectional problems keep the built-in order.
    assert select_backend(_cuda_problem(grad=True))[0].name == "sdpa"
    assert calibration.lookup(_cuda_problem(causal=False)).source.startswith("H200 measurements")


def test_an_unmeasured_able_backend_leaves_the_choice_to_the_scores(monkeypatch):
    """flash-attn-3 where the order measured flash-attn-4: no measurement compares it with
    the others, so every backend's own score decides (a measured order would put it last)."""
    monkeypatch.setattr(calibration, "gpu_name", lambda index=None: "NVIDIA H200")

    class Fa3Like(SdpaBackend):
        name = "fa3like"

        def priority(self, problem):
            return 75, "an unmeasured kernel"

    registry.register_backend(Fa3Like)
    try:
        backend, reason = select_backend(_cuda_problem(window=512))
        assert backend.name == "fa3like" and "measured order" not in reason
        # Backends under an option spec ("flex:compile=0") run only when named.
        registry._backends.pop("fa3like")
        register_backend_spec("flex:compile=0")
        backend, reason = select_backend(_cuda_problem(window=512))
        assert backend.name == "flex" and "flex:compile=0" not in reason
    finally:
        registry._backends.pop("fa3like", None)
        registry._backends.pop("flex:compile=0", None)


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "cannot read"),
        ('{"entries": [{"gpu": "H200", "sourc": "typo"}]}', "is not a calibration file"),
        ("not json", "is not a calibration file"),
    ],
)
def test_a_bad_calibration_file_is_a_user_error(monkeypatch, tmp_path, content, message):
    path = tmp_path / "cal.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv(calibration.ENV_VAR, str(path))
    monkeypatch.setattr(calibration, "gpu_name", lambda index=None: "NVIDIA H200")
    with pytest.raises(UserError, match=f"SQA_NAS_CALIBRATION: .*{message}"):
        select_backend(_cuda_problem())


def test_order_from_rows_ranks_backends_by_share_of_the_best():
    def row(backend, variant, tflops):
        return {
            "backend_requested": backend,
            "variant": variant,
            "tflops": tflops,
            "pattern": "dense",
            "dtype": "bfloat16",
            "causal": True,
            "mode": "fwd",
            "seq_len": 4096,
            "batch": 1,
            "head_dim": 128,
            "scope": "kernel",
        }

    rows = [
        row("auto", "MHA", 9.0),
        row("sdpa", "MHA", 6.0),
        row("flash_attn", "MHA", 7.0),
        row("sdpa", "xSQA", 5.0),
        row("flash_attn", "xSQA", 4.0),
    ]
    (entry,) = calibration.order_from_rows(rows, "NVIDIA H200", "test")
    # flash_attn: (1 + 0.8) / 2 = 0.9; sdpa: (6/7 + 1) / 2 = 0.93
    assert entry.order == ("sdpa", "flash_attn") and entry.gpu == "H200"
    assert (entry.causal, entry.train) == (True, False)


def test_kernel_names_say_what_runs():
    problem = AttentionProblem(MaskSpec(True), 8, 2, 16, 64, torch.float32, "cpu", 0.25)
    q, k = torch.randn(1, 8, 64, 16), torch.randn(1, 2, 64, 16)
    assert SdpaBackend().kernel_name(problem, (q, k, k)).startswith("sdpa/")
    assert SdpaBackend().kernel_name(problem) == "sdpa"
    assert FlexBackend(compile=False).kernel_name(problem) == "flex (eager)"
    assert FlashAttnBackend(pack_gqa=False).kernel_name(problem) in (
        "flash_attn",
        "flash-attn-4 (pack_gqa=False)",
    )


def test_flex_falls_back_to_triton_when_flash_fails(monkeypatch):
    """FlexAttention's FLASH backend is experimental: a layout it cannot build runs on the
    Triton backend, is remembered (every length), and the kernel name says what ran."""
    calls = []

    def fake_flex(q, k, v, block_mask, scale, enable_gqa, kernel_options):
        calls.append(kernel_options)
        if kernel_options:
            raise RuntimeError("BACKEND='FLASH' but flash attention cannot be used: test")
        return q

    monkeypatch.setattr(flex, "flash_backend_available", lambda: True)
    monkeypatch.setattr(flex, "_compiled_flex", lambda: fake_flex)
    monkeypatch.setattr(flex, "_block_mask", lambda *args: None)
    backend = FlexBackend(compile=True)
    problem = _cuda_problem(window=64)
    assert backend.kernel_name(problem) == "flex (FLASH)"
    q = torch.randn(1, 16, 8, 128)
    with pytest.warns(UserWarning, match="FLASH backend failed"):
        assert backend.forward(q, q[:, :4], q[:, :4], problem) is q
    assert calls == [{"BACKEND": "FLASH"}, None]
    longer = dataclasses.replace(problem, seq_len=65536)
    assert backend.kernel_name(longer).startswith("flex (Triton; FLASH failed: RuntimeError")
    backend.forward(q, q[:, :4], q[:, :4], longer)
    assert calls[-1] is None  # not retried


def test_compiled_flex_refuses_small_head_dim():
    problem = AttentionProblem(
        MaskSpec(True, window=4, global_tokens=2), 8, 2, 8, 256, torch.bfloat16, "cuda", 8**-0.5
    )
    assert "head_dim >= 16" in FlexBackend(compile=True).unsupported(problem)
    assert (
        FlexBackend(compile=False).unsupported(
            AttentionProblem(MaskSpec(True), 8, 2, 8, 256, torch.float32, "cpu", 8**-0.5)
        )
        is None
    )


def test_flash_attn_4_trains_only_where_its_backward_is_right(monkeypatch):
    """flash-attn-4's backward is wrong at head_dim 16 (measured on an H200): it keeps the
    forward there, and training goes to the next backend with the reason stated."""
    monkeypatch.setattr(flash_attn, "_load", lambda: (lambda *a, **k: None, "flash-attn-4", None))
    monkeypatch.setattr(calibration, "gpu_name", lambda index=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    backend = FlashAttnBackend()

    def problem(head_dim, grad, hkv=4):
        return AttentionProblem(
            MaskSpec(True), 16, hkv, head_dim, 1024, torch.bfloat16, "cuda", head_dim**-0.5, grad
        )

    assert backend.unsupported(problem(16, grad=False)) is None
    why = backend.unsupported(problem(16, grad=True))
    assert "backward" in why and "head_dim 16" in why
    assert backend.unsupported(problem(16, grad=True, hkv=16))  # MHA too: dQ is wrong
    assert backend.unsupported(problem(32, grad=True)) is None
    assert select_backend(problem(16, grad=False))[0].name == "flash_attn"
    chosen, _ = select_backend(problem(16, grad=True))
    assert chosen.name == "sdpa"
    with pytest.raises(UserError, match="backward gives wrong gradients"):
        select_backend(problem(16, grad=True), "flash_attn")
    # FlexAttention's FLASH backend runs flash-attn-4's kernels too, backward included: a
    # windowed layer trains on flex's Triton backend there.
    monkeypatch.setattr(flex, "flash_backend_available", lambda: True)
    window = dataclasses.replace(problem(16, grad=True), mask=MaskSpec(True, window=64))
    chosen, _ = select_backend(window)
    assert (chosen.name, chosen.kernel_name(window)) == ("flex", "flex (Triton)")
    assert FlexBackend().kernel_name(dataclasses.replace(window, head_dim=32)) == "flex (FLASH)"
    assert select_backend(dataclasses.replace(window, requires_grad=False))[0].name == "flash_attn"
