"""`sqa_nas.export`: the exported model.py reproduces the library model's logits in an
interpreter where sqa_nas cannot be imported; config.yaml rebuilds the same model; the files
lint; crafted studies are refused; the CLI exits 2 on trials that cannot be exported."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import py_compile
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from sqa_nas.cli import main
from sqa_nas.errors import UserError
from sqa_nas.export import export_trial, find_trial, model_template
from sqa_nas.export.torch_code import BEGIN, END, render_data, template_source
from sqa_nas.model import ModelConfig, build_model
from sqa_nas.search.records import load_study, trial_records
from tests import brute
from tests.fakestudy import HEADS, MASKS, TINY, make_study

BS = {"block_size": 8, "local_blocks": 1, "global_blocks": 1, "random_blocks": 2, "seed": 3}
MHA, GQA, XSQA, RSQA = (
    {"n_q_heads": 8, "n_kv_heads": 8},
    {"n_q_heads": 8, "n_kv_heads": 2},
    {"n_q_heads": 2, "n_kv_heads": 2},
    {"n_q_heads": 2, "n_kv_heads": 4},
)

# Trials covering every pattern; each model has TINY's 4 layers.
CASES = {
    "dense-bias-untied": dict(TINY, tie_embeddings=False, layers=[{**MHA, "bias": True}] * 4),
    "window-gqa": dict(TINY, layers=[{**GQA, "window": 5}] * 4),
    "flex": dict(TINY, layers=[{**XSQA, "window": 6, "global_tokens": 3}] * 4),
    "flex-bidirectional": dict(
        TINY, causal=False, layers=[{**GQA, "window": 4, "global_tokens": 2}] * 4
    ),
    "block-sparse": dict(TINY, layers=[{**GQA, "block_sparse": BS}] * 4),
    "block-sparse-bidirectional": dict(
        TINY, causal=False, layers=[{**XSQA, "block_sparse": BS}] * 4
    ),
    "rsqa": dict(TINY, layers=[RSQA, {"n_q_heads": 1, "n_kv_heads": 8}] * 2),
    "mixed": dict(
        TINY,
        layers=[
            {**MHA, "bias": True},
            {"n_q_heads": 8, "n_kv_heads": 1, "window": 7},
            {**RSQA, "window": 5, "global_tokens": 2},
            {**XSQA, "block_sparse": {**BS, "seed": 11}},
        ],
    ),
    "mixed-bidirectional-no-rope": dict(
        TINY,
        causal=False,
        rope_theta=None,
        head_dim=12,
        layers=[MHA, {**GQA, "window": 3}, RSQA, {**XSQA, "block_sparse": BS}],
    ),
    "flex-backend": dict(
        TINY,
        layers=[
            {**GQA, "window": 6, "backend": "sdpa"},
            {**XSQA, "block_sparse": BS, "backend": "flex"},
            {**MHA, "backend": "sdpa"},
            RSQA,
        ],
    ),
}
SEQ_LEN = 45  # not a multiple of the block size: the last block is partial
CHOICES = {"heads": HEADS, "mask": MASKS}
SITE = str(Path(torch.__file__).parents[1])  # the site-packages folder torch lives in


def add_trial(
    study: optuna.Study,
    model,
    *,
    state=optuna.trial.TrialState.COMPLETE,
    values=(9.0, 1.0),
    params=None,
    **attrs,
) -> int:
    """Append a trial following the study contract; `model` is stored as given."""
    dist = optuna.distributions.CategoricalDistribution  # the fake study's, for its params
    params = params or {"layer0.heads": "8/2", "layer0.mask": "window:16"}
    trial = optuna.trial.create_trial(
        state=state,
        values=list(values) if state.is_finished() else None,
        params=params,
        distributions={k: dist(CHOICES.get(k.split(".")[-1], [v])) for k, v in params.items()},
        user_attrs={
            "model": model,
            "device": {"name": "NVIDIA H200", "type": "cuda"},
            "versions": {"torch": "2.13.0+cu130", "python": "3.12.3"},
            "corpus": {"kind": "embedded", "fingerprint": "f" * 16},
            "analytics": {"params": 123456},
            **attrs,
        },
    )
    study.add_trial(trial)
    return study.trials[-1].number


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('study')}/study.db"
    study = make_study(url, n=3)
    study.numbers = {
        name: add_trial(study, ModelConfig(**m).resolved()) for name, m in CASES.items()
    }
    study.url = url
    return study


def record(study, number):
    return find_trial(study, number)


def lint(*paths: Path) -> subprocess.CompletedProcess:
    """ruff with the project's rules, outside the project (the file lands in a user's repo)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--isolated",
            "--no-cache",
            "--line-length",
            "99",
            "--target-version",
            "py310",
            "--select",
            "E,F,W,I,B,UP",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
    )


