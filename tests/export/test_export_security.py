"""Export takes nothing from a study on trust, and never overwrites a user's files unasked.

Crafted studies (trial numbers stored as text in the database; payloads that close
model.py's docstring, start a YAML document or hold terminal escapes, in every attribute a
trial has) either export a model.py that parses to exactly the template's code and computes
the library's logits, or are refused with one line and exit code 2, nothing written. The
quoting functions (`docstring_literal`, `comment`) are checked on the payloads themselves, as
if a value got past validation. An `--out` folder holding the export's files is refused
unless `--force`; one that cannot be written is one line and exit 2."""

from __future__ import annotations

import ast
import importlib.util
import os
import random
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from sqa_nas.cli import main
from sqa_nas.errors import UserError
from sqa_nas.export import export_trial, find_trial
from sqa_nas.export.readme import comment
from sqa_nas.export.torch_code import docstring_literal, template_source
from sqa_nas.model import ModelConfig, build_model
from sqa_nas.search.records import TrialRecord
from tests.fakestudy import HEADS, TINY, make_study

OWNED = "owned"  # in every payload: found in no file written
PAYLOADS = {
    "docstring": f'"""\nimport os; os.system("echo {OWNED}")\n"""',
    "newline": f"\nimport os; os.system('echo {OWNED}')",
    "yaml": f"---\n!!python/object/apply:os.system ['echo {OWNED}']\n...\n",
    "controls": f"\x1b[2J\x1b]0;{OWNED}\x07\x00\r\x9b\u202e",
    "quotes": f"'''\\\"\"\"\\{OWNED}\\",
}
MODEL = ModelConfig(
    **dict(
        TINY,
        layers=[
            {"n_q_heads": 8, "n_kv_heads": 2, "window": 5},
            {"n_q_heads": 2, "n_kv_heads": 4, "window": 6, "global_tokens": 2},
            {"n_q_heads": 4, "n_kv_heads": 4, "bias": True},
            {"n_q_heads": 8, "n_kv_heads": 8},
        ],
    )
).resolved()
DEVICE = {"name": "NVIDIA H200", "type": "cuda"}


def add_trial(study: optuna.Study, model=MODEL, params=None, **attrs) -> int:
    """Append a COMPLETE trial with `model` and `attrs` as stored user attrs; its number."""
    params = params or {"layer0.heads": "8/2"}
    dist = optuna.distributions.CategoricalDistribution
    study.add_trial(
        optuna.trial.create_trial(
            values=[2.5, 1e5],
            params=params,
            distributions={
                k: dist(HEADS if k == "layer0.heads" else [v]) for k, v in params.items()
            },
            user_attrs={"model": model, "device": DEVICE, **attrs},
        )
    )
    return study.trials[-1].number


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('study')}/study.db"
    study = make_study(url, n=1, failed=0, running=0)
    study.url = url
    return study


def export(study: optuna.Study, *args: str) -> int:
    return main(["export", study.study_name, "--storage", study.url, *args])


def assert_one_line(err: str, message: str) -> None:
    """A refusal: one line on stderr naming the problem, no traceback, no raw escape."""
    assert err.startswith("error:") and message in err, err
    assert "Traceback" not in err and "\x1b" not in err and "\x07" not in err


def calls(source: str) -> Counter:
    """The functions a module calls, by source text, the data block's dict(...) left out."""
    return Counter(
        ast.unparse(node.func)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and ast.unparse(node.func) != "dict"
    )


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"exported_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


