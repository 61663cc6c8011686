"""docs/cookbook.md runs: every bash and Python block marked `<!-- cookbook: tested -->` is
taken from the page and run, in order, in an empty folder that is also $HOME, whose `~/notes`
holds text files and one binary file (the user's corpus).

What the test changes, all of it shown on the page: `my_corpus.yaml` is the page's laptop file
(same study, objectives and data as the GPU one), and the flags of the page's "on a GPU / on a
laptop" table are replaced. `sqa-nas` lines run in-process through `sqa_nas.cli.main`; Python
blocks run in one namespace, as pasted in order.

The cluster recipe runs against a real two-node Ray cluster on loopback, with the page's own
commands: other lines (the token) through bash, `ray start` with the cluster's address in
place of HEAD_IP:6379 plus what a test cluster needs (127.0.0.1, one logical GPU and one CPU
per node, a small object store, its own temp folder, `--block` so that the test stops its own
nodes: `ray stop` would stop every Ray on the machine), and the search as a process of its
own. The trials run on the CPU, as the objective does without a GPU.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from sqa_nas.cli import main
from sqa_nas.search.space import parse_space
from tests.search.test_ray import AUTH, JOIN, LOOPBACK, NODE_ARGS, Node, _start_node
from tests.search.test_search import _wait_for

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "cookbook.md").read_text()
RAY_CLI = "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
NEW_TOKENS = 64  # max_new_tokens in the page's generate calls


@dataclass
class Block:
    recipe: int  # the number of the `## N.` section it is in (0: before the first)
    lang: str
    marker: str
    body: str


def _blocks() -> list[Block]:
    """Every fenced block of the page, with the marker before it and its recipe."""
    heads = [(m.start(), int(m.group(1))) for m in re.finditer(r"^## (\d+)\. ", PAGE, re.M)]
    out = []
    for m in re.finditer(r"(?:<!-- cookbook: ([^>]*?) -->\s*)?```(\w+)\n(.*?)```", PAGE, re.S):
        recipe = max((n for at, n in heads if at < m.start()), default=0)
        out.append(Block(recipe, m.group(2), m.group(1) or "", m.group(3)))
    return out


def _marked(marker: str) -> str:
    (block,) = [b for b in _blocks() if b.marker == marker]
    return block.body


def _laptop_flags() -> list[tuple[str, str]]:
    """(GPU flags, laptop flags): the rows of the page's table."""
    table = PAGE.split("<!-- cookbook: laptop flags -->", 1)[1].strip().split("\n\n", 1)[0]
    return re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|$", table, re.M)


def _commands(body: str) -> list[str]:
    """A bash block's commands: continuation lines joined, comments and blank lines left out."""
    lines = body.replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _tested(recipes: set[int]) -> list[Block]:
    return [b for b in _blocks() if b.marker == "tested" and b.recipe in recipes]


def _laptop(line: str, used: set[str]) -> str:
    """`line` with the table's laptop flags for its GPU flags (each one replaced is `used`)."""
    for gpu, laptop in _laptop_flags():
        if gpu in line:
            line = line.replace(gpu, laptop)
            used.add(gpu)
    return line


def _notes(home: Path) -> None:
    """The user's corpus: the project's own docs, a subfolder, an extensionless file, an image."""
    notes = home / "notes"
    (notes / "docs").mkdir(parents=True)
    shutil.copy(ROOT / "README.md", notes / "README.md")
    for doc in sorted((ROOT / "docs").glob("*.md")):
        shutil.copy(doc, notes / "docs" / doc.name)
    (notes / "TODO").write_text("Search the attention layout of the notes model.\n" * 40)
    (notes / "docs" / "diagram.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(200))


def _kitchen(folder: Path) -> None:
    _notes(folder)
    (folder / "my_corpus.yaml").write_text(_marked("laptop my_corpus.yaml"))


@dataclass
class Ran:
    line: str
    code: int
    out: str
    err: str


def _sqa_nas(line: str) -> Ran:
    """A `sqa-nas ...` line through the CLI's main, in this process."""
    words = shlex.split(line, comments=True)
    assert words[0] == "sqa-nas", line
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(words[1:])
    return Ran(line, code, out.getvalue(), err.getvalue())


def _run_recipes(recipes: set[int], namespace: dict, used: set[str]) -> list[Ran]:
    """The tested blocks of `recipes`, in page order, at the laptop size."""
    ran = []
    blocks = _tested(recipes)
    assert {b.recipe for b in blocks} == recipes, "a recipe lost its tested blocks"
    for block in blocks:
        if block.lang == "python":
            exec(compile(block.body, f"cookbook.md:recipe {block.recipe}", "exec"), namespace)
            continue
        assert block.lang == "bash", block.lang
        for line in _commands(block.body):
            done = _sqa_nas(_laptop(line, used))
            assert done.code == 0, f"{done.line}: exit {done.code}\n{done.out}\n{done.err}"
            ran.append(done)
    return ran


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """Recipes 1, 3 and 4 run in a fresh folder: (folder, commands run, Python namespace)."""
    folder = tmp_path_factory.mktemp("cookbook")
    _kitchen(folder)
    namespace: dict = {}
    used: set[str] = set()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(folder))
        mp.chdir(folder)
        ran = _run_recipes({1, 3, 4}, namespace, used)
    return folder, ran, namespace, used