# A fresh interpreter that can import torch but not sqa_nas: -I leaves out the script folder,
# the working folder and PYTHON* variables; -S leaves out site, so the .pth file of sqa-nas's
# editable install never runs; torch's own folder is put back by hand.
RUNNER = """
import importlib.util, sys
sys.path.append({site!r})
try:
    import sqa_nas  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("sqa_nas is importable in the fresh interpreter")
import torch

torch.set_num_threads(1)  # tiny matrices: threads only contend on a busy machine

results = {{}}
for name, folder in {cases!r}:
    spec = importlib.util.spec_from_file_location("exported_" + name.replace("-", "_"),
                                                  folder + "/model.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model().eval()
    model.load_state_dict(torch.load(folder + "/state_dict.pt"))  # strict: same keys, shapes
    with torch.no_grad():
        logits = model(torch.load({tokens!r}))
    results[name] = dict(logits=logits, tied=model.lm_head.weight is model.embed.weight)
assert "sqa_nas" not in sys.modules
torch.save(results, {out!r})
"""


@pytest.fixture(scope="module")
def exported(study, tmp_path_factory):
    """Every case exported, its library state_dict saved, and run in a fresh interpreter."""
    root = tmp_path_factory.mktemp("exported")
    tokens = torch.randint(
        0, TINY["vocab_size"], (2, SEQ_LEN), generator=torch.Generator().manual_seed(0)
    )
    torch.save(tokens, root / "tokens.pt")
    expected, folders = {}, []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, number in study.numbers.items():
            folder = export_trial(study, record(study, number), root / name)
            torch.manual_seed(len(name))
            library = build_model(record(study, number).model).eval()
            torch.save(library.state_dict(), folder / "state_dict.pt")
            with torch.no_grad():
                expected[name] = library(tokens)
            folders.append((name, str(folder)))
    finally:
        torch.set_num_threads(threads)
    script = root / "runner.py"
    script.write_text(
        RUNNER.format(
            site=SITE, cases=folders, tokens=str(root / "tokens.pt"), out=str(root / "out.pt")
        )
    )
    run = subprocess.run(
        [sys.executable, "-I", "-S", str(script)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return root, expected, torch.load(root / "out.pt")


@pytest.mark.parametrize("name", list(CASES))
def test_exported_model_matches_library_logits_without_sqa_nas(exported, name):
    _, expected, results = exported
    diff = (results[name]["logits"] - expected[name]).abs().max().item()
    assert diff <= 1e-5, f"{name}: max abs logit difference {diff}"
    assert results[name]["tied"] == CASES[name].get("tie_embeddings", True)


def test_a_fresh_interpreter_really_cannot_import_sqa_nas(tmp_path):
    probe = f"import sys; sys.path.append({SITE!r}); import sqa_nas"
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode != 0 and "No module named 'sqa_nas'" in run.stderr


def test_exported_files_compile_and_pass_ruff(exported):
    root, _, _ = exported
    files = sorted(root.glob("*/model.py"))
    assert len(files) == len(CASES)
    for path in files:
        py_compile.compile(str(path), doraise=True)
    result = lint(*files)
    assert result.returncode == 0, result.stdout


def test_generated_data_holds_only_numbers_flags_and_backend_names(exported):
    root, _, _ = exported
    allowed_strings = {"auto", "sdpa", "flex", "flash_attn"}
    for path in root.glob("*/model.py"):
        tree = ast.parse(path.read_text())
        data = [
            n
            for n in tree.body
            if isinstance(n, ast.Assign) and n.targets[0].id in ("CONFIG", "LAYERS")
        ]
        assert len(data) == 2
        for node in ast.walk(ast.Module(body=data, type_ignores=[])):
            if isinstance(node, ast.Constant):
                assert (
                    node.value is None
                    or isinstance(node.value, bool | int | float)
                    or node.value in allowed_strings
                ), (path, node.value)
            elif isinstance(node, ast.Call):
                assert isinstance(node.func, ast.Name) and node.func.id == "dict"
            else:
                assert isinstance(
                    node,
                    ast.Assign
                    | ast.Name
                    | ast.List
                    | ast.keyword
                    | ast.Load
                    | ast.Store
                    | ast.Module,
                ), (path, node)


def test_generated_code_is_the_template_with_the_trial_data(exported):
    """Only the docstring and the CONFIG / LAYERS block depend on the trial."""
    root, _, _ = exported

    def code_around_data(text):
        lines = text.splitlines(keepends=True)
        code = "".join(lines[ast.parse(text).body[0].end_lineno :])  # after the docstring
        head, _, rest = code.partition("CONFIG = ")
        tail = rest[rest.index("\n]\n") + 3 :]
        return head.replace(BEGIN + "\n", ""), tail.replace(END + "\n", "")

    template = code_around_data(template_source())
    for path in root.glob("*/model.py"):
        assert code_around_data(path.read_text()) == template
    # The template's own example block is exactly what the renderer writes for it.
    source = template_source()
    block = source.split(f"\n{BEGIN}\n")[1].split(f"\n{END}\n")[0] + "\n"
    example = ModelConfig(
        **model_template.CONFIG, n_layers=len(model_template.LAYERS), layers=model_template.LAYERS
    )
    assert block == render_data(example)


def test_config_yaml_rebuilds_the_same_model_with_provenance(exported, study):
    root, _, _ = exported
    number = study.numbers["mixed"]
    data = yaml.safe_load((root / "mixed" / "config.yaml").read_text())
    prov = data["provenance"]
    assert prov["study"] == "demo" and prov["trial"] == number
    assert set(prov["objectives"]) == {"val_loss", "throughput_tokens_per_s"}
    assert prov["device"]["name"] == "NVIDIA H200"
    assert prov["versions"]["torch"] == "2.13.0+cu130"
    assert prov["corpus"]["fingerprint"] == "f" * 16
    rebuilt = build_model(root / "mixed" / "config.yaml")
    library = build_model(record(study, number).model)
    assert rebuilt.config.resolved() == library.config.resolved()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in library.state_dict().items()
    }


def test_readme_summarises_the_trial(exported, study):
    root, _, _ = exported
    text = (root / "mixed" / "README.md").read_text()
    assert f"# Trial {study.numbers['mixed']} of study `demo`" in text
    assert "| val_loss | 9 | minimize |" in text
    assert "| 3 | 2 | 2 | block_sparse | block 8: local 1, global 1, random 2 (seed 11)" in text
    assert "| 2 | 2 | 4 | flex | window 5 + 2 global |" in text
    assert "analytics.params | 123,456" in text


def test_xformers_layers_run_on_the_standalone_auto_backend(study, tmp_path):
    model = ModelConfig(**dict(TINY, layers=[{**GQA, "backend": "xformers"}] * 4)).resolved()
    out = export_trial(study, record(study, add_trial(study, model)), tmp_path / "x")
    assert "xformers" not in (out / "model.py").read_text()
    assert yaml.safe_load((out / "config.yaml").read_text())["layers"][0]["backend"] == "xformers"


# ------------------------------------------------------------------------------ safety
def _valid():
    return ModelConfig(**CASES["mixed"]).resolved()


def _set(path, value):
    def edit(model):
        target = model
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return model

    return edit


CRAFTED = [
    (
        "code-in-backend",
        _set(["layers", 1, "backend"], "__import__('os').system('x')"),
        {},
        r"model\.layers\[1\]\.backend: \"__import__\('os'\)\.system\('x'\)\" is not allowed",
    ),
    ("huge-number", _set(["vocab_size"], 10**30), {}, r"model\.vocab_size: 1000.* out of range"),
    ("extra-key", _set(["evil"], 1), {}, r"model\.evil: Extra inputs are not permitted"),
    ("string-number", _set(["d_model"], "64"), {}, r"model\.d_model: '64' is not allowed"),
    ("nan", _set(["norm_eps"], math.nan), {}, r"model\.norm_eps: nan is not a finite"),
    (
        "odd-unicode-key",
        _set(["layers", 0, "n_q_heads\u202e"], 8),
        {},
        r"model\.layers\[0\]: key 'n_q_heads\\u202e' is not a model setting",
    ),
    (
        "code-in-seed",
        _set(["layers", 3, "block_sparse", "seed"], "0; import os"),
        {},
        r"model\.layers\[3\]\.block_sparse\.seed",
    ),
    (
        "code-in-variant",
        _set(["attention"], {"variant": "os.system('x')"}),
        {},
        r"model\.attention\.variant",
    ),
    (
        "odd-unicode-device",
        None,
        {"device": {"name": "NVIDIA\u202eH200"}},
        r"device\.name: 'NVIDIA\\u202eH200' has characters",
    ),
    (
        "code-in-param",
        None,
        {"params": {"layer0.note": "__import__('os')"}},
        r"params\['layer0\.note'\]: \"__import__\('os'\)\" has characters",
    ),
    ("no-model", lambda m: None, {}, r"has no 'model' attribute"),
    ("bad-seed-variant", None, {"seed_variant": "MHA'); import os"}, r"seed_variant"),
]


@pytest.mark.parametrize("name,edit,extra,message", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_crafted_trials_are_refused_naming_the_field(study, tmp_path, name, edit, extra, message):
    model = edit(_valid()) if edit else _valid()
    number = add_trial(study, model, **extra)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message):
        export_trial(study, record(study, number), out)
    assert not out.exists()  # checked before anything is written


def test_a_study_with_an_odd_name_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study = make_study(url, name="demo\"'); import os #", n=1, failed=0, running=0)
    with pytest.raises(UserError, match="study name .* cannot be exported"):
        export_trial(study, record(study, 0), tmp_path / "out")


# --------------------------------------------------------------------------------- CLI
def _cli(study, *args) -> int:
    return main(["export", "demo", "--storage", study.url, *args])


def test_cli_refuses_failed_running_and_unknown_trials(study, tmp_path, capsys):
    states = {t.number: t.state.name for t in load_study("demo", study.url).trials}
    failed = min(n for n, s in states.items() if s == "FAIL")
    running = min(n for n, s in states.items() if s == "RUNNING")
    for number, message in (
        (failed, f"trial {failed} is FAIL (CUDA out of memory)"),
        (running, f"trial {running} is RUNNING"),
        (999, "study 'demo' has no trial 999"),
    ):
        assert _cli(study, "--trial", str(number), "--out", str(tmp_path / "o")) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert message in err, err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exc:
        _cli(study, "--out", str(tmp_path / "o"))  # neither --trial nor --pick
    assert exc.value.code == 2
    for number, message in (("-1", "must be >= 0, got -1"), ("x", "expected a trial number")):
        with pytest.raises(SystemExit) as exc:
            _cli(study, "--trial", number, "--out", str(tmp_path / "o"))
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_picks_a_trial_and_writes_the_torch_files(study, tmp_path, capsys):
    h200 = ("--gpu-type", "NVIDIA H200")
    assert _cli(study, "--pick", "best:val_loss", *h200, "--out", str(tmp_path / "best")) == 0
    data = yaml.safe_load((tmp_path / "best" / "config.yaml").read_text())
    best = min(
        (
            t
            for t in load_study("demo", study.url).trials
            if t.state.name == "COMPLETE" and t.user_attrs["device"]["name"] == "NVIDIA H200"
        ),
        key=lambda t: (t.values[0], t.number),
    )
    assert data["provenance"]["trial"] == best.number
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == [
        "README.md",
        "config.yaml",
        "model.py",
        "model.safetensors",
    ]
    assert _cli(study, "--pick", "knee", *h200, "--out", str(tmp_path / "knee")) == 0
    assert "exported trial" in capsys.readouterr().out
    knee = yaml.safe_load((tmp_path / "knee" / "config.yaml").read_text())["provenance"]
    on_h200 = [
        r
        for r in trial_records(load_study("demo", study.url))
        if r.attrs.get("device", {}).get("name") == "NVIDIA H200"
    ]
    assert knee["trial"] in brute.knee(on_h200, ["val_loss", "throughput_tokens_per_s"])


@pytest.mark.parametrize(
    "args,message",
    [
        ((), "ran on several GPU types ('NVIDIA A100', 'NVIDIA H200'"),
        (("--gpu-type", "TPU"), "no trial ran on GPU type 'TPU'"),
    ],
)
def test_cli_pick_needs_one_gpu_type(study, tmp_path, capsys, args, message):
    """Throughputs measured on different GPUs do not compare: a pick takes one GPU type."""
    assert _cli(study, "--pick", "knee", *args, "--out", str(tmp_path / "o")) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------- HF
def test_hf_format_without_transformers_is_skipped_with_a_message(
    study, tmp_path, capsys, monkeypatch
):
    from sqa_nas.export import hf

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else real(name, *a),
    )
    assert hf.transformers_missing()
    number = str(study.numbers["mixed"])
    assert _cli(study, "--trial", number, "--out", str(tmp_path / "hf"), "--format", "hf") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "skipped the Hugging Face export: transformers is not installed" in err
    assert "--force-hf" in err and not (tmp_path / "hf").exists()


