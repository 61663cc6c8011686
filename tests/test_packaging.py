"""pyproject.toml as users meet it: every dependency (and every runtime extra's) has an
upper bound, a major above the versions the tests ran on; Ray is Ray Core (no dashboard
stack); and the ``flash`` extra installs the distribution the code imports first and names in
its messages (flash-attn-4, whose `flash_attn.cute` is FlashAttention-4), not FA2's
`flash-attn`, which needs a long CUDA build."""

from __future__ import annotations

import importlib
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from sqa_nas.kernels import flash_attn as flash_module
from sqa_nas.kernels.flash_attn import FlashAttnBackend

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
RUNTIME_EXTRAS = ("flash", "xformers", "hf")  # dev: the tools that check the code


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def _requirements() -> list[Requirement]:
    project = _project()
    extras = project["optional-dependencies"]
    found = [Requirement(r) for r in project["dependencies"]]
    found += [Requirement(r) for name in RUNTIME_EXTRAS for r in extras[name]]
    found += [Requirement(r) for r in extras["dev"] if r.startswith("transformers")]
    return found


def test_every_dependency_has_an_upper_bound():
    unbounded = [
        str(r)
        for r in _requirements()
        if not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)
    ]
    assert unbounded == []


def test_the_bounds_admit_the_versions_the_tests_ran_on():
    ran_on = {
        "torch": "2.13.0",
        "optuna": "5.0.0",
        "ray": "2.60.0",
        "rich": "15.0.0",
        "textual": "8.2.8",
        "pydantic": "2.14.4",
        "numpy": "2.4.6",
        "matplotlib": "3.11.2",
        "transformers": "5.24.0",
        "flash-attn-4": "4.0.0b36",  # on the H200
    }
    specs = {r.name: r.specifier for r in _requirements()}
    refused = [f"{n} {v}" for n, v in ran_on.items() if not specs[n].contains(v, prereleases=True)]
    assert refused == []
    assert specs["torch"].contains("2.11.0")  # the H200's


def test_ray_is_ray_core():
    """`ray start`, `ray status` and ray.init(address=...) are Ray Core; [default] adds the
    dashboard and metrics stack the README says is not needed."""
    (ray,) = [r for r in _requirements() if r.name == "ray"]
    assert ray.extras == set()


def test_the_flash_extra_installs_the_kernel_the_code_imports(monkeypatch):
    (flash,) = [Requirement(r) for r in _project()["optional-dependencies"]["flash"]]
    assert flash.name == "flash-attn-4"
    assert flash.specifier.contains("4.0.0b36")  # a beta: the bound lets pip take it
    # The module the backend imports first is that distribution's (its flavour says so) ...
    fake = types.SimpleNamespace(flash_attn_func=lambda *a, **k: None)
    real = importlib.import_module
    monkeypatch.setattr(
        importlib,
        "import_module",
        lambda name, *a: fake if name == "flash_attn.cute" else real(name, *a),
    )
    flash_module._load.cache_clear()
    try:
        assert FlashAttnBackend().flavour == flash.name
    finally:
        monkeypatch.undo()
        flash_module._load.cache_clear()
    # ... and without it, the message names it and the extra.
    if FlashAttnBackend().flavour is None:
        message = FlashAttnBackend().availability() or ""
        assert f"pip install {flash.name}" in message and "sqa-nas[flash]" in message


def test_every_package_of_the_source_tree_is_installed():
    """A folder of sqa_nas/ with an __init__.py that `packages` misses would be absent from a
    wheel (an editable install still finds it, so nothing else would notice)."""
    root = PYPROJECT.parent
    listed = set(tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(root).parts)
        for p in (root / "sqa_nas").rglob("__init__.py")
        if "kernels" not in p.parts
    }
    assert found - listed == set()