# ------------------------------------------------------------- text the export never writes
@pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
def test_a_payload_in_the_trials_other_attributes_never_becomes_code(study, tmp_path, payload):
    """Allocation, fail reason, traceback, layout, checkpoint and each layer's backend reason
    are not written: the export computes its text from the validated config."""
    layers = [{**layer, "backend": "sdpa", "backend_reason": payload} for layer in MODEL["layers"]]
    number = add_trial(
        study,
        allocation=payload,
        fail_reason=payload,
        traceback=payload,
        layout=payload,
        checkpoint=payload,
        layers=layers,
    )
    out = export_trial(study, find_trial(study, number), tmp_path / "out")
    for path in out.iterdir():  # the weights too
        assert OWNED.encode() not in path.read_bytes(), path.name
    model_py = (out / "model.py").read_text()
    tree = ast.parse(model_py)
    assert isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant)
    assert calls(model_py) == calls(template_source())  # the template's calls and no other
    config = (out / "config.yaml").read_text()
    assert len(list(yaml.safe_load_all(config))) == 1
    assert config.startswith("# sqa-nas model config: trial ")

    torch.manual_seed(0)
    library = build_model(MODEL).eval()
    standalone = load_module(out / "model.py").build_model().eval()
    standalone.load_state_dict(library.state_dict())
    tokens = torch.randint(
        0, TINY["vocab_size"], (2, 33), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        assert (standalone(tokens) - library(tokens)).abs().max() <= 1e-5


# --------------------------------------------------------------- trial numbers stored as text
NUMBERS = {
    "docstring": f'0 of x.\n"""\nimport os; os.system("echo {OWNED}")\n"""',
    "yaml": f"1\n---\n{OWNED}: true",
    "escape": "2\x1b[2J",
    "bidi": "4\u202e",
    "float": 3.5,
}


def crafted_numbers(path: Path, number, *, all_trials: bool) -> str:
    """A two-trial study whose first trial's number (or every trial's, as text) is
    `number`, written into the SQLite database the way a hand-edited file would hold it."""
    url = f"sqlite:///{path}"
    make_study(url, n=2, failed=0, running=0)
    with sqlite3.connect(path) as db:
        if all_trials:
            db.execute("UPDATE trials SET number = ? || number", (str(number),))
        else:
            db.execute("UPDATE trials SET number = ? WHERE number = 0", (number,))
    return url


@pytest.mark.parametrize("all_trials", [True, False], ids=["every-trial", "one-trial"])
@pytest.mark.parametrize("number", list(NUMBERS.values()), ids=list(NUMBERS))
def test_a_trial_number_that_is_not_an_integer_is_refused(tmp_path, capsys, number, all_trials):
    url = crafted_numbers(tmp_path / "study.db", number, all_trials=all_trials)
    out = tmp_path / "out"
    for which in (["--pick", "best:val_loss"], ["--trial", "1"]):
        assert main(["export", "demo", "--storage", url, *which, "--out", str(out)]) == 2
        assert_one_line(capsys.readouterr().err, "holds a trial number that is not an integer")
        assert not out.exists()


@pytest.mark.parametrize(
    "number",
    ["0", "0\n", True, -1, 2**40, 1.0],
    ids=["text", "newline", "bool", "-1", "huge", "1.0"],
)
def test_a_record_whose_number_is_not_a_whole_number_is_refused(study, tmp_path, number):
    """A record handed to `export_trial` directly (the dashboard's export key does)."""
    good = find_trial(study, add_trial(study))
    record = TrialRecord(number, "COMPLETE", good.values, good.params, good.attrs)
    with pytest.raises(UserError, match="trial number .* is not a whole number"):
        export_trial(study, record, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------- values the export refuses
def _model(**changes):
    return {**MODEL, **changes}


REFUSED = {
    # study name (the header of config.yaml, README's title, provenance)
    "name-newline": ("demo\n", {}, "study name"),
    "name-newline-comment": (f"demo\n{OWNED}: 1", {}, "study name"),
    "name-docstring": ('demo"""', {}, "study name"),
    "name-escape": ("demo\x1b[2J", {}, "study name"),
    "name-yaml-document-end": ("...", {}, "study name"),
    # text copied into config.yaml and README.md
    "device-newline": ("demo", {"device": {"name": "NVIDIA H200\n"}}, "device.name"),
    "device-escape": ("demo", {"device": {"name": "H200\x1b]0;x\x07"}}, "device.name"),
    "versions-yaml": ("demo", {"versions": {"torch": "2.4\n---\nx: 1"}}, "versions.torch"),
    "corpus-newline": ("demo", {"corpus": {"fingerprint": "f\n"}}, "corpus.fingerprint"),
    "param-code": ("demo", {"params": {"layer0.note": "8/2\nimport os"}}, "params"),
    "param-key-newline": ("demo", {"params": {"layer0.note\n": "8/2"}}, "params"),
    "seed-variant": ("demo", {"seed_variant": 'MHA"""'}, "seed_variant"),
    "seed-variant-newline": ("demo", {"seed_variant": "MHA\n"}, "seed_variant"),
    # numbers (metrics and analytics go into README's table and the provenance)
    "metric-text": ("demo", {"metrics": {"val_loss": "2; import os"}}, "metrics"),
    "analytics-text": ("demo", {"analytics": {"params": "1e3\n"}}, "analytics"),
    "metric-inf": ("demo", {"metrics": {"val_loss": float("inf")}}, "metrics.val_loss"),
    # the model config (model.py's CONFIG and LAYERS)
    "model-text-number": ("demo", {"model": _model(n_heads='8"""')}, "model.n_heads"),
    "model-backend-newline": (
        "demo",
        {"model": _model(layers=[{**MODEL["layers"][0], "backend": "sdpa\n"}] * 4)},
        "backend",
    ),
    "model-key-newline": ("demo", {"model": _model(**{"d_model\n": 64})}, "model"),
    "model-bool-number": ("demo", {"model": _model(n_heads=True)}, "model.n_heads"),
}


@pytest.mark.parametrize("name,attrs,message", REFUSED.values(), ids=list(REFUSED))
def test_a_value_the_export_would_write_is_checked(tmp_path, capsys, name, attrs, message):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    crafted = make_study(url, name=name, n=1, failed=0, running=0)
    params = attrs.pop("params", None)
    number = add_trial(crafted, **({"params": params} if params else {}), **attrs)
    out = tmp_path / "out"
    assert main(["export", name, "--storage", url, "--trial", str(number), "--out", str(out)]) == 2
    assert_one_line(capsys.readouterr().err, message)
    assert not out.exists()


# ----------------------------------------------------------------------- quoting functions
def nasty_texts() -> list[str]:
    rnd = random.Random(0)
    alphabet = ['"', "'", "\\", "\n", "\r", "\x00", "\x1b", "\u202e", "\ud800", "N{", "x", " "]
    texts = [*PAYLOADS.values(), *(n for n in NUMBERS.values() if isinstance(n, str))]
    texts += ["", '"', '""', '"""', '""""', "\\", "\\\n"]
    texts += ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 12))) for _ in range(300)]
    return texts