def test_every_block_is_tested_and_the_laptop_file_is_the_gpu_file_made_small():
    blocks = _blocks()
    code = [b for b in blocks if b.lang in ("bash", "python")]
    assert code and all(b.marker == "tested" for b in code), [b.body for b in code]
    assert {b.recipe for b in code} == {1, 2, 3, 4, 5, 6}
    gpu = yaml.safe_load(_marked("space my_corpus.yaml"))
    laptop = yaml.safe_load(_marked("laptop my_corpus.yaml"))
    for key in ("study", "objectives", "data"):
        assert gpu[key] == laptop[key], key
    assert parse_space(gpu, "cookbook").budget.n_trials == 48
    assert parse_space(laptop, "cookbook").budget.n_trials == 4
    commands = [c for b in blocks if b.lang == "bash" for c in _commands(b.body)]
    for gpu_flags, _ in _laptop_flags():  # every row of the table replaces something
        assert any(gpu_flags in c for c in commands), gpu_flags


def test_search_your_corpus_read_the_front_and_confirm_it(searched):
    folder, ran, namespace, used = searched
    space, search, table, once, _, confirm, _ = ran
    assert "my_corpus" in space.out
    # The folder's binary file is skipped and counted; the search ends with its front.
    assert "1 binary file skipped" in search.out + search.err
    assert "Pareto front of my_corpus" in search.out
    assert "knee" in once.out and "noise" in once.out
    # Recipe 3's Python read the noise floor the laptop file asked for, and the front.
    front = namespace["front"]
    seeds = yaml.safe_load(_marked("laptop my_corpus.yaml"))["budget"]["noise_seeds"]
    assert namespace["noise"]["n"] == seeds and front["verdict"] and front["front"]
    # The rerun's CSV is the front (then the trials within noise of it), nothing else.
    rows = list(csv.DictReader(io.StringIO(table.out)))
    assert [int(r["trial"]) for r in rows[: len(front["front"])]] == [
        t["number"] for t in front["front"]
    ]
    # Recipe 4: `--top 2 --seeds 2`, kept in the study and in the JSON.
    assert "--top 3 --seeds 3" in used and "confirm my_corpus --top 2 --seeds 2" in confirm.line
    assert len(namespace["confirmed"]["trials"]) == min(2, len(namespace["front"]["front"]))
    assert namespace["confirmed"]["survivors"]


def test_export_finetune_and_generate_text(searched, monkeypatch):
    folder, _, _, _ = searched
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", list(sys.path))  # recipe 6 puts model.py's folder first
    namespace: dict = {}
    used: set[str] = set()
    sys.modules.pop("model", None)
    try:
        _, finetune = _run_recipes({5, 6}, namespace, used)
    finally:
        sys.modules.pop("model", None)  # recipe 6's model.py
    assert used == {"--tokens 200000000 --seq-len 1024 --batch-size 32 --compile"}
    assert {"config.json", "model.py", "model.safetensors"} <= {
        p.name for p in (folder / "my_model").iterdir()
    }
    # The text comes from trained weights: finetune lowered the validation loss.
    log = json.loads((folder / "my_model-finetuned" / "finetune.json").read_text())
    assert log["val_after"]["val_loss"] < log["val_before"]["val_loss"], finetune.out
    model, prompt, out = namespace["model"], namespace["prompt"], namespace["out"]
    assert out.shape == (1, prompt.shape[1] + NEW_TOKENS)
    assert torch.equal(out[:, : prompt.shape[1]], prompt)
    assert namespace["sampled"].shape == out.shape
    uncached = model.generate(prompt, max_new_tokens=NEW_TOKENS, temperature=0, use_cache=False)
    assert torch.equal(out, uncached)  # the KV cache changes nothing
    # The Hugging Face model saved with the trained weights decodes the same tokens.
    hf, text = namespace["hf"], namespace["text"]
    assert torch.equal(text, out)
    plain = hf.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=False)
    assert torch.equal(plain, text)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray")
