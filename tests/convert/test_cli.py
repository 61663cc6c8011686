"""`sqa-nas convert` from every kind of source (export, checkpoint, HF folder) and the malformed
input it and `sqa-nas finetune` refuse: one line on stderr, exit code 2, no traceback, and
nothing written (no --out folder, no files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sqa_nas import checkpoint
from sqa_nas.cli import main
from sqa_nas.convert import export_model, load_export
from sqa_nas.model import ModelConfig, build_model
from sqa_nas.train import TrainState
from tests.convert.test_llama import convert, convert_argv, save_hf

pytestmark = pytest.mark.usefixtures("seeded")

GQA = ModelConfig(
    vocab_size=260, d_model=32, n_layers=2, n_heads=8, ffn_dim=48, attention={"variant": "GQA"}
)


@pytest.fixture
def export_dir(tmp_path) -> Path:
    model = build_model(GQA, seed=0)
    return export_model(GQA, tmp_path / "gqa", state_dict=model.state_dict())


@pytest.fixture
def hf_dir(tmp_path) -> Path:
    save_hf(tmp_path / "hf")
    return tmp_path / "hf"


def _state() -> TrainState:
    return TrainState(0, 0, [], {}, 0, 1)


def test_an_export_and_a_checkpoint_convert(tmp_path, export_dir, capsys):
    model = build_model(GQA, seed=0)
    ckpt = checkpoint.save(tmp_path / "run.pt", model, _state(), {"model": GQA.resolved()})
    for src, name in ((export_dir, "a"), (ckpt, "b")):
        out = tmp_path / name
        assert convert(src, "8/2 x1, 4/2", "fit", out, "--kv-heads", "keep") == 0
        converted = load_export(out)
        assert [c.n_q_heads for c in converted.config.layer_configs] == [8, 4]
        x = torch.randint(0, 260, (1, 16))
        with torch.no_grad():  # layer 0 kept whole, layer 1 refit: close, not equal
            assert converted(x).shape == (1, 16, 260)
        assert converted.config.provenance["convert"]["source"]["kind"] == (
            "export" if name == "a" else "checkpoint"
        )
    # An export's config.yaml is an allocation: the same layers again.
    again = tmp_path / "again"
    assert convert(export_dir, str(tmp_path / "a" / "config.yaml"), "select", again) == 0
    assert [c.n_q_heads for c in load_export(again).config.layer_configs] == [8, 4]
    # A bf16 source is written back in bf16.
    hf_bf16 = tmp_path / "bf16"
    model16 = build_model(GQA, seed=0).to(torch.bfloat16)
    export_model(GQA, hf_bf16, state_dict=model16.state_dict())
    assert convert(hf_bf16, "SQA", "mean", tmp_path / "c") == 0
    weights = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _hf_with(tmp_path, hf_dir, change) -> Path:
    """A copy of the HF folder with config.json edited by `change(dict)`."""
    folder = tmp_path / "edited"
    folder.mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(hf_dir / "model.safetensors"))
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def _weights_edited(tmp_path, hf_dir, edit) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text((hf_dir / "config.json").read_text())
    tensors = load_file(str(hf_dir / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


# (case id, how to make SRC from (tmp_path, hf_dir, export_dir), extra argv, words in the line)
CONVERT_CASES = [
    ("missing folder", lambda t, h, e: t / "nope", [], "no such file or folder"),
    ("empty folder", lambda t, h, e: (t / "empty").mkdir() or t / "empty", [], "neither"),
    (
        "unknown architecture",
        lambda t, h, e: _hf_with(
            t, h, lambda c: c.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
        ),
        [],
        "'GPT2LMHeadModel'",
    ),
    (
        "config.json not JSON",
        lambda t, h, e: _write(t / "bad" / "config.json", "{").parent,
        [],
        "not valid JSON",
    ),
    (
        "no weights",
        lambda t, h, e: _write(t / "now" / "config.json", (h / "config.json").read_text()).parent,
        [],
        "missing weights",
    ),
    (
        "a missing tensor",
        lambda t, h, e: _weights_edited(
            t, h, lambda w: w.pop("model.layers.1.self_attn.k_proj.weight")
        ),
        [],
        "model.layers.1.self_attn.k_proj",
    ),
    (
        "a misshapen tensor",
        lambda t, h, e: _weights_edited(
            t, h, lambda w: w.update({"model.norm.weight": torch.ones(5)})
        ),
        [],
        "model.norm.weight has shape (5,)",
    ),
    (
        "an unexpected tensor",
        lambda t, h, e: _weights_edited(
            t, h, lambda w: w.update({"model.layers.0.mlp.gate_proj.bias": torch.ones(48)})
        ),
        [],
        "unexpected weight",
    ),
    (
        "gelu MLP",
        lambda t, h, e: _hf_with(t, h, lambda c: c.update(hidden_act="gelu")),
        [],
        "SwiGLU",
    ),
    (
        "rope scaling",
        lambda t, h, e: _hf_with(
            t,
            h,
            lambda c: c.update(
                rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}
            ),
        ),
        [],
        "'llama3'",
    ),
    (
        "mlp bias",
        lambda t, h, e: _hf_with(t, h, lambda c: c.update(mlp_bias=True)),
        [],
        "mlp_bias",
    ),
    ("garbage checkpoint", lambda t, h, e: _write(t / "x.pt", "not torch"), [], "unreadable"),
    (
        "checkpoint without a config",
        lambda t, h, e: checkpoint.save(t / "c.pt", build_model(GQA), _state(), {}),
        [],
        "no 'model' config",
    ),
    (
        "export without weights",
        lambda t, h, e: (e / "model.safetensors").unlink() or e,
        [],
        "model.safetensors: no such file",
    ),
]
ALLOCATION_CASES = [  # against the HF folder: 8/2 per layer, H = 8
    ("does not divide", ["--allocation", "8/3"], "n_kv_heads=3 does not divide"),
    ("KV heads neither pooled nor copied", ["--allocation", "6/3"], "cannot be made from 2"),
    ("more query heads", ["--allocation", "16/2"], "exceeds n_heads=8"),
    ("rSQA target", ["--allocation", "2/4"], "rSQA"),
    ("mean groups unequal", ["--allocation", "6/2", "--method", "mean"], "must divide"),
    ("layer count", ["--allocation", "8/2 8/2 8/2"], "gives 3 layers"),
    ("unknown word", ["--allocation", "8/2 zz"], "'zz' is not a head count"),
    ("unknown variant", ["--allocation", "XQA"], "'XQA' is not a head count"),
    ("missing YAML", ["--allocation", "nope.yaml"], "no such file"),
    ("bad --kv-heads", ["--kv-heads", "many"], "--kv-heads 'many'"),
    ("bad calibration", ["--calibration", "{kind: nope}"], "--calibration"),
    ("negative ridge", ["--ridge", "-1"], "--ridge"),
    ("nan ridge", ["--ridge", "nan"], "--ridge"),
    ("bad method", ["--method", "best"], "invalid choice"),
]


def run(argv: list[str]) -> int:
    """`main(argv)`'s exit status, argparse's own errors (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _refused(argv: list[str], out: Path, words: str, capsys) -> None:
    """`argv` ends in exit status 2 with one line on stderr holding `words`, no traceback,
    and nothing written beside `out` (which is not made)."""
    before = sorted(out.parent.iterdir())
    capsys.readouterr()  # what building the inputs printed
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err, err
    assert not out.exists() and sorted(out.parent.iterdir()) == before


@pytest.mark.parametrize("case", CONVERT_CASES, ids=[c[0] for c in CONVERT_CASES])
def test_bad_sources_are_one_line_and_exit_2(case, tmp_path, hf_dir, export_dir, capsys):
    _, make, extra, words = case
    src = make(tmp_path, hf_dir, export_dir)
    out = tmp_path / "out"
    _refused(convert_argv(src, "GQA", "select", out, *extra), out, words, capsys)


@pytest.mark.parametrize("case", ALLOCATION_CASES, ids=[c[0] for c in ALLOCATION_CASES])
def test_bad_allocations_are_one_line_and_exit_2(case, tmp_path, hf_dir, capsys):
    _, extra, words = case
    out = tmp_path / "out"
    _refused(convert_argv(hf_dir, "SQA", "select", out, *extra), out, words, capsys)


@pytest.mark.parametrize(
    "text, words",
    [
        ("layers: [{n_q_heads: 4", "not valid YAML"),
        (
            "layers: [{n_q_heads: 4, n_kv_heads: 2, bias: true}, {n_q_heads: 4, n_kv_heads: 2}]",
            "layers[0].bias differs",
        ),
        (
            "layers: [{n_q_heads: 4, n_kv_heads: 2, heads: 3}, {n_q_heads: 4, n_kv_heads: 2}]",
            "layers[0].heads is not an allocation field",
        ),
        ("layers: [{n_q_heads: 4}, {n_q_heads: 4, n_kv_heads: 2}]", "layers[0] lacks n_kv_heads"),
        ("layers: [{n_q_heads: 4, n_kv_heads: 2}]", "1 layers; the source model has 2"),
        ("[1, 2]", "expected a 'layers:' list"),
    ],
)
def test_bad_allocation_files_are_one_line_and_exit_2(text, words, tmp_path, hf_dir, capsys):
    spec = _write(tmp_path / "alloc.yaml", text)
    out = tmp_path / "out"
    _refused(convert_argv(hf_dir, str(spec), "select", out), out, words, capsys)


def test_output_folders_and_vocabularies_are_checked_first(tmp_path, hf_dir, capsys):
    _write(tmp_path / "full" / "mine.txt", "keep me")
    assert convert(hf_dir, "SQA", "mean", tmp_path / "full") == 2
    assert "already holds files" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["mine.txt"]
    _write(tmp_path / "file", "")
    assert convert(hf_dir, "SQA", "mean", tmp_path / "file") == 2
    assert "not a folder" in capsys.readouterr().err
    tiny = tmp_path / "tiny"
    save_hf(tiny, vocab_size=64)  # the embedded corpus's 256 bytes do not fit
    out = tmp_path / "o2"
    _refused(convert_argv(tiny, "SQA", "mean", out), out, "vocabulary (256 tokens)", capsys)
    assert convert(hf_dir, "SQA", "mean", tmp_path / "full", "--force") == 0
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"


FINETUNE_CASES = [
    ("missing folder", lambda t, e: [str(t / "nope")], "no such folder"),
    ("not an export", lambda t, e: [str((t / "plain").mkdir() or t / "plain")], "no config.yaml"),
    ("zero tokens", lambda t, e: [str(e), "--tokens", "0"], "must be >= 1"),
    ("zero lr", lambda t, e: [str(e), "--lr", "0"], "--lr"),
    ("out is DIR", lambda t, e: [str(e), "--out", str(e)], "DIR itself"),
    ("bad data", lambda t, e: [str(e), "--data", "{kind: text}"], "paths"),
    (
        "data too wide",
        lambda t, e: [str(e), "--data", "{kind: mqar, vocab_size: 512}"],
        "vocabulary (512 tokens)",
    ),
]


@pytest.mark.parametrize("case", FINETUNE_CASES, ids=[c[0] for c in FINETUNE_CASES])
def test_bad_finetune_input_is_one_line_and_exit_2(case, tmp_path, export_dir, capsys):
    _, make, words = case
    argv = ["finetune", *make(tmp_path, export_dir), "--seq-len", "16"]
    if "--tokens" not in argv:
        argv += ["--tokens", "64"]
    out = export_dir.with_name(export_dir.name + "-finetuned")
    _refused(argv, out, words, capsys)


def test_finetune_keeps_a_hugging_face_export_loadable_and_says_what_its_weights_are(tmp_path):
    pytest.importorskip("transformers")
    model = build_model(GQA, seed=0)
    src = export_model(GQA, tmp_path / "hf", fmt="hf", state_dict=model.state_dict())
    ft = tmp_path / "ft"
    argv = "--tokens 128 --seq-len 16 --batch-size 4 --eval-batches 1".split()
    assert main(["finetune", str(src), *argv, "--out", str(ft)]) == 0
    assert {"config.json", "modeling_sqa.py", "configuration_sqa.py"} <= {
        p.name for p in ft.iterdir()
    }
    tuned = load_export(ft)
    assert tuned.config.provenance["weights"] == "fine-tuned for 128 tokens (sqa-nas finetune)"
    assert "untrained" not in (ft / "README.md").read_text()


def test_a_piped_finetune_logs_plain_progress_lines(tmp_path, export_dir, capsys):
    argv = "--tokens 256 --seq-len 16 --batch-size 4 --eval-batches 1".split()
    assert main(["finetune", str(export_dir), *argv, "--out", str(tmp_path / "ft")]) == 0
    out = capsys.readouterr().out  # capsys: not a terminal, as a pipe or a log file
    assert "\x1b" not in out and "\r" not in out
    lines = [x for x in out.splitlines() if x.startswith("steps ")]
    assert lines[0].startswith("steps 0/4 (0%), 0:00:00 elapsed, - steps/h, ETA -")
    assert lines[-1].startswith("steps 4/4 (100%), ") and lines[-1].endswith(", done")