def test_hf_files_are_written_when_forced_and_compile(study, tmp_path):
    out = export_trial(
        study,
        record(study, study.numbers["mixed-bidirectional-no-rope"]),
        tmp_path / "hf",
        "hf",
        force_hf=True,
    )
    names = ["config.json", "configuration_sqa.py", "modeling_sqa.py", "model.py"]
    assert all((out / n).is_file() for n in names)
    for name in names[1:]:
        py_compile.compile(str(out / name), doraise=True)
    result = lint(*(out / n for n in names[1:]))
    assert result.returncode == 0, result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "sqa_nas"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_sqa.SQAConfig",
        "AutoModelForMaskedLM": "modeling_sqa.SQAForMaskedLM",
    }
    assert config["causal"] is False and config["rope_theta"] is None
    assert config["layers"][3]["block_sparse"] == BS


@pytest.mark.parametrize("name", ["mixed", "dense-bias-untied", "mixed-bidirectional-no-rope"])
def test_hf_folder_loads_with_trust_remote_code(study, tmp_path, name):
    transformers = pytest.importorskip("transformers")
    # transformers caches remote code by folder name: one name per case.
    folder = tmp_path / ("hf_" + name.replace("-", "_"))
    out = export_trial(study, record(study, study.numbers[name]), folder, "hf")
    library = build_model(CASES[name]).eval()
    config = transformers.AutoConfig.from_pretrained(out, trust_remote_code=True)
    auto = (
        transformers.AutoModelForCausalLM
        if CASES[name].get("causal", True)
        else transformers.AutoModelForMaskedLM
    )
    model = auto.from_config(config, trust_remote_code=True).eval()
    model.model.load_state_dict(library.state_dict())
    tokens = torch.randint(0, TINY["vocab_size"], (2, SEQ_LEN))
    with torch.no_grad():
        assert (model(tokens).logits - library(tokens)).abs().max() <= 1e-5
    model.save_pretrained(folder.with_name(folder.name + "_saved"))
    again = auto.from_pretrained(
        folder.with_name(folder.name + "_saved"), trust_remote_code=True
    ).eval()
    with torch.no_grad():
        assert (again(tokens).logits - library(tokens)).abs().max() <= 1e-5