def test_search_on_a_cluster(tmp_path, free_port):
    _kitchen(tmp_path)
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp = Path(tempfile.mkdtemp(prefix="sqc", dir="/tmp"))  # Ray's socket paths: short
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    # The page sets RAY_AUTH_* itself; a token in the real home must not decide instead.
    env = {**os.environ, **LOOPBACK, "HOME": str(tmp_path), "PATH": path}
    env = {k: v for k, v in env.items() if k not in AUTH}
    nodes: list[Node] = []
    ran: list[str] = []
    try:
        for line in _commands(_tested({2})[0].body):
            line = line.replace("HEAD_IP:6379", address).replace("=6379", f"={port}")
            words = shlex.split(line, comments=True)
            if words[:2] == ["ray", "start"]:
                nodes.append(_ray_start(words[2:], env, temp, free_port, len(nodes)))
            elif words[:2] == ["ray", "status"]:
                status = _until_both_nodes(words[2:], env)
                assert status.count(" node_") == 2 and "2.0 GPU" in status, status
            elif words[0] == "sqa-nas":
                search = subprocess.run(
                    [sys.executable, "-m", "sqa_nas", *words[1:]],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                assert search.returncode == 0, f"{search.stdout[-3000:]}\n{search.stderr[-3000:]}"
                assert "executor: ray" in search.stdout and "Pareto front" in search.stdout
            else:
                env = _shell(line, env, tmp_path)
            ran.append(words[0])
    finally:
        for node in reversed(nodes):
            node.kill()
        shutil.rmtree(temp, ignore_errors=True)
    assert ran == ["python", "export", "ray", "ray", "ray", "sqa-nas"]
    assert env["RAY_AUTH_MODE"] == "token" and len(env["RAY_AUTH_TOKEN"]) == 64
    study = optuna.load_study(
        study_name="my_corpus", storage=f"sqlite:///{tmp_path}/runs/my_corpus/study.db"
    )
    assert [t.state.name for t in study.get_trials()].count("COMPLETE") == 4


def _shell(line: str, env: dict, cwd: Path) -> dict:
    """Run a line through bash; the environment it leaves (an `export`) is returned."""
    done = subprocess.run(
        ["bash", "-ec", f"{line}\nprintf '\\0cookbook-env\\0'; env -0"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{line}: {done.stderr}"
    dump = done.stdout.rpartition("\0cookbook-env\0")[2]
    return dict(item.split("=", 1) for item in dump.split("\0") if "=" in item)


def _ray_start(args: list[str], env: dict, temp: Path, free_port, n: int) -> Node:
    """The page's `ray start` as a test node on loopback (see the module's docstring)."""
    mine = [*NODE_ARGS, f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp}"]
    if "--head" in args:
        mine += ["--include-dashboard=false"]
        if importlib.util.find_spec("grpc") is not None:  # ray[client]: a client server
            mine += [f"--ray-client-server-port={free_port()}"]
        return _start_node([sys.executable, "-c", RAY_CLI, "start", *args, *mine], env, temp / "h")
    # A second node on loopback: Ray's CLI with loopback kept as given (tests/search/test_ray).
    join = {k: v for k, v in env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    return _start_node([sys.executable, "-c", JOIN, "start", *args, *mine], join, temp / f"n{n}")


def _until_both_nodes(args: list[str], env: dict) -> str:
    """The page's `ray status`, again until the joined node shows (it registers a moment
    after `ray start` returns)."""
    status = ""

    def both() -> bool:
        nonlocal status
        status = subprocess.run(
            [sys.executable, "-c", RAY_CLI, "status", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        return status.count(" node_") == 2

    _wait_for(both, timeout=60)
    return status
