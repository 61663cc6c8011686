"""An export's weights: model.safetensors is written atomically, keyed as every form of the
model names its weights (sqa-nas, model.py, the Hugging Face class's `.model`), a tied head
stored once and tied again on load; loading is strict and a bad file or key is one line
naming both. `export_model` writes a config with its weights (given, or the initialisation
said to be untrained), `load_export` reads it back, and `sqa-nas export --weights` takes an
sqa-nas checkpoint whose keys and shapes fit the trial, and refuses any other."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from sqa_nas import checkpoint
from sqa_nas.cli import main
from sqa_nas.errors import UserError
from sqa_nas.export import (
    WEIGHTS_FILE,
    export_model,
    export_trial,
    find_trial,
    load_export,
    load_weights,
    save_weights,
)
from sqa_nas.export.info import UNTRAINED
from sqa_nas.model import ModelConfig, build_model
from sqa_nas.train import TrainState
from tests.fakestudy import HEADS, make_study

SHAPE = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, ffn_dim=64)
LAYERS = [{"n_q_heads": 4, "n_kv_heads": 1}, {"n_q_heads": 2, "n_kv_heads": 2, "window": 4}]
TIED = ModelConfig(**SHAPE, layers=LAYERS)
UNTIED = ModelConfig(**SHAPE, layers=LAYERS, tie_embeddings=False)
DEEPER = ModelConfig(**{**SHAPE, "n_layers": 3}, layers=[*LAYERS, LAYERS[0]], tie_embeddings=False)


def import_model_py(folder: Path):
    spec = importlib.util.spec_from_file_location(f"weights_{folder.name}", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- the file
@pytest.mark.parametrize("config", [TIED, UNTIED], ids=["tied", "untied"])
def test_one_file_loads_into_sqa_nas_model_py_and_the_hf_model(tmp_path, config):
    from safetensors.torch import load_file, load_model

    library = build_model(config, seed=3)
    path = save_weights(library.state_dict(), tmp_path)
    assert path == tmp_path / WEIGHTS_FILE
    stored = load_file(path)
    assert ("lm_head.weight" in stored) is not config.tie_embeddings  # a tie is stored once
    assert set(stored) == set(library.state_dict()) - (
        {"lm_head.weight"} if config.tie_embeddings else set()
    )

    again = build_model(config, seed=4)
    load_weights(again, tmp_path)
    assert same_weights(again, library)
    assert (again.lm_head.weight is again.embed.weight) is config.tie_embeddings

    folder = export_model(config, tmp_path / f"export_{config.tie_embeddings}")
    standalone = import_model_py(folder).build_model()
    assert list(standalone.state_dict()) == list(library.state_dict())  # the shared keys
    load_model(standalone, path)  # what model.py's docstring says to do
    tokens = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        assert torch.allclose(standalone(tokens), library(tokens), atol=1e-5)
    assert (standalone.lm_head.weight is standalone.embed.weight) is config.tie_embeddings

    transformers = pytest.importorskip("transformers")
    save_weights(library.state_dict(), folder)  # the hf class's .model has the same keys
    hf_config = transformers.AutoConfig.from_pretrained(
        export_model(config, tmp_path / f"hf_keys_{config.tie_embeddings}", fmt="hf"),
        trust_remote_code=True,
    )
    hf = transformers.AutoModelForCausalLM.from_config(hf_config, trust_remote_code=True)
    assert list(hf.model.state_dict()) == list(library.state_dict())


def test_save_is_atomic_and_replaces_the_old_file(tmp_path, monkeypatch):
    first, second = build_model(TIED, seed=1), build_model(TIED, seed=2)
    save_weights(first.state_dict(), tmp_path)
    save_weights(second.state_dict(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEIGHTS_FILE]  # no part file left
    loaded = build_model(TIED)
    load_weights(loaded, tmp_path)
    assert same_weights(loaded, second)

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        save_weights(first.state_dict(), tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEIGHTS_FILE]
    load_weights(loaded, tmp_path)
    assert same_weights(loaded, second)  # the old file, whole


def edited(edit):
    def make(folder: Path) -> None:
        state = dict(build_model(TIED, seed=1).state_dict())
        edit(state)
        save_weights(state, folder)

    return make


# Malformed weight folders, each refused with one line naming the file and the key.
BAD_FILES = {
    "missing-file": (lambda folder: None, "model.safetensors: no such file"),
    "not-safetensors": (
        lambda folder: (folder / WEIGHTS_FILE).write_bytes(b"\x00garbage" * 10),
        "model.safetensors: not a readable safetensors file",
    ),
    "truncated": (
        lambda folder: (
            edited(lambda s: None)(folder),
            (folder / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes()[:-100]),
        ),
        "not a readable safetensors file",
    ),
    "missing-key": (
        edited(lambda s: s.pop("layers.1.attn.v_proj.weight")),
        "no 'layers.1.attn.v_proj.weight', which the model needs",
    ),
    "extra-key": (
        edited(lambda s: s.update({"layers.2.attn.q_proj.weight": torch.zeros(4, 32)})),
        "'layers.2.attn.q_proj.weight' is not a weight of this model",
    ),
    "wrong-shape": (
        edited(lambda s: s.update({"layers.0.attn.k_proj.weight": torch.zeros(16, 32)})),
        "'layers.0.attn.k_proj.weight' has shape (16, 32), the model's (8, 32)",
    ),
    "untied-head": (
        edited(lambda s: s.update({"lm_head.weight": torch.zeros(64, 32)})),
        "'lm_head.weight' differs from 'embed.weight', which it is tied to",
    ),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_loading_is_strict_and_names_the_file_and_the_first_bad_key(tmp_path, name):
    make, message = BAD_FILES[name]
    make(tmp_path)
    model = build_model(TIED, seed=9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError) as exc:
        load_weights(model, tmp_path)
    text = str(exc.value)
    assert str(tmp_path / WEIGHTS_FILE) in text and message in text and "\n" not in text
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


# ------------------------------------------------------------------------ export_model
def test_an_export_without_weights_is_the_seeded_initialisation_and_says_untrained(tmp_path):
    state = torch.random.get_rng_state()
    out = export_model(TIED, tmp_path / "plain", title="My tiny model")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG untouched
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.yaml",
        "model.py",
        WEIGHTS_FILE,
    ]
    text = (out / "config.yaml").read_text()
    assert yaml.safe_load(text)["provenance"] == {"weights": UNTRAINED}
    assert f"# model.safetensors: {UNTRAINED}; trained weights: sqa-nas export" in text
    assert "--weights CHECKPOINT" in text and "sqa-nas finetune DIR --data ... --tokens N" in text
    assert UNTRAINED.startswith("untrained: initialised weights")
    readme = (out / "README.md").read_text()
    assert readme.startswith("# My tiny model\n")
    assert f"holds **{UNTRAINED}**" in readme
    assert (
        "--weights CHECKPOINT" in readme and "sqa-nas finetune DIR --data ... --tokens N" in readme
    )
    assert "untrained: initialised weights" in (out / "model.py").read_text()
    loaded = load_export(out)
    assert same_weights(loaded, build_model(TIED, seed=0))
    assert loaded.config.resolved() == TIED.resolved()


def test_an_export_with_a_state_dict_loads_back_the_same_model(tmp_path):
    trained = build_model(UNTIED, seed=7)
    provenance = {"source": "unit test", "steps": 3}
    out = export_model(
        UNTIED, tmp_path / "w", state_dict=trained.state_dict(), provenance=provenance
    )
    data = yaml.safe_load((out / "config.yaml").read_text())
    assert data["provenance"]["source"] == "unit test"
    assert data["provenance"]["weights"].startswith("trained:")
    assert "untrained" not in (out / "README.md").read_text()
    assert "untrained" not in (out / "config.yaml").read_text()
    assert same_weights(load_export(out), trained)


# Malformed export_model calls: refused before anything is written.
BAD_CALLS = {
    "missing-key": (
        lambda sd: {k: v for k, v in sd.items() if k != "norm.weight"},
        {},
        "state_dict: no 'norm.weight'",
    ),
    "wrong-shape": (
        lambda sd: {**sd, "embed.weight": torch.zeros(65, 32)},
        {},
        "state_dict: 'embed.weight' has shape (65, 32)",
    ),
    "not-a-tensor": (lambda sd: {**sd, "norm.weight": [1.0] * 32}, {}, "is a list, not a tensor"),
    "provenance": (lambda sd: sd, {"provenance": {"when": object()}}, "must be plain data"),
    "format": (lambda sd: sd, {"fmt": "onnx"}, "unknown export format 'onnx'"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_export_model_refuses_weights_that_do_not_fit_and_writes_nothing(tmp_path, name):
    edit, kwargs, message = BAD_CALLS[name]
    state_dict = edit(dict(build_model(UNTIED, seed=1).state_dict()))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export_model(UNTIED, tmp_path / "out", state_dict=state_dict, **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p / "nowhere", "no such folder"),
        (lambda p: p, "is not an sqa-nas export: it has no config.yaml"),
        (lambda p: (p / "config.yaml").write_text("d_model: 32\n") and p, "no such file"),
    ],
    ids=["no-folder", "no-config", "no-weights"],
)
def test_load_export_refuses_a_folder_that_is_not_an_export(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        load_export(make(tmp_path))


# --------------------------------------------------------------------- export --weights
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights_study")
    study = make_study(f"sqlite:///{root / 'study.db'}", n=1, failed=0, running=0)
    study.add_trial(
        optuna.trial.create_trial(
            values=[2.5, 1000.0],
            params={"layer0.heads": "8/2"},
            distributions={"layer0.heads": optuna.distributions.CategoricalDistribution(HEADS)},
            user_attrs={"model": UNTIED.resolved(), "device": {"name": "NVIDIA H200"}},
        )
    )
    study.url, study.number = f"sqlite:///{root / 'study.db'}", study.trials[-1].number
    return study


def save_checkpoint(path: Path, config: ModelConfig, seed: int) -> torch.nn.Module:
    model = build_model(config, seed=seed)
    state = TrainState(step=12, tokens=3072, curve=[], optimizer={}, seed=0, planned_steps=20)
    checkpoint.save(path, model, state, {"trial": 1})
    return model


def cli(study, tmp_path, *args) -> int:
    out = ["--out", str(tmp_path / "out")]
    return main(
        ["export", "demo", "--storage", study.url, "--trial", str(study.number), *out, *args]
    )


def test_cli_exports_a_checkpoints_weights(study, tmp_path, capsys):
    trained = save_checkpoint(tmp_path / "ck.pt", UNTIED, seed=11)
    assert cli(study, tmp_path, "--weights", str(tmp_path / "ck.pt")) == 0
    assert "weights of ck.pt" in capsys.readouterr().out
    out = tmp_path / "out"
    assert same_weights(load_export(out), trained)
    weights = yaml.safe_load((out / "config.yaml").read_text())["provenance"]["weights"]
    assert weights == "trained: checkpoint ck.pt (step 12, 3,072 tokens)"
    assert f"holds **{weights}**" in (out / "README.md").read_text()


# Malformed --weights: one line, exit 2, nothing written.
BAD_CHECKPOINTS = {
    "missing": (lambda p: None, "checkpoint {p}: no such file"),
    "not-torch": (lambda p: p.write_text("hello\n"), "checkpoint {p}: unreadable"),
    "other-model": (
        lambda p: save_checkpoint(p, ModelConfig(**SHAPE, tie_embeddings=False), seed=1),
        "--weights {p}: 'layers.0.attn.k_proj.weight' has shape (32, 32), the model's (8, 32)",
    ),
    "other-depth": (
        lambda p: save_checkpoint(p, DEEPER, seed=1),
        "--weights {p}: 'layers.2.attn_norm.weight' is not a weight of this model",
    ),
}


@pytest.mark.parametrize("name", list(BAD_CHECKPOINTS))
def test_cli_refuses_a_checkpoint_that_does_not_fit(study, tmp_path, capsys, name):
    make, message = BAD_CHECKPOINTS[name]
    path = tmp_path / "ck.pt"
    make(path)
    assert cli(study, tmp_path, "--weights", str(path)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error:") and message.format(p=path) in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_export_trial_takes_the_same_weights_from_python(study, tmp_path):
    trained = save_checkpoint(tmp_path / "ck.pt", UNTIED, seed=5)
    record = find_trial(study, study.number)
    out = export_trial(study, record, tmp_path / "py", weights=tmp_path / "ck.pt")
    assert same_weights(load_export(out), trained)
