"""The variant registry, backend selection, and plugins through entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sqa_nas import registry
from sqa_nas.attention import MaskSpec
from sqa_nas.attention.problem import AttentionProblem
from sqa_nas.cli import guarded
from sqa_nas.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {  # name: (H_q, H_kv, pattern) at H = 16, from the table
    "MHA": (16, 16, "dense"),
    "GQA": (16, 4, "dense"),
    "MQA": (16, 1, "dense"),
    "SQA": (8, 4, "dense"),
    "sSQA": (8, 8, "dense"),
    "xSQA": (4, 4, "dense"),
    "xSMQA": (4, 1, "dense"),
    "lSQA": (12, 4, "dense"),
    "rSQA": (4, 8, "dense"),
    "SW-SQA": (8, 4, "window"),
    "Flex-SQA": (8, 8, "flex"),
    "BS-SQA": (8, 4, "block_sparse"),
}


def test_builtin_variants():
    names = [v.name for v in registry.list_variants()]
    assert set(EXPECTED) <= set(names)
    for name, (hq, hkv, pattern) in EXPECTED.items():
        cfg = registry.variant(name, d_model=256, n_heads=16)
        assert (cfg.n_q_heads, cfg.n_kv_heads, cfg.pattern) == (hq, hkv, pattern), name
    assert registry.variant("Flex-SQA", d_model=256, n_heads=16).global_tokens == 16
    assert registry.variant("SW-SQA", d_model=256, n_heads=16, window=64).window == 64
    assert registry.variant("xsqa", d_model=256, n_heads=16).n_q_heads == 4  # any case


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown variant 'XQA'.*MHA, GQA"):
        registry.variant("XQA", d_model=64, n_heads=8)


def test_register_variant_decorator():
    @registry.register_variant
    def half_mqa():
        return registry.Variant("test-hMQA", "H/2", "1", "half the queries, one KV head")

    try:
        cfg = registry.variant("test-hMQA", d_model=64, n_heads=8)
        assert (cfg.n_q_heads, cfg.n_kv_heads) == (4, 1)
    finally:
        registry._variants.pop("test-hMQA")


def _problem(pattern_kwargs, device="cpu", dtype=torch.float32, n=128, grad=False):
    return AttentionProblem(MaskSpec(**pattern_kwargs), 8, 4, 16, n, dtype, device, 0.25, grad)


def test_select_backend_auto_and_explicit_refusal():
    backend, reason = registry.select_backend(_problem({"causal": True}))
    assert backend.name == "sdpa" and reason
    with pytest.raises(UserError, match="backend 'flash_attn' cannot run.*backends that can: "):
        registry.select_backend(_problem({"causal": True}), "flash_attn")
    with pytest.raises(UserError, match="unknown backend 'nope'"):
        registry.select_backend(_problem({"causal": True}), "nope")
    # sdpa refuses to materialise a window mask at 100k tokens; only a GPU backend could.
    with pytest.raises(UserError, match="no backend can run this layer"):
        registry.select_backend(_problem({"causal": True, "window": 8}, n=100_000))


def test_plugin_package_registers_through_entry_points(tmp_path):
    pkg = tmp_path / "src"
    (pkg / "sqa_demo_plugin").mkdir(parents=True)
    (pkg / "sqa_demo_plugin" / "__init__.py").write_text(
        textwrap.dedent("""
        from sqa_nas.registry import Variant
        from sqa_nas.kernels.sdpa import SdpaBackend

        DEMO = Variant("DemoSQA", "H/2", "H/2", "a variant from a plugin")

        class DemoBackend(SdpaBackend):
            name = "demo"
            description = "sdpa under another name, from a plugin"

            def priority(self, problem):
                return 0, "demo plugin backend"
    """)
    )
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "sqa-demo-plugin"
        version = "0.1"
        [project.entry-points."sqa_nas.variants"]
        demo = "sqa_demo_plugin:DEMO"
        [project.entry-points."sqa_nas.backends"]
        demo = "sqa_demo_plugin:DemoBackend"
    """)
    )
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(pkg),
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)]), "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "variants"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DemoSQA" in out and "demo" in out
    code = (
        "from sqa_nas.registry import variant; from sqa_nas.layer import "
        "SparseQueryAttention; import torch; a = SparseQueryAttention(variant('DemoSQA', "
        "d_model=64, n_heads=8, backend='demo')); a(torch.randn(1, 5, 64)); "
        "print(a.backend_name, a.config.n_q_heads)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["demo", "4"]


@pytest.mark.parametrize(
    "module",
    [
        "sqa_nas.attention",
        "sqa_nas.attention.reference",
        "sqa_nas.kernels.base",
        "sqa_nas.kernels.calibration",
        "sqa_nas.kernels.flex",
        "sqa_nas.registry",
        "sqa_nas.layer",
        "sqa_nas.model",
        "sqa_nas.analytics",
        "sqa_nas.testing",
    ],
)
def test_every_module_imports_first(module):
    """No import cycle bites whichever module a program imports first."""
    subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_error_messages_keep_their_brackets(capsys):
    """A UserError is printed as written: '[flash]' in an install hint is not rich markup."""

    def fail():
        raise UserError("pip install 'sqa-nas[flash]' or name [bold]another[/bold] backend")

    assert guarded(fail) == 2
    err = capsys.readouterr().err
    assert "sqa-nas[flash]" in err and "[bold]another[/bold]" in err
