"""Search-space YAML: malformed files exit 2 naming the key path; valid ones resolve."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sqa_nas.cli import main
from sqa_nas.search.space import load_space

ROOT = Path(__file__).resolve().parents[2]

# (YAML text, text the error must contain)
MALFORMED = [
    ("model: {d_model: 64, n_heads: 7}\n", "model.n_heads: 7 does not divide d_model=64"),
    ("modle: {}\n", "modle: Extra inputs are not permitted"),
    ("model: {d_model: 64, colour: red}\n", "model.colour: Extra inputs"),
    ("model: {d_model: sixty}\n", "model.d_model: Input should be a valid integer"),
    ("model: {d_model: 64.5}\n", "model.d_model"),
    ("model: {n_layers: 0}\n", "model.n_layers: Input should be greater than 0"),
    ("model: {causal: maybe}\n", "model.causal"),
    ("objectives: []\n", "objectives: List should have at least 1 item"),
    ("objectives: [val_loss, beauty]\n", "objectives.1: Input should be"),
    ("objectives: [params]\n", "objectives: params alone is analytic"),
    (
        "search: {patterns: [window], windows: [512]}\n",
        "search.windows: 512 is not below model.seq_len=128",
    ),
    ("search: {patterns: [window]}\n", "search.windows: patterns window/flex need"),
    ("search: {patterns: [diagonal]}\n", "search.patterns.0: Input should be"),
    ("search: {n_q_heads: [H/3]}\n", "search.n_q_heads[0]: 'H/3' is not a whole number"),
    ("search: {n_q_heads: [16]}\n", "search.n_q_heads[0]: 16 is not a whole number"),
    ("search: {n_q_heads: [H, H/0]}\n", "search.n_q_heads[1]: 'H/0' is not a head count"),
    (
        "model: {searched: {ffn_dim: [128, 0]}}\n",
        "model.searched.ffn_dim[1]: 0: Input should be greater than 0",
    ),
    ("model: {searched: {rope_theta: [fast]}}\n", "model.searched.rope_theta[0]: 'fast'"),
    (
        "execution: {ray: {gpus_per_trial: .inf}}\n",
        "execution.ray.gpus_per_trial: Input should be a finite number",
    ),
    (
        "search: {n_q_heads: [1], n_kv_heads: [2], allow_reverse: false}\nseed_trials: []\n",
        "search: no valid (n_q_heads, n_kv_heads) pair",
    ),
    ("search: {tying: groups}\n", "search.group_size: tying 'groups' needs group_size"),
    ("search: {tying: groups, group_size: 3}\n", "search.group_size: 3 does not divide"),
    ("search: {backends: [warp]}\n", "search.backends[0]: unknown backend 'warp'"),
    ("seed_trials: [MHA, Turbo]\n", "seed_trials[1]: unknown variant 'Turbo'"),
    ("sampler: {name: annealing}\n", "sampler.name: Input should be"),
    ("budget: {n_trials: -3}\n", "budget.n_trials: Input should be greater than 0"),
    ("budget: {train: {lr: fast}}\n", "budget.train.lr"),
    ("data: {kind: text}\n", "data.text.paths: Field required"),
    ("data: {kind: web}\n", "data: Input tag 'web' found using 'kind' does not match"),
    ("execution: {executor: slurm}\n", "execution.executor: Input should be 'local' or 'ray'"),
    ("constraints: {max_params: -1}\n", "constraints.max_params"),
    ("constraints: {max_kv: 10}\n", "constraints.max_kv: Extra inputs"),
    ("- just\n- a list\n", "expected a mapping of sections"),
    ("model: {d_model: [64\n", "is not valid YAML"),
    ("!!python/object/apply:os.system ['echo pwned']\n", "is not valid YAML"),
    ("model: !!python/name:os.getcwd\n", "is not valid YAML"),
    ("study: 'no spaces allowed'\n", "study: 'no spaces allowed' is not a study name"),
]


@pytest.mark.parametrize("text,message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_space_exits_2_with_key_path(tmp_path, capsys, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    for command in ("space", "search"):
        assert main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert message in " ".join(err.split()), err
        assert "Traceback" not in err


def test_unreadable_and_missing_files(tmp_path, capsys):
    assert main(["space", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00model")
    assert main(["space", str(binary)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    assert main(["space", str(tmp_path)]) == 2  # a directory
    assert "cannot read" in capsys.readouterr().err


def test_no_traceback_in_a_real_process(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {d_model: 64, n_heads: 7}\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "search", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "model.n_heads" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "search_spaces").glob("*.yaml")))
def test_shipped_spaces_are_valid(name, capsys):
    # on a 24 GB CPU machine, as on a GPU: the memory check (tests/search/test_sizes.py)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sqa_nas.search.memory.torch.cuda.device_count", lambda: 0)
        patch.setattr("sqa_nas.search.memory.memory_bytes", lambda device="cpu": 24 * 10**9)
        assert main(["space", str(ROOT / "search_spaces" / name)]) == 0
    assert "cardinality" in capsys.readouterr().out


def test_choices_exclude_invalid_pairs_and_include_seed_variants(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "model: {d_model: 64, n_heads: 8}\n"
        "search: {n_q_heads: [H, 6, H/4], n_kv_heads: [4, 1]}\n"
        "seed_trials: [MHA, rSQA]\n"
    )
    spec = load_space(path)
    heads = spec.head_choices()
    assert "6/4" not in heads and "2/4" in heads  # 4 does not divide 6; rSQA seed added
    assert {"8/4", "8/1", "6/1", "2/1", "8/8"} <= set(heads)
    assert spec.study_name == "s"
    path.write_text(
        "model: {d_model: 64, n_heads: 8}\nsearch: {n_q_heads: [2], "
        "n_kv_heads: [4], allow_reverse: true}\nseed_trials: []\n"
    )
    assert load_space(path).head_choices() == ["2/4"]


def test_tying_units_and_model_config(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "model: {d_model: 64, n_heads: 8, n_layers: 6, seq_len: 64}\n"
        "search: {tying: groups, group_size: 3, patterns: [dense, flex],"
        " windows: [16], global_tokens: [2]}\n"
    )
    spec = load_space(path)
    assert [u for u, _ in spec.units()] == ["layers0-2", "layers3-5"]
    params = {
        "layers0-2.heads": "8/2",
        "layers0-2.mask": "flex:16+2",
        "layers3-5.heads": "2/2",
        "layers3-5.mask": "dense",
    }
    config = spec.build_config(params, 256)
    patterns = [(c.n_q_heads, c.n_kv_heads, c.pattern) for c in config.layer_configs]
    assert patterns == [(8, 2, "flex")] * 3 + [(2, 2, "dense")] * 3
    assert spec.cardinality() == (len(spec.head_choices()) * 2) ** 2
    assert spec.layouts() == len(spec.head_choices()) * 2  # one group's heads x masks


def test_reference_yaml_shows_every_key():
    import yaml
    from pydantic import BaseModel

    from sqa_nas.search.space import SearchSpec

    data = yaml.safe_load((ROOT / "search_spaces" / "reference.yaml").read_text())

    def walk(model: type[BaseModel], section: dict, path: str):
        for name, field in model.model_fields.items():
            assert name in section, f"reference.yaml lacks {path}{name}"
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel) and name != "data":
                walk(sub, section[name], f"{path}{name}.")

    walk(SearchSpec, data, "")