def test_docs_name_only_real_export_flags():
    import re

    from sqa_nas.cli import build_parser

    text = (Path(__file__).parents[2] / "docs" / "export.md").read_text()
    sub = build_parser()._subparsers._group_actions[0].choices["export"]
    real = {flag for action in sub._actions for flag in action.option_strings}
    others = ("sqa-nas finetune", "python -m experiments")  # other commands' flags
    text = "\n".join(line for line in text.splitlines() if not any(o in line for o in others))
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))
    assert named and named <= real, named - real
    assert {"--trial", "--pick", "--out", "--format", "--force-hf", "--weights"} <= named


def test_a_measured_trial_exports_with_its_intervals_flags_and_seeds(tmp_path):
    """A real search's trials carry `speedup_ci95` (a pair), `noisy_throughput` (a flag) and,
    for the noise trial, `val_loss_seeds` (a list): kept in the provenance, shown in the
    README, never a reason to refuse the trial."""
    url = f"sqlite:///{tmp_path}/measured.db"
    study = make_study(url, n=5, failed=0, running=0, measured=True)
    for number in (0, 4):  # the noise trial (3 seeds) and a trial flagged noisy
        out = export_trial(study, find_trial(study, number), tmp_path / f"t{number}")
        metrics = yaml.safe_load((out / "config.yaml").read_text())["provenance"]["metrics"]
        assert isinstance(metrics["noisy_throughput"], bool)
        assert len(metrics["speedup_ci95"]) == 2
        assert ("val_loss_seeds" in metrics) == (number == 0)
        assert "metrics.speedup_ci95 | [" in (out / "README.md").read_text()
