"""Malformed input to every command (issue 17), grouped by command: bad YAML files of every
kind, wrong values in every section of a search space, bad arguments, missing files,
folders and FIFOs given as files. Each case runs `sqa_nas.cli.main` in-process in a fresh
working directory and must end in exit code 2 with exactly one line on stderr naming the
problem (never a traceback), having written nothing there. Cases another branch of issue
17 fixes are xfail with that item; those that would allocate or run a search meanwhile are
not run until it lands (run=False).

The tests after the corpus hold the promises the corpus relies on: user text printed
verbatim (markup, emoji codes, escape sequences), output files checked before the
benchmark, studies read without creating storages, the data checked before a study is
created, and `dashboard --png FOLDER`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.text import Text

import sqa_nas.cli.bench as bench_cli
import sqa_nas.cli.search as search_cli
import sqa_nas.cli.variants as variants_cli
from sqa_nas.cli import guarded, main, shown
from sqa_nas.data import load_dataset
from sqa_nas.errors import UserError
from sqa_nas.printable import printable
from sqa_nas.registry import Variant
from tests.fakestudy import make_study

# A valid search space that would cost next to nothing if a case slipped through: MQAR data
# (generated, nothing cached), two tiny layers, one trial of one step on the CPU.
BASE: dict[str, Any] = {
    "study": "corpus",
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "ffn_dim": 64, "seq_len": 32},
    "search": {
        "n_q_heads": ["H", "H/2"],
        "n_kv_heads": ["H/2", 1],
        "patterns": ["dense", "window"],
        "windows": [8],
    },
    "objectives": ["val_loss", "throughput_tokens_per_s"],
    "sampler": {"name": "random", "seed": 0},
    "budget": {
        "n_trials": 1,
        "noise_seeds": 0,
        "train": {"steps": 1, "batch_size": 2, "eval_batches": 1},
        "throughput": {"batch_size": 1, "warmup": 1, "repeats": 1, "mode": "fwd"},
    },
    "data": {"kind": "mqar", "vocab_size": 64, "num_kv_pairs": 4},
    "execution": {"device": "cpu", "workers": 1},
}
DROP = object()  # a value in `space(...)` that removes the key
DIR, FIFO = object(), object()  # file contents that make a folder / a named pipe instead


def space(changes: dict[str, Any] | None = None) -> str:
    """BASE as YAML with dotted keys set (``{"model.d_model": 0}``) or dropped (DROP)."""
    data = yaml.safe_load(yaml.safe_dump(BASE))  # a deep copy
    for dotted, value in (changes or {}).items():
        *parents, key = dotted.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        if value is DROP:
            node.pop(key, None)
        else:
            node[key] = value
    return yaml.safe_dump(data, sort_keys=False)


def nested(levels: int) -> str:
    """A block mapping `levels` deep under model:."""
    return (
        "model:\n"
        + "".join("  " * i + f"k{i}:\n" for i in range(1, levels))
        + "  " * levels
        + "x: 1\n"
    )


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
)
ANCHOR_20 = "[" * 20 + "1" + "]" * 20
ALIAS_TOO_DEEP = f"a: &deep {ANCHOR_20}\nb: {'[' * 20}*deep{']' * 20}\n"


def other(item: str, *, run: bool = True):
    """The mark of a case another branch of issue 17 fixes."""
    return pytest.mark.xfail(reason=f"issue 17: {item} (other branch)", strict=True, run=run)


def case(id: str, argv: list[str], message: str, files=None, marks=()):
    """One malformed input: `argv` for main, the `files` to create first in the working
    directory (name -> text, bytes, DIR or FIFO), and what the one stderr line must say."""
    return pytest.param(argv, files or {}, message, id=id, marks=marks)


def yaml_case(command: str, id: str, text: str | bytes, message: str, marks=()):
    """A search space file with `text` given to `command` (space or search)."""
    return case(f"{command}-{id}", [command, "s.yaml"], message, {"s.yaml": text}, marks)


def section_case(id: str, changes: dict[str, Any], message: str, marks=()):
    """BASE with `changes`, given to `space`: the key path must be named."""
    return yaml_case("space", id, space(changes), message, marks)


YAML_HAZARDS = [
    ("nested-5000-lists", "model: " + "[" * 5000 + "]" * 5000, "nesting deeper than 32 levels"),
    ("nested-40-flow-maps", "model: " + "{a: " * 40 + "1" + "}" * 40, "nesting deeper"),
    ("nested-40-block-maps", nested(40), "line 32, column 63: nesting deeper than 32 levels"),
    (
        "duplicate-top-key",
        "study: a\nstudy: b\n",
        "line 2, column 1: duplicate key 'study' (first at line 1)",
    ),
    (
        "duplicate-nested-key",
        "model:\n  d_model: 64\n  d_model: 32\n",
        "line 3, column 3: duplicate key 'd_model' (first at line 2)",
    ),
    ("duplicate-flow-key", "model: {d_model: 64, d_model: 32}\n", "duplicate key 'd_model'"),
    ("duplicate-section", space() + "model: {d_model: 64}\n", "duplicate key 'model'"),
    ("billion-laughs", LAUGHS, "more than 100,000 values once its aliases are expanded"),
    (
        "recursive-alias",
        "search: &a {n_q_heads: *a}\n",
        "alias *a refers to a node that contains it",
    ),
    ("alias-nests-too-deep", ALIAS_TOO_DEEP, "alias *deep nests deeper than 32 levels"),
    ("undefined-alias", "model: *nope\n", "found undefined alias 'nope'"),
    ("tab-indent", "model:\n\td_model: 64\n", "line 2, column 1: a tab character"),
    ("empty-file", "", "holds no settings"),
    ("only-comments", "# a search space, some day\n", "holds no settings"),
    ("null-document", "~\n", "holds no settings"),
    ("top-level-list", "- model\n- search\n", "expected a mapping of sections"),
    (
        "top-level-string",
        "hello\n",
        "expected a mapping of sections (model, search, ...), got str",
    ),
    ("top-level-number", "42\n", "got int"),
    ("binary-file", b"\x7fELF\x02\x01\x01\x00\x00\xff", "it holds NUL bytes (a binary file?)"),
    ("latin-1-text", b"study: caf\xe9\n", "is not UTF-8 text (byte 10 is 0xe9)"),
    ("utf-16-text", "study: x\n".encode("utf-16"), "it holds NUL bytes (a binary file?)"),
    ("over-1-MiB", "# " + "x" * (1 << 20) + "\n", "larger than 1,048,576 bytes is refused"),
    (
        "python-object-tag",
        "study: !!python/object/apply:os.system [echo hi]\n",
        "could not determine a constructor for the tag",
    ),
    ("unknown-tag", "study: !secret x\n", "constructor for the tag '!secret'"),
    ("two-documents", "study: a\n---\nstudy: b\n", "expected a single document in the stream"),
    ("5000-digit-integer", "model: {d_model: " + "9" * 5000 + "}\n", "(5,000 characters) as int"),
    ("impossible-date", "study: 2024-13-45\n", "cannot read '2024-13-45' as timestamp"),
    (
        "bell-character",
        "study: a\x07b\n",
        "is not valid YAML: line 1: character '\\x07' is not allowed",
    ),
    ("unclosed-flow-map", "model: {d_model: 64\n", "expected ',' or '}'"),
    ("missing-colon", "model:\n  d_model 64\n  n_layers: 2\n", "mapping values are not allowed"),
    ("bad-indentation", "model:\n    d_model: 64\n  n_layers: 2\n", "line 3, column 3"),
    ("unterminated-string", 'study: "corpus\n', "found unexpected end of stream"),
    ("bad-base64", "study: !!binary 'abc'\n", "failed to decode base64 data"),
    ("unhashable-key", "model: {[d_model]: 64}\n", "found unhashable key"),
    (
        "merge-of-a-number",
        "model: {<<: 1}\n",
        "expected a mapping or list of mappings for merging",
    ),
]

SPACE_CASES = [yaml_case("space", id, text, message) for id, text, message in YAML_HAZARDS] + [
    case(
        "space-missing-file",
        ["space", "nope.yaml"],
        "cannot read search space nope.yaml: No such file or directory",
    ),
    case(
        "space-a-directory",
        ["space", "d.yaml"],
        "cannot read search space d.yaml: it is a directory",
        {"d.yaml": DIR},
    ),
    case(
        "space-a-fifo",
        ["space", "p.yaml"],
        "cannot read search space p.yaml: not a regular file",
        {"p.yaml": FIFO},
    ),
    case("space-under-a-file", ["space", "f/s.yaml"], "Not a directory", {"f": "x"}),
    case("space-no-argument", ["space"], "the following arguments are required: space"),
    case(
        "space-unknown-flag",
        ["space", "s.yaml", "--jsn"],
        "unrecognized arguments: --jsn",
        {"s.yaml": space()},
    ),
    case(
        "space-two-files",
        ["space", "s.yaml", "t.yaml"],
        "unrecognized arguments: t.yaml",
        {"s.yaml": space()},
    ),
    # Wrong values in every section: strings for numbers, negative, zero, NaN / inf, lists
    # for scalars, unknown keys at each level.
    section_case("top-unknown-key", {"modle": {}}, "modle: Extra inputs are not permitted"),
    section_case("study-with-space", {"study": "my study"}, "is not a study name"),
    section_case("study-a-list", {"study": ["a"]}, "study: Input should be a valid string"),
    section_case("model-a-list", {"model": [1, 2]}, "model: Input should be a valid dictionary"),
    section_case("model-d_model-string", {"model.d_model": "sixty-four"}, "model.d_model"),
    section_case("model-d_model-negative", {"model.d_model": -64}, "model.d_model"),
    section_case("model-d_model-zero", {"model.d_model": 0}, "model.d_model"),
    section_case("model-d_model-fraction", {"model.d_model": 32.5}, "model.d_model"),
    section_case("model-d_model-nan", {"model.d_model": float("nan")}, "model.d_model"),
    section_case("model-d_model-list", {"model.d_model": [32]}, "model.d_model"),
    section_case("model-n_heads-not-dividing", {"model.n_heads": 5}, "does not divide"),
    section_case("model-n_layers-inf", {"model.n_layers": float("inf")}, "model.n_layers"),
    section_case("model-causal-string", {"model.causal": "maybe"}, "model.causal"),
    section_case("model-rope_theta-negative", {"model.rope_theta": -1.0}, "model.rope_theta"),
    section_case("model-rope_theta-nan", {"model.rope_theta": float("nan")}, "model.rope_theta"),
    section_case("model-seq_len-zero", {"model.seq_len": 0}, "model.seq_len"),
    section_case("model-unknown-key", {"model.width": 64}, "model.width: Extra inputs"),
    section_case(
        "model-searched-not-searchable",
        {"model.searched": {"d_model": [32, 64]}},
        "model.searched",
    ),
    section_case("search-n_q_heads-empty", {"search.n_q_heads": []}, "search.n_q_heads"),
    section_case("search-n_q_heads-third", {"search.n_q_heads": ["H/3"]}, "search.n_q_heads"),
    section_case("search-n_q_heads-too-many", {"search.n_q_heads": [100]}, "search.n_q_heads"),
    section_case("search-n_kv_heads-string", {"search.n_kv_heads": "H"}, "search.n_kv_heads"),
    section_case("search-pattern-unknown", {"search.patterns": ["spiral"]}, "search.patterns"),
    section_case("search-window-negative", {"search.windows": [-8]}, "search.windows"),
    section_case(
        "search-window-too-wide",
        {"search.windows": [64]},
        "search.windows: 64 is not below model.seq_len=32",
    ),
    section_case(
        "search-global_tokens-zero",
        {"search.patterns": ["flex"], "search.global_tokens": [0]},
        "search.global_tokens",
    ),
    section_case("search-tying-unknown", {"search.tying": "sometimes"}, "search.tying"),
    section_case("search-groups-without-size", {"search.tying": "groups"}, "group_size"),
    section_case(
        "search-group_size-not-dividing",
        {"search.tying": "groups", "search.group_size": 3},
        "search.group_size: 3 does not divide model.n_layers=2",
    ),
    section_case("search-backend-unknown", {"search.backends": ["nope"]}, "search.backends[0]"),
    section_case(
        "search-block_size-zero",
        {"search.patterns": ["block_sparse"], "search.block_sparse": {"block_size": 0}},
        "search.block_sparse.block_size",
    ),
    section_case(
        "search-allow_reverse-string",
        {"search.allow_reverse": "yes please"},
        "search.allow_reverse",
    ),
    section_case("search-unknown-key", {"search.heads": [1]}, "search.heads: Extra inputs"),
    section_case("constraints-negative", {"constraints.max_params": -1}, "constraints.max_params"),
    section_case(
        "constraints-string",
        {"constraints.max_kv_cache_vs_mha": "half"},
        "constraints.max_kv_cache_vs_mha",
    ),
    section_case(
        "constraints-zero",
        {"constraints.max_attention_flops": 0},
        "constraints.max_attention_flops",
    ),
    section_case(
        "constraints-unknown-key",
        {"constraints.max_memory": 1},
        "constraints.max_memory: Extra inputs",
    ),
    section_case("objectives-empty", {"objectives": []}, "objectives"),
    section_case("objectives-unknown", {"objectives": ["accuracy"]}, "objectives.0"),
    section_case("objectives-twice", {"objectives": ["val_loss", "val_loss"]}, "listed twice"),
    section_case("objectives-analytic-alone", {"objectives": ["params"]}, "params alone"),
    section_case("sampler-unknown", {"sampler.name": "bayes"}, "sampler.name"),
    section_case("sampler-population-one", {"sampler.population": 1}, "sampler.population"),
    section_case("sampler-seed-string", {"sampler.seed": "lucky"}, "sampler.seed"),
    section_case("sampler-unknown-key", {"sampler.temperature": 1}, "sampler.temperature"),
    section_case("seed_trials-unknown", {"seed_trials": ["NOPE"]}, "seed_trials[0]"),
    section_case("seed_trials-string", {"seed_trials": "MHA"}, "seed_trials"),
    section_case("budget-n_trials-zero", {"budget.n_trials": 0}, "budget.n_trials"),
    section_case("budget-n_trials-negative", {"budget.n_trials": -1}, "budget.n_trials"),
    section_case("budget-n_trials-string", {"budget.n_trials": "ten"}, "budget.n_trials"),
    section_case("budget-n_trials-exponent", {"budget.n_trials": "1e3"}, "budget.n_trials"),
    section_case(
        "budget-max_wall_seconds-negative",
        {"budget.max_wall_seconds": -5},
        "budget.max_wall_seconds",
    ),
    section_case(
        "budget-trial_timeout_s-zero", {"budget.trial_timeout_s": 0}, "budget.trial_timeout_s"
    ),
    section_case("budget-seeds-zero", {"budget.seeds": 0}, "budget.seeds"),
    section_case("budget-noise_seeds-one", {"budget.noise_seeds": 1}, "noise_seeds"),
    section_case("budget-unknown-key", {"budget.epochs": 3}, "budget.epochs"),
    section_case("train-lr-negative", {"budget.train.lr": -0.1}, "budget.train.lr"),
    section_case("train-lr-nan", {"budget.train.lr": float("nan")}, "budget.train.lr"),
    section_case(
        "train-min_lr_ratio-two", {"budget.train.min_lr_ratio": 2}, "budget.train.min_lr_ratio"
    ),
    section_case("train-steps-zero", {"budget.train.steps": 0}, "budget.train.steps"),
    section_case(
        "train-warmup-negative", {"budget.train.warmup_steps": -1}, "budget.train.warmup_steps"
    ),
    section_case(
        "train-compile-string", {"budget.train.compile": "sometimes"}, "budget.train.compile"
    ),
    section_case(
        "train-batch_size-list", {"budget.train.batch_size": [2]}, "budget.train.batch_size"
    ),
    section_case("train-unknown-key", {"budget.train.optimizer": "sgd"}, "budget.train.optimizer"),
    section_case(
        "throughput-mode-unknown", {"budget.throughput.mode": "bwd"}, "budget.throughput.mode"
    ),
    section_case(
        "throughput-ci_target-over-one",
        {"budget.throughput.ci_target": 1.5},
        "budget.throughput.ci_target",
    ),
    section_case(
        "throughput-warmup-zero", {"budget.throughput.warmup": 0}, "budget.throughput.warmup"
    ),
    section_case(
        "early_stopping-unknown",
        {"budget.early_stopping.scheduler": "hyperband"},
        "budget.early_stopping.scheduler",
    ),
    section_case(
        "early_stopping-eta-one", {"budget.early_stopping.eta": 1}, "budget.early_stopping.eta"
    ),
    section_case(
        "early_stopping-without-val_loss",
        {
            "budget.early_stopping.scheduler": "mo_asha",
            "budget.train.tokens": 4096,
            "budget.train.steps": DROP,
            "budget.early_stopping.min_tokens": 1024,
            "objectives": ["throughput_tokens_per_s", "params"],
        },
        "add val_loss to objectives",
    ),
    section_case("data-kind-unknown", {"data": {"kind": "csv"}}, "data"),
    section_case("data-kind-missing", {"data": {}}, "data"),
    section_case("data-a-string", {"data": "embedded"}, "data"),
    section_case("data-text-without-paths", {"data": {"kind": "text"}}, "data.text.paths"),
    section_case("data-text-no-paths", {"data": {"kind": "text", "paths": []}}, "data.text.paths"),
    section_case(
        "data-val_fraction-over-one",
        {"data": {"kind": "embedded", "val_fraction": 1.5}},
        "data.embedded.val_fraction",
    ),
    section_case(
        "data-tokens-dtype",
        {"data": {"kind": "tokens", "path": "d", "dtype": "int8"}},
        "data.tokens.dtype",
    ),
    section_case("data-mqar-pairs-zero", {"data.num_kv_pairs": 0}, "data.mqar.num_kv_pairs"),
    section_case("data-mqar-vocab-too-small", {"data.num_kv_pairs": 40}, "num_kv_pairs=40"),
    section_case("data-unknown-key", {"data.pathz": ["x"]}, "data.mqar.pathz"),
    section_case(
        "data-hf-without-tokenizer", {"data": {"kind": "hf", "name": "x"}}, "data.hf.tokenizer"
    ),
    section_case(
        "execution-executor-unknown", {"execution.executor": "slurm"}, "execution.executor"
    ),
    section_case("execution-workers-zero", {"execution.workers": 0}, "execution.workers"),
    section_case("execution-device-unknown", {"execution.device": "tpu"}, "execution.device"),
    section_case(
        "execution-trials_per_gpu-zero",
        {"execution.trials_per_gpu": 0},
        "execution.trials_per_gpu",
    ),
    section_case(
        "ray-gpus_per_trial-negative",
        {"execution.ray": {"gpus_per_trial": -1}},
        "execution.ray.gpus_per_trial",
    ),
    section_case(
        "ray-gpus_per_trial-nan",
        {"execution.ray": {"gpus_per_trial": float("nan")}},
        "execution.ray.gpus_per_trial",
    ),
    section_case(
        "ray-max_retries-negative",
        {"execution.ray": {"max_retries": -1}},
        "execution.ray.max_retries",
    ),
    section_case("ray-unknown-key", {"execution.ray": {"port": 1}}, "execution.ray.port"),
    section_case("storage-a-number", {"storage": 5}, "storage"),
]

SEARCH_CASES = [
    yaml_case("search", id, text, message)
    for id, text, message in YAML_HAZARDS
    if id
    in (
        "nested-5000-lists",
        "duplicate-top-key",
        "billion-laughs",
        "binary-file",
        "tab-indent",
        "empty-file",
    )
] + [
    case("search-missing-file", ["search", "nope.yaml"], "No such file or directory"),
    case("search-a-directory", ["search", "d"], "search space d: it is a directory", {"d": DIR}),
    case(
        "search-bad-section",
        ["search", "s.yaml"],
        "model.d_model",
        {"s.yaml": space({"model.d_model": -1})},
    ),
    case(
        "search-n-trials-zero",
        ["search", "s.yaml", "--n-trials", "0"],
        "argument --n-trials: must be >= 1, got 0",
        {"s.yaml": space()},
    ),
    case(
        "search-n-trials-word",
        ["search", "s.yaml", "--n-trials", "ten"],
        "argument --n-trials: expected a whole number",
        {"s.yaml": space()},
    ),
    case(
        "search-n-trials-huge-digits",
        ["search", "s.yaml", "--n-trials", "9" * 5000],
        "argument --n-trials: expected a whole number",
        {"s.yaml": space()},
    ),
    case(
        "search-workers-zero",
        ["search", "s.yaml", "--workers", "0"],
        "argument --workers",
        {"s.yaml": space()},
    ),
    case(
        "search-workers-negative",
        ["search", "s.yaml", "--workers", "-2"],
        "--workers",
        {"s.yaml": space()},
    ),
    case(
        "search-seed-fraction",
        ["search", "s.yaml", "--seed", "1.5"],
        "argument --seed",
        {"s.yaml": space()},
    ),
    case(
        "search-executor-unknown",
        ["search", "s.yaml", "--executor", "slurm"],
        "argument --executor: invalid choice",
        {"s.yaml": space()},
    ),
    case(
        "search-device-unknown",
        ["search", "s.yaml", "--device", "tpu"],
        "argument --device: invalid choice",
        {"s.yaml": space()},
    ),
    case(
        "search-gpus-per-trial-negative",
        ["search", "s.yaml", "--gpus-per-trial", "-1"],
        "execution.ray.gpus_per_trial",
        {"s.yaml": space()},
    ),
    case(
        "search-gpus-per-trial-nan",
        ["search", "s.yaml", "--gpus-per-trial", "nan"],
        "execution.ray.gpus_per_trial",
        {"s.yaml": space()},
    ),
    case(
        "search-gpus-per-trial-word",
        ["search", "s.yaml", "--gpus-per-trial", "one"],
        "argument --gpus-per-trial",
        {"s.yaml": space()},
    ),
    case(
        "search-max-concurrent-zero",
        ["search", "s.yaml", "--max-concurrent", "0"],
        "argument --max-concurrent",
        {"s.yaml": space()},
    ),
    case(
        "search-unknown-flag",
        ["search", "s.yaml", "--trials", "3"],
        "unrecognized arguments: --trials 3",
        {"s.yaml": space()},
    ),
    case(
        "search-study-with-slash",
        ["search", "s.yaml", "--study", "a/b"],
        "is not a study name",
        {"s.yaml": space()},
    ),
    case(
        "search-data-missing-file",
        ["search", "s.yaml"],
        "no such file 'missing.txt'",
        {"s.yaml": space({"data": {"kind": "text", "paths": ["missing.txt"]}})},
    ),
    case(
        "search-data-glob-matches-nothing",
        ["search", "s.yaml"],
        "*.nothing",
        {"s.yaml": space({"data": {"kind": "text", "paths": ["*.nothing"]}})},
    ),
    case(
        "search-data-tokens-missing",
        ["search", "s.yaml"],
        "tokens",
        {"s.yaml": space({"data": {"kind": "tokens", "path": "no_such_dir"}})},
    ),
    case(
        "search-storage-not-a-url",
        ["search", "s.yaml", "--storage", "foo"],
        "is not a database URL",
        {"s.yaml": space()},
    ),
    # Storage names and sizes: other branches. The ones that would run a search or allocate
    # gigabytes until then are not run.
    case(
        "search-study-300-chars",
        ["search", "s.yaml", "--study", "s" * 300],
        "study",
        {"s.yaml": space()},
    ),
    case(
        "search-storage-journal-empty",
        ["search", "s.yaml", "--storage", "journal:"],
        "journal",
        {"s.yaml": space()},
    ),
    case(
        "search-storage-under-a-file",
        ["search", "s.yaml", "--storage", "sqlite:///f/s.db"],
        "f",
        {"s.yaml": space(), "f": "x"},
    ),
    case(
        "search-storage-in-memory",
        ["search", "s.yaml", "--storage", "sqlite://"],
        "memory",
        {"s.yaml": space()},
    ),
    case(
        "search-study-dot-dot",
        ["search", "s.yaml", "--study", ".."],
        "study",
        {"s.yaml": space()},
    ),
    case(
        "search-n_layers-billion",
        ["search", "s.yaml"],
        "n_layers",
        {"s.yaml": space({"model.n_layers": 10**9})},
    ),
    case(
        "search-seq_len-billion",
        ["search", "s.yaml"],
        "seq_len",
        {"s.yaml": space({"model.seq_len": 10**9})},
    ),
    case(
        "search-batch_size-billion",
        ["search", "s.yaml"],
        "batch_size",
        {"s.yaml": space({"budget.train.batch_size": 10**9})},
    ),
    case(
        "search-vocab-billion",
        ["search", "s.yaml"],
        "vocab",
        {"s.yaml": space({"model.vocab_size": 10**9})},
    ),
    case(
        "search-head_dim-billion",
        ["search", "s.yaml"],
        "head_dim",
        {"s.yaml": space({"model.head_dim": 10**9})},
    ),
    case(
        "search-ray-nobody-listens",
        ["search", "s.yaml", "--executor", "ray", "--address", "127.0.0.1:9"],
        "127.0.0.1:9",
        {"s.yaml": space()},
    ),
]

BENCH = ["bench", "--device", "cpu", "--variants", "MHA", "--seq-lens", "64"]
BENCH_CASES = [
    case(f"bench-{flag.strip('-')}-{id}", [*BENCH, flag, value], message)
    for flag, id, value, message in [
        ("--seq-lens", "word", "long", "argument --seq-lens: expected a comma-separated list"),
        ("--seq-lens", "empty", ",", "argument --seq-lens: expected at least one value"),
        ("--seq-lens", "zero", "0", "--seq-lens: lengths must be positive, got [0]"),
        ("--seq-lens", "negative", "-64", "--seq-lens: lengths must be positive"),
        ("--batch", "zero", "0", "argument --batch"),
        ("--batch", "fraction", "1.5", "argument --batch"),
        ("--n-heads", "zero", "0", "argument --n-heads: must be >= 1, got 0"),
        ("--n-heads", "word", "many", "argument --n-heads"),
        ("--head-dim", "zero", "0", "argument --head-dim"),
        ("--dtype", "unknown", "float8", "argument --dtype: invalid choice: 'float8'"),
        ("--mode", "unknown", "sideways", "argument --mode: invalid choice"),
        ("--scope", "unknown", "galaxy", "argument --scope: invalid choice"),
        ("--patterns", "unknown", "spiral", "argument --patterns: invalid choice"),
        ("--causal-modes", "unknown", "sometimes", "argument --causal-modes"),
        ("--window", "word", "wide", "argument --window"),
        ("--window", "negative", "-1", "window"),
        ("--global-tokens", "without-window", "4", "global"),
        ("--warmup", "fraction", "0.5", "argument --warmup"),
        ("--repeats", "zero", "0", "argument --repeats"),
        ("--budget-s", "negative", "-1", "argument --budget-s: must be a finite number >= 0"),
        ("--budget-s", "nan", "nan", "argument --budget-s"),
        ("--budget-s", "inf", "inf", "argument --budget-s"),
        ("--check-len", "zero", "0", "argument --check-len"),
        ("--row-timeout-s", "word", "soon", "argument --row-timeout-s: expected a number"),
        ("--n-layers", "zero", "0", "argument --n-layers"),
        ("--device", "unknown", "tpu", "tpu"),
        ("--backend", "unknown", "warp", "warp"),
        ("--preset", "unknown", "galaxy-brain", "galaxy-brain"),
        ("--unknown", "flag", "1", "unrecognized arguments: --unknown 1"),
    ]
] + [
    case("bench-variant-unknown", ["bench", "--device", "cpu", "--variants", "NOPE"], "NOPE"),
    case("bench-baseline-unknown", [*BENCH, "--baselines", "NOPE"], "NOPE"),
    case(
        "bench-json-under-a-file",
        [*BENCH, "--json", "f/r.json"],
        "argument --json: f/r.json: f is a file, not a folder",
        {"f": "x"},
    ),
    case(
        "bench-json-a-directory",
        [*BENCH, "--json", "d"],
        "argument --json: d: is a directory",
        {"d": DIR},
    ),
    case(
        "bench-png-under-a-file",
        [*BENCH, "--png", "f/sub/p.png"],
        "f is a file, not a folder",
        {"f": "x"},
    ),
    case(
        "bench-calibration-out-a-directory",
        [*BENCH, "--calibration-out", "d"],
        "is a directory",
        {"d": DIR},
    ),
    case(
        "bench-seq-len-billion",
        [*BENCH, "--seq-lens", str(10**9)],
        "more than this machine's",
    ),
]

VARIANTS_CASES = [
    case("variants-n-heads-zero", ["variants", "--n-heads", "0"], "must be >= 1, got 0"),
    case("variants-n-heads-negative", ["variants", "--n-heads", "-4"], "must be >= 1, got -4"),
    case("variants-n-heads-word", ["variants", "--n-heads", "sixteen"], "expected a whole number"),
    case("variants-n-heads-fraction", ["variants", "--n-heads", "1.5"], "expected a whole number"),
    case("variants-n-heads-empty", ["variants", "--n-heads", ""], "expected a whole number"),
    case("variants-n-heads-missing-value", ["variants", "--n-heads"], "expected one argument"),
    case("variants-unknown-flag", ["variants", "--all"], "unrecognized arguments: --all"),
    case("unknown-command", ["varients"], "invalid choice: 'varients'"),
    case("no-command", [], "the following arguments are required: COMMAND"),
]

DASHBOARD = ["dashboard", "demo", "--storage", "{db}"]
DASHBOARD_CASES = [
    case("dashboard-refresh-zero", [*DASHBOARD, "--refresh", "0"], "--refresh must be > 0"),
    case("dashboard-refresh-negative", [*DASHBOARD, "--refresh", "-1"], "argument --refresh"),
    case("dashboard-refresh-nan", [*DASHBOARD, "--refresh", "nan"], "argument --refresh"),
    case("dashboard-refresh-word", [*DASHBOARD, "--refresh", "often"], "argument --refresh"),
    case("dashboard-pick-unknown", [*DASHBOARD, "--pick", "best"], "best"),
    case("dashboard-pick-unknown-objective", [*DASHBOARD, "--pick", "best:accuracy"], "accuracy"),
    case("dashboard-x-unknown", [*DASHBOARD, "--x", "beauty"], "--x 'beauty': not a metric"),
    case("dashboard-y-unknown", [*DASHBOARD, "--y", "beauty"], "--y 'beauty': not a metric"),
    case(
        "dashboard-once-and-json-stdout",
        [*DASHBOARD, "--once", "--json", "-"],
        "both write to stdout",
    ),
    case("dashboard-unknown-study", ["dashboard", "nope", "--storage", "{db}"], "no study 'nope'"),
    case("dashboard-default-storage-missing", ["dashboard", "demo"], "does not exist"),
    case(
        "dashboard-sqlite-missing",
        ["dashboard", "demo", "--storage", "sqlite:///x/s.db"],
        "storage sqlite:///x/s.db: x/s.db does not exist (a study is read from an existing",
    ),
    case(
        "dashboard-sqlite-a-directory",
        ["dashboard", "demo", "--storage", "sqlite:///d"],
        "d is a folder",
        {"d": DIR},
    ),
    case(
        "dashboard-journal-missing",
        ["dashboard", "demo", "--storage", "journal:j/s.log"],
        "j/s.log does not exist",
    ),
    case(
        "dashboard-log-path-missing",
        ["dashboard", "demo", "--storage", "j/s.log"],
        "j/s.log does not exist",
    ),
    case(
        "dashboard-storage-not-a-url",
        ["dashboard", "demo", "--storage", "somewhere"],
        "is not a database URL",
    ),
    case(
        "dashboard-not-a-database",
        ["dashboard", "demo", "--storage", "sqlite:///t.db"],
        "is damaged",
        {"t.db": "not a database\n"},
    ),
    case(
        "dashboard-png-under-a-file",
        [*DASHBOARD, "--png", "f/p.png"],
        "--png f/p.png: f is a file",
        {"f": "x"},
    ),
    case(
        "dashboard-json-under-a-file",
        [*DASHBOARD, "--json", "f/p.json"],
        "--json f/p.json",
        {"f": "x"},
    ),
    case("dashboard-unknown-flag", [*DASHBOARD, "--live"], "unrecognized arguments: --live"),
    case(
        "dashboard-markup-in-storage",
        ["dashboard", "demo", "--storage", "journal:[/b].log"],
        "[/b].log does not exist",
    ),
]

EXPORT = ["export", "demo", "--storage", "{db}"]
EXPORT_CASES = [
    case("export-trial-negative", [*EXPORT, "--trial", "-1", "--out", "o"], "must be >= 0"),
    case(
        "export-trial-word", [*EXPORT, "--trial", "best", "--out", "o"], "expected a trial number"
    ),
    case(
        "export-neither-trial-nor-pick",
        [*EXPORT, "--out", "o"],
        "one of the arguments --trial --pick is required",
    ),
    case(
        "export-trial-and-pick",
        [*EXPORT, "--trial", "1", "--pick", "knee", "--out", "o"],
        "not allowed with argument",
    ),
    case(
        "export-no-out", [*EXPORT, "--trial", "1"], "the following arguments are required: --out"
    ),
    case(
        "export-format-unknown",
        [*EXPORT, "--trial", "1", "--out", "o", "--format", "onnx"],
        "argument --format: invalid choice",
    ),
    case("export-trial-not-in-study", [*EXPORT, "--trial", "999", "--out", "o"], "999"),
    case(
        "export-pick-bad",
        [*EXPORT, "--pick", "worst", "--out", "o", "--gpu-type", "NVIDIA H200"],
        "worst",
    ),
    case("export-pick-without-gpu-type", [*EXPORT, "--pick", "knee", "--out", "o"], "--gpu-type"),
    case(
        "export-unknown-study",
        ["export", "nope", "--storage", "{db}", "--trial", "1", "--out", "o"],
        "no study 'nope'",
    ),
    case(
        "export-journal-missing",
        ["export", "demo", "--storage", "j/s.log", "--trial", "1", "--out", "o"],
        "j/s.log does not exist",
    ),
    case(
        "export-sqlite-missing",
        ["export", "demo", "--storage", "sqlite:///s.db", "--trial", "1", "--out", "o"],
        "s.db does not exist",
    ),
    case(
        "export-default-storage-missing",
        ["export", "demo", "--trial", "1", "--out", "o"],
        "does not exist",
    ),
    case(
        "export-out-under-a-file",
        [*EXPORT, "--trial", "1", "--out", "f/o"],
        "f",
        {"f": "x"},
    ),
    case(
        "export-weights-missing",
        [*EXPORT, "--trial", "1", "--out", "o", "--weights", "ck.pt"],
        "checkpoint ck.pt: no such file",
    ),
    case(
        "export-weights-not-a-checkpoint",
        [*EXPORT, "--trial", "1", "--out", "o", "--weights", "ck.pt"],
        "checkpoint ck.pt: unreadable",
        {"ck.pt": "not a checkpoint"},
    ),
    case(
        "export-weights-folder",
        [*EXPORT, "--trial", "1", "--out", "o", "--weights", "ck"],
        "--weights ck: not a file",
        {"ck": DIR},
    ),
    case(
        "export-weights-fifo",
        [*EXPORT, "--trial", "1", "--out", "o", "--weights", "ck"],
        "--weights ck: not a file",
        {"ck": FIFO},
    ),
]

CONFIRM = ["confirm", "demo", "--storage", "{db}"]
CONFIRM_CASES = [
    case("confirm-top-zero", [*CONFIRM, "--top", "0"], "argument --top: must be >= 1"),
    case("confirm-seeds-one", [*CONFIRM, "--seeds", "1"], "argument --seeds: must be >= 2"),
    case("confirm-seeds-word", [*CONFIRM, "--seeds", "three"], "expected a number of seeds"),
    case("confirm-workers-zero", [*CONFIRM, "--workers", "0"], "argument --workers"),
    case("confirm-device-unknown", [*CONFIRM, "--device", "tpu"], "argument --device"),
    case("confirm-unknown-study", ["confirm", "nope", "--storage", "{db}"], "no study 'nope'"),
    case("confirm-no-space-stored", CONFIRM, "holds no search space"),
    case(
        "confirm-journal-missing",
        ["confirm", "demo", "--storage", "journal:s.journal"],
        "s.journal does not exist",
    ),
    case("confirm-default-storage-missing", ["confirm", "demo"], "does not exist"),
    case("confirm-unknown-flag", [*CONFIRM, "--fresh"], "unrecognized arguments: --fresh"),
]

ALL = SPACE_CASES + SEARCH_CASES + BENCH_CASES + VARIANTS_CASES + DASHBOARD_CASES
ALL += EXPORT_CASES + CONFIRM_CASES


@pytest.fixture(scope="module")
def study_db(tmp_path_factory) -> str:
    """A synthetic study 'demo' outside every case's working directory."""
    url = f"sqlite:///{tmp_path_factory.mktemp('study') / 'study.db'}"
    make_study(url, name="demo", n=8)
    return url


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    """A fresh, empty working directory."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def refused(argv: list[str], capfd) -> str:
    """Run the command line in-process; it must exit with 2 and one line on stderr, which
    is returned."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, err
    assert code == 2, (code, out[-2000:], err[-2000:])
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def make_files(root: Path, files: dict[str, Any]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is DIR:
            path.mkdir()
        elif content is FIFO:
            os.mkfifo(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


@pytest.mark.parametrize("argv, files, message", ALL)
def test_malformed_input_is_one_line_exit_2_and_writes_nothing(
    argv, files, message, cwd, study_db, capfd
):
    make_files(cwd, files)
    before = listing(cwd)
    line = refused([a.replace("{db}", study_db) for a in argv], capfd)
    assert message in line, line
    assert listing(cwd) == before


def test_the_corpus_holds_over_a_hundred_cases_grouped_by_command():
    commands = {p.values[0][0] if p.values[0] else "" for p in ALL}
    assert len(ALL) >= 100 and len({p.id for p in ALL}) == len(ALL)
    assert {"space", "search", "bench", "variants", "dashboard", "export", "confirm"} <= commands


# ---------------------------------------------------------------- the loader's limits


def test_anchors_aliases_and_merge_keys_within_the_limits_load(cwd, capsys):
    """Refusing duplicate keys leaves merge keys alone: a key given after `<<` overrides."""
    (cwd / "s.yaml").write_text(
        "model: {<<: {d_model: 16, n_layers: 2}, d_model: 32, n_heads: 4, ffn_dim: 64, "
        "seq_len: 32}\n"
        "search: {n_q_heads: &heads [H, H/2], n_kv_heads: *heads}\n"
        + space({"model": DROP, "search": DROP})
    )
    assert main(["space", "s.yaml", "--json"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["d_model"] == 32
    assert resolved["search"]["n_kv_heads"] == resolved["search"]["n_q_heads"] == ["H", "H/2"]


def test_a_space_at_the_nesting_limit_loads(cwd):
    from sqa_nas.search.yamlfile import MAX_DEPTH, read_yaml

    (cwd / "ok.yaml").write_text("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    (cwd / "deep.yaml").write_text("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    value = read_yaml(cwd / "ok.yaml")
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == []
    with pytest.raises(UserError, match="nesting deeper than"):
        read_yaml(cwd / "deep.yaml")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_space_is_one_line(cwd, capfd):
    (cwd / "s.yaml").write_text(space())
    (cwd / "s.yaml").chmod(0)
    assert "Permission denied" in refused(["space", "s.yaml"], capfd)


def test_a_space_that_cannot_be_opened_is_one_line(cwd, capfd, monkeypatch):
    """As above, for root too: the open itself is refused."""
    (cwd / "s.yaml").write_text(space())

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)
    line = refused(["space", "s.yaml"], capfd)
    assert line == "error: cannot read search space s.yaml: Permission denied"


# ---------------------------------------------------------- user text printed verbatim


@pytest.mark.parametrize("name", ["[/b]x.yaml", "[red].yaml", ":smile:.yaml"])
def test_a_path_with_markup_prints_as_itself(name, cwd, capsys):
    (cwd / "[").mkdir()
    (cwd / name).write_text(space())
    assert main(["space", name]) == 0
    assert capsys.readouterr().out.startswith(f"{name} is valid: study corpus")
    assert main(["space", f"missing-{name}"]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot read search space missing-{name}: No such file or directory\n"
    )


def test_an_escape_sequence_in_a_path_reaches_the_terminal_as_text(cwd, capsys):
    name = "e\x1b[2J\x1b]0;title\x07.yaml"
    (cwd / name).write_text(space())
    assert main(["space", name]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert out.startswith(f"{printable(name)} is valid")
    assert printable(name).startswith("e") and printable(name).endswith(".yaml")
    missing = "a\nb\x1b[31m.yaml"
    assert main(["space", missing]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot read search space {printable(missing)}: No such file or directory\n"
    )


def test_control_characters_are_made_visible_on_one_line():
    for control in "\x1b\x07\n\r\t\u202e\x9b\x7f":
        head, tail = "a [b]", "[2J c"
        seen = printable(head + control + tail)
        assert seen.isprintable() and seen.startswith(head) and seen.endswith(tail)
        assert len(seen) > len(head + tail)  # the control is shown, not dropped
    assert printable("plain [/b] :smile: é") == "plain [/b] :smile: é"


def test_an_argument_error_is_one_line_with_control_characters_visible(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["variants", "--n-heads", "4", "\x1b[2J"])
    assert exc.value.code == 2
    clear = printable("\x1b[2J")
    assert capsys.readouterr().err == (
        f"sqa-nas: error: unrecognized arguments: {clear} (see sqa-nas --help)\n"
    )


@pytest.mark.parametrize(
    "message", ["[/b] closes nothing", "[red]not red[/red]", "two\nlines", "bell \x07 :smile:"]
)
def test_guarded_prints_any_error_verbatim_on_one_line(message, capsys):
    def fail():
        raise UserError(message)

    assert guarded(fail) == 2
    assert capsys.readouterr().err == f"error: {printable(message)}\n"


@pytest.mark.parametrize(
    "text", ["[/b]x", "a\\[b]", "[bold]", "\x1b[1m", "x\\", "x\\\\", "\\[red]\\", "a[\\"]
)
def test_shown_text_renders_as_the_visible_text_in_any_context(text):
    # (markup before, markup after) and what they render as
    for before, after, plain_before, plain_after in [
        ("", "", "", ""),
        ("[bold]", "[/bold] on", "", " on"),
        ("x ", " [i]y[/i]", "x ", " y"),
    ]:
        rendered = Text.from_markup(f"{before}{shown(text)}{after}").plain
        assert rendered == plain_before + printable(text) + plain_after


def test_the_search_header_prints_paths_verbatim(cwd, capsys, monkeypatch):
    (cwd / "[").mkdir()
    (cwd / "[/b]x.yaml").write_text(space())

    class Stop:
        url = "sqlite:///[/b]/study.db"

        def __init__(self, *args, **kwargs):
            pass

        def run(self, *args):
            raise UserError("stopped after the header")

    monkeypatch.setattr(search_cli, "Driver", Stop)
    monkeypatch.setattr(search_cli, "make_executor", lambda spec: None)
    assert main(["search", "[/b]x.yaml"]) == 2
    out = " ".join(capsys.readouterr().out.split())  # a line may wrap at 120 columns
    assert "sqa-nas search [/b]x.yaml: study corpus" in out
    assert "storage sqlite:///[/b]/study.db" in out


def test_export_prints_an_output_folder_with_markup_verbatim(cwd, study_db, capsys):
    (cwd / "[").mkdir()
    assert main(["export", "demo", "--storage", study_db, "--trial", "1", "--out", "[/b]o"]) == 0
    assert "[/b]o/" in capsys.readouterr().out


# ------------------------------------------------------------- checked before the work


def test_bench_output_paths_are_checked_before_any_row_runs(cwd, capfd, monkeypatch):
    def run_grid(*args, **kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(bench_cli, "run_grid", run_grid)
    (cwd / "f").write_text("x")
    for flag in ("--json", "--png", "--calibration-out"):
        line = refused([*BENCH, flag, "f/out/r"], capfd)
        assert line.endswith(f"argument {flag}: f/out/r: f is a file, not a folder")
    assert listing(cwd) == ["f"]


@pytest.mark.parametrize(
    "command",
    [
        ["dashboard", "demo", "--once"],
        ["export", "demo", "--trial", "0", "--out", "o"],
        ["confirm", "demo"],
    ],
)
@pytest.mark.parametrize(
    "storage", ["journal:runs/j/s.log", "runs/j/s.journal", "sqlite:///runs/s.db"]
)
def test_reading_a_study_from_a_storage_that_does_not_exist_creates_nothing(
    command, storage, cwd, capfd
):
    line = refused([*command, "--storage", storage], capfd)
    assert "does not exist" in line
    assert listing(cwd) == []


def test_bad_data_is_refused_before_the_study_storage_and_lock_exist(cwd, capfd):
    (cwd / "s.yaml").write_text(space({"data": {"kind": "text", "paths": ["missing.txt"]}}))
    assert "no such file 'missing.txt'" in refused(["search", "s.yaml"], capfd)
    assert listing(cwd) == ["s.yaml"]  # no runs/, no study.db, no lock file


@pytest.mark.parametrize("text", ["", "too short"])
def test_a_corpus_shorter_than_a_window_is_refused_before_the_study(text, cwd, capfd):
    (cwd / "s.yaml").write_text(space({"data": {"kind": "text", "paths": ["c.txt"]}}))
    (cwd / "c.txt").write_text(text)
    load_dataset({"kind": "text", "paths": ["c.txt"]})  # cached now: its build prints a line
    capfd.readouterr()
    line = refused(["search", "s.yaml"], capfd)
    assert re.search(
        r"split of this text dataset holds \d tokens; seq_len=32 needs at least 33", line
    )
    assert listing(cwd) == ["c.txt", "s.yaml"]


# ----------------------------------------------------------- dashboard outputs in a folder


def test_dashboard_png_and_json_into_a_folder_write_study_named_files(cwd, study_db, capsys):
    (cwd / "figs").mkdir()
    assert main(["dashboard", "demo", "--storage", study_db, "--png", "figs"]) == 0
    assert main(["dashboard", "demo", "--storage", study_db, "--json", "figs"]) == 0
    assert listing(cwd) == ["figs", "figs/demo.json", "figs/demo.png"]
    assert (cwd / "figs/demo.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote figs/demo.png" in capsys.readouterr().err


def test_variants_prints_plugin_text_verbatim(capsys, monkeypatch):
    plugin = Variant("[/b]Odd", "H", "H/2", "a plugin's [red]description[/red] :smile:")
    monkeypatch.setattr(variants_cli, "list_variants", lambda: [plugin])
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    assert "[/b]Odd" in out and "[red]description[/red] :smile:" in out