def test_docstring_literal_quotes_any_text():
    for text in nasty_texts():
        source = docstring_literal(text)
        tree = ast.parse(source)
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)
        assert tree.body[0].value.value == text  # exactly the text, nothing run


def test_a_header_comment_stays_one_comment_line():
    for text in nasty_texts():
        line = comment(text)
        assert line.startswith("# ") and line.count("\n") == 1 and line.endswith("\n")
        assert "\r" not in line and "\x1b" not in line
        assert yaml.safe_load(line + "a: 1\n") == {"a": 1}


# ----------------------------------------------------------------------- the --out folder
def test_an_out_folder_holding_the_exports_files_is_refused_unless_force(study, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.py").write_text("my own model\n")
    (out / "notes.txt").write_text("mine too\n")
    assert export(study, "--trial", "0", "--out", str(out)) == 2
    assert_one_line(capsys.readouterr().err, "already holds model.py: pass --force")
    assert (out / "model.py").read_text() == "my own model\n"
    assert sorted(p.name for p in out.iterdir()) == ["model.py", "notes.txt"]  # nothing else
    assert export(study, "--trial", "0", "--out", str(out), "--force") == 0
    assert "CONFIG = dict(" in (out / "model.py").read_text()
    assert (out / "notes.txt").read_text() == "mine too\n"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.yaml",
        "model.py",
        "model.safetensors",
        "notes.txt",
    ]


def test_force_replaces_a_symlink_and_never_writes_through_it(study, tmp_path):
    victim = tmp_path / "victim.py"
    victim.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").symlink_to(victim)
    assert export(study, "--trial", "0", "--out", str(out)) == 2
    assert export(study, "--trial", "0", "--out", str(out), "--force") == 0
    assert victim.read_text() == "keep me\n"
    assert not (out / "config.yaml").is_symlink()


def test_an_out_under_a_file_is_one_line(study, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "sub"
    assert export(study, "--trial", "0", "--out", str(out)) == 2
    assert_one_line(capsys.readouterr().err, f"--out {out}: cannot write there")


@pytest.mark.parametrize("existing", [True, False], ids=["into-it", "a-new-folder-in-it"])
def test_a_read_only_out_is_one_line_and_leaves_nothing(
    study, tmp_path, capsys, monkeypatch, existing
):
    """Root writes into a 0555 folder anyway, so the refusal the kernel gives a user is
    injected where the export creates its folder and its files."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)

    def refusing(real):
        def method(self, *args, **kwargs):
            if self == folder or folder in self.parents:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)

        return method

    for name in ("mkdir", "write_text", "write_bytes"):
        monkeypatch.setattr(Path, name, refusing(getattr(Path, name)))

    out = folder if existing else folder / "new" / "deeper"
    assert export(study, "--trial", "0", "--out", str(out)) == 2
    monkeypatch.undo()
    assert_one_line(capsys.readouterr().err, "cannot write there (Permission denied)")
    assert list(folder.iterdir()) == []  # no folder, no half-written file


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_out_is_refused_by_the_kernel(study, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    for out in (folder, folder / "new"):
        assert export(study, "--trial", "0", "--out", str(out)) == 2
        assert_one_line(capsys.readouterr().err, "cannot write there")
    assert list(folder.iterdir()) == []
