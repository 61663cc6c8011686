"""The data package: splits, fingerprints, caches, batches, MQAR, and the spec's errors.

The embedded corpus is built from the real standard library (~30 MB, about a second), once
per session; every other test builds its own small data under ``tmp_path``.
"""

from __future__ import annotations

import doctest
import itertools
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import sqa_nas.data
from sqa_nas.data import (
    IGNORE_INDEX,
    DataSpec,
    MQARSpec,
    TextSpec,
    accuracy_counts,
    load_dataset,
)
from sqa_nas.data.corpus import MAX_FILE_BYTES, SEPARATOR, load_files, python_files
from sqa_nas.data.split import in_val, plan_split
from sqa_nas.errors import UserError


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def embedded(cache):
    return load_dataset({"kind": "embedded"}, cache_dir=cache)


def _bytes(tensor: torch.Tensor) -> bytes:
    return bytes(tensor.tolist())


# --- embedded corpus -------------------------------------------------------------------------


def test_embedded_fingerprint_is_deterministic_and_cached(embedded, cache, tmp_path):
    again = load_dataset(DataSpec(kind="embedded"), cache_dir=cache)
    assert again.meta["cache_dir"] == embedded.meta["cache_dir"]
    rebuilt = load_dataset({"kind": "embedded"}, cache_dir=tmp_path)  # a fresh build
    assert rebuilt.meta["cache_dir"] != embedded.meta["cache_dir"]
    assert rebuilt.fingerprint == embedded.fingerprint == embedded.meta["fingerprint"]
    assert rebuilt.meta["tokens"] == embedded.meta["tokens"]
    assert len(embedded.fingerprint) == 64
    other_split = load_dataset({"kind": "embedded", "val_fraction": 0.1}, cache_dir=tmp_path)
    assert other_split.fingerprint != embedded.fingerprint


def test_embedded_is_split_by_file(embedded):
    meta = embedded.meta
    assert meta["vocab_size"] == embedded.vocab_size == 256
    assert {"stdlib"} == set(meta["sources"])
    skipped = meta["skipped"]["not_utf8"] + meta["skipped"]["over_2MiB"]
    files = [
        f
        for f in python_files({"stdlib": Path(meta["sources"]["stdlib"])})
        if f.name not in skipped
    ]
    assert any(f.name == "stdlib/pydoc_data/topics.py" for f in files)
    # The stdlib is many small files: the split by name lands within a point of 5% (4.6% of
    # the bytes on CPython 3.11.7), so it is the one made, and no file is cut.
    assert meta["split"] == "by_file" and abs(meta["val_fraction_actual"] - 0.05) <= 0.01
    where = plan_split({f.name: f.size for f in files}, 0.05).where
    assert all(where[f.name] == ("val" if in_val(f.name, 0.05) else "train") for f in files)
    val = [f for f in files if where[f.name] == "val"]
    train = [f for f in files if where[f.name] == "train"]
    assert meta["documents"] == {"train": len(train), "val": len(val)}
    assert 0.02 < len(val) / len(files) < 0.1
    # The validation stream is exactly the validation files joined by 0xFF: no train file in it.
    expected = bytes([SEPARATOR]).join(f.path.read_bytes() for f in val)
    assert np.array_equal(embedded.val, np.frombuffer(expected, np.uint8))
    assert len(embedded.train) == sum(f.size for f in train) + len(train) - 1


def test_split_depends_only_on_relative_name():
    assert in_val("stdlib/json/decoder.py", 0.05) == in_val("stdlib/json/decoder.py", 0.05)
    names = [f"stdlib/m{i}.py" for i in range(2000)]
    share = sum(in_val(n, 0.05) for n in names) / len(names)
    assert 0.03 < share < 0.07


def test_embedded_skips_non_utf8_huge_and_generated_files(tmp_path):
    src = tmp_path / "src"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "a.py").write_text("print('a')\n")
    (src / "pkg" / "b.py").write_text("print('b')\n")
    (src / "pkg" / "__pycache__" / "c.py").write_text("cached\n")
    (src / "_sysconfigdata_x.py").write_text("build_time_vars = {}\n")
    (src / "latin1.py").write_bytes("# caf\xe9\n".encode("latin-1"))
    (src / "huge.py").write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    files = python_files({"root": src})
    assert [f.name for f in files] == [
        "root/a.py",
        "root/huge.py",
        "root/latin1.py",
        "root/pkg/b.py",
    ]
    ds = load_files(
        files, val_fraction=0.05, root=tmp_path / "cache", meta={"kind": "embedded"}, strict=False
    )
    assert ds.meta["skipped"] == {"not_utf8": ["root/latin1.py"], "over_2MiB": ["root/huge.py"]}
    # Two files of 11 bytes left: 22 - int(22 * 0.95) = 2 bytes validate, the tail of one.
    assert ds.meta["split"] == "fill" and ds.meta["documents"] == {"train": 2, "val": 1}
    assert bytes(ds.val) == b")\n"
    assert sorted(bytes(ds.train).split(b"\xff")) == [b"print('a')\n", b"print('b'"]


# --- batches ---------------------------------------------------------------------------------


def test_train_batches_are_shifted_windows_and_seeded(embedded):
    x, y = next(embedded.train_batches(4, 64, seed=3))
    assert x.shape == y.shape == (4, 64)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.max()) < 256 and int(x.min()) >= 0
    stream = bytes(embedded.train)
    assert all(_bytes(torch.cat([x[i], y[i, -1:]])) in stream for i in range(4))
    same = next(embedded.train_batches(4, 64, seed=3))
    other = next(embedded.train_batches(4, 64, seed=4))
    assert torch.equal(same[0], x) and not torch.equal(other[0], x)


def test_val_batches_are_identical_across_calls(embedded, cache):
    first = embedded.val_batches(3, 32, n_batches=5)
    second = load_dataset({"kind": "embedded"}, cache_dir=cache).val_batches(3, 32, 5)
    assert len(first) == 5
    for (x1, y1), (x2, y2) in zip(first, second):
        assert x1.shape == (3, 32)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.equal(x1[:, 1:], y1[:, :-1])
    # Evenly spaced: the first window starts the split, the last one ends it.
    assert _bytes(first[0][0][0]) == bytes(embedded.val[:32])
    assert _bytes(first[-1][1][-1]) == bytes(embedded.val[-32:])


MQAR_NOISY = {"kind": "mqar", "vocab_size": 64, "num_kv_pairs": 4}
MQAR_QUIET = {**MQAR_NOISY, "random_non_queries": False}


@pytest.mark.parametrize("kind", ["embedded", "mqar", "mqar-quiet"])
def test_train_batches_from_start_k_are_batches_k_on(kind, embedded, monkeypatch):
    # What a resumed run relies on: start=k continues the sequence of start=0 at batch k
    # (seq_len 37: odd, so MQAR's query region ends in a slot no query can take).
    mqar = MQAR_NOISY if kind == "mqar" else MQAR_QUIET
    ds = embedded if kind == "embedded" else load_dataset(mqar)
    whole = list(itertools.islice(ds.train_batches(3, 37, seed=5), 9))
    for k in (1, 4, 7):
        later = list(itertools.islice(ds.train_batches(3, 37, seed=5, start=k), 9 - k))
        assert all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            for a, b in zip(later, whole[k:], strict=True)
        )
    # The skipped batches are drawn, not built: one tensor pair made per batch served.
    module = sys.modules[type(ds).__module__]
    made = []
    real = module.to_device
    monkeypatch.setattr(module, "to_device", lambda a, d: made.append(a.shape) or real(a, d))
    next(ds.train_batches(3, 37, seed=5, start=50))
    assert len(made) == (1 if kind == "embedded" else 2)  # (B, N + 1) windows, or x and y


# --- text ------------------------------------------------------------------------------------


def test_text_single_file_keeps_its_tail_for_validation(tmp_path):
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(40))
    (tmp_path / "book.txt").write_text(text)
    spec = TextSpec(paths=[str(tmp_path / "book.txt")], val_fraction=0.25)
    ds = load_dataset(spec, cache_dir=tmp_path / "cache")
    cut = int(len(text) * 0.75)
    assert bytes(ds.train) == text[:cut].encode() and bytes(ds.val) == text[cut:].encode()
    assert ds.meta["kind"] == "text" and ds.meta["documents"] == {"train": 1, "val": 1}
    assert ds.meta["split"] == "fill" and ds.meta["val_fraction_actual"] == 0.2504
    assert ds.meta["fingerprint"] == ds.fingerprint and ds.meta["vocab_size"] == 256
    x, y = ds.val_batches(2, 16, 1)[0]
    assert _bytes(x[0]) == text[cut : cut + 16].encode()
    with pytest.raises(UserError, match=r"validation split .* seq_len=400"):
        ds.val_batches(1, 400, 1)


def test_text_glob_splits_by_file_relative_to_common_parent(tmp_path):
    corpus = tmp_path / "a" / "notes"
    (corpus / "sub").mkdir(parents=True)
    for i in range(12):
        (corpus / ("sub" if i % 2 else "") / f"n{i}.md").write_text(f"note {i}\n" * 20)
    ds = load_dataset(
        {"kind": "text", "paths": [f"{corpus}/**/*.md"]}, cache_dir=tmp_path / "cache"
    )
    # 12 equal files cannot make 5% by file: one is cut, so 13 pieces
    assert ds.meta["documents"] == {"train": 12, "val": 1} and ds.meta["split"] == "fill"
    moved = tmp_path / "b" / "elsewhere"
    shutil.copytree(corpus, moved)
    again = load_dataset(
        {"kind": "text", "paths": [f"{moved}/**/*.md"]}, cache_dir=tmp_path / "cache"
    )
    assert again.meta["cache_dir"] != ds.meta["cache_dir"]
    assert again.fingerprint == ds.fingerprint


def test_text_errors_name_the_culprit(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe binary")
    (tmp_path / "ok.txt").write_text("fine\n")
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="no such file 'missing.txt'"):
        load_dataset({"kind": "text", "paths": ["missing.txt"]}, cache_dir=cache)
    with pytest.raises(UserError, match=r"'\*\.csv' matches no file"):
        load_dataset({"kind": "text", "paths": ["*.csv"]}, cache_dir=cache)
    with pytest.raises(UserError, match="bin.txt is not UTF-8"):
        load_dataset({"kind": "text", "paths": [str(tmp_path / "*.txt")]}, cache_dir=cache)
    assert not list(cache.glob("corpus/*")), "a failed build leaves nothing behind"


# --- tokens ----------------------------------------------------------------------------------


def _token_dir(path, suffix, train, val, meta=None):
    path.mkdir()
    for split, tokens in (("train", train), ("val", val)):
        if suffix == ".bin":
            tokens.tofile(path / "train.bin" if split == "train" else path / "val.bin")
        else:
            np.save(path / f"{split}.npy", tokens)
    if meta is not None:
        (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_tokens_bin_and_npy(tmp_path):
    train = (np.arange(5000) % 1000).astype(np.uint16)
    val = (np.arange(700) * 7 % 1000).astype(np.uint16)
    as_bin = _token_dir(tmp_path / "bin", ".bin", train, val, meta={"vocab_size": 1000})
    ds = load_dataset({"kind": "tokens", "path": str(as_bin)}, cache_dir=tmp_path / "c")
    assert ds.vocab_size == 1000 and ds.meta["tokens"] == {"train": 5000, "val": 700}
    assert ds.meta["kind"] == "tokens" and ds.meta["fingerprint"] == ds.fingerprint
    x, y = next(ds.train_batches(8, 50, seed=1))
    assert x.shape == (8, 50) and x.dtype == torch.int64
    assert torch.equal(y, (x + 1) % 1000)  # y is x shifted in this stream
    vx, vy = ds.val_batches(2, 10, 1)[0]
    assert torch.equal(vy, (vx + 7) % 1000)

    as_npy = _token_dir(tmp_path / "npy", ".npy", train, val)
    same = load_dataset(
        {"kind": "tokens", "path": str(as_npy), "vocab_size": 1000}, cache_dir=tmp_path / "c"
    )
    assert same.fingerprint == ds.fingerprint  # same tokens, same dtype
    assert torch.equal(same.val_batches(2, 10, 1)[0][0], vx)
    wider = _token_dir(tmp_path / "u32", ".bin", train.astype(np.uint32), val.astype(np.uint32))
    other = load_dataset(
        {"kind": "tokens", "path": str(wider), "dtype": "uint32", "vocab_size": 1000},
        cache_dir=tmp_path / "c",
    )
    assert torch.equal(other.val_batches(2, 10, 1)[0][0], vx)


def test_tokens_errors(tmp_path):
    tokens = np.arange(101, dtype=np.uint16)  # 202 bytes: not a whole number of uint32
    cache = tmp_path / "cache"
    bad = _token_dir(tmp_path / "bad", ".bin", tokens, tokens)
    with pytest.raises(UserError, match=r"token ids 0 \.\. 100; with vocab_size 50"):
        load_dataset({"kind": "tokens", "path": str(bad), "vocab_size": 50}, cache_dir=cache)
    (bad / "meta.pkl").write_bytes(b"not read")
    with pytest.raises(UserError, match="meta.pkl is not read"):
        load_dataset({"kind": "tokens", "path": str(bad)}, cache_dir=cache)
    with pytest.raises(UserError, match="not a whole number of uint32 tokens"):
        load_dataset(
            {"kind": "tokens", "path": str(bad), "dtype": "uint32", "vocab_size": 101},
            cache_dir=cache,
        )
    with pytest.raises(UserError, match="expected train.bin and val.bin"):
        load_dataset({"kind": "tokens", "path": str(tmp_path)}, cache_dir=cache)


# --- mqar ------------------------------------------------------------------------------------


def test_mqar_targets_are_the_values_of_the_queried_keys():
    spec = MQARSpec(vocab_size=128, num_kv_pairs=6, seed=5)
    ds = load_dataset(spec)
    x, y = next(ds.train_batches(16, 64, seed=0))
    assert x.shape == y.shape == (16, 64) and y.dtype == torch.int64
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        pairs = dict(zip(row_x[0:12:2], row_x[1:12:2]))  # the kv region, decoded
        assert len(pairs) == 6
        assert all(1 <= k < 64 <= v < 128 for k, v in pairs.items())
        queried = [i for i, t in enumerate(row_y) if t != IGNORE_INDEX]
        assert len(queried) == 6 and min(queried) >= 12
        assert sorted(row_x[i] for i in queried) == sorted(pairs)  # each key asked once
        assert all(row_y[i] == pairs[row_x[i]] for i in queried)


def test_mqar_is_deterministic_per_seed_with_a_fixed_validation_set():
    ds = load_dataset({"kind": "mqar", "vocab_size": 64, "num_kv_pairs": 4})
    first = next(ds.train_batches(4, 32, seed=1))
    assert torch.equal(next(ds.train_batches(4, 32, seed=1))[0], first[0])
    assert not torch.equal(next(ds.train_batches(4, 32, seed=2))[0], first[0])
    val = ds.val_batches(4, 32, 3)
    again = load_dataset({"kind": "mqar", "vocab_size": 64, "num_kv_pairs": 4})
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(val, again.val_batches(4, 32, 3))
    )
    assert not any(torch.equal(v[0], first[0]) for v in val)
    assert ds.fingerprint == again.fingerprint
    assert (
        ds.fingerprint
        != load_dataset(
            {"kind": "mqar", "vocab_size": 64, "num_kv_pairs": 4, "seed": 1}
        ).fingerprint
    )


def test_mqar_loss_and_accuracy_count_query_positions_only():
    ds = load_dataset(
        {"kind": "mqar", "vocab_size": 32, "num_kv_pairs": 3, "random_non_queries": False}
    )
    x, y = ds.val_batches(5, 24, 1)[0]
    assert (x[:, 6:][y[:, 6:] == IGNORE_INDEX] == 0).all()  # filler is 0 without noise
    perfect = F.one_hot(y.clamp(min=0), 32).float() * 20
    assert accuracy_counts(perfect, y) == (15, 15)
    assert F.cross_entropy(perfect.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX) < 1e-3
    wrong = perfect.roll(1, dims=-1)
    assert accuracy_counts(wrong, y) == (0, 15)


def test_mqar_spec_checks_sizes():
    with pytest.raises(ValidationError, match="num_kv_pairs=40 needs at least 40"):
        MQARSpec(vocab_size=64, num_kv_pairs=40)
    with pytest.raises(ValidationError, match="needs 4 \\* num_kv_pairs = 32"):
        MQARSpec(num_kv_pairs=8, seq_len=16)
    ds = load_dataset({"kind": "mqar", "num_kv_pairs": 8, "seq_len": 64})
    with pytest.raises(UserError, match="pinned to seq_len=64"):
        next(ds.train_batches(2, 128))


# --- spec ------------------------------------------------------------------------------------


def test_unknown_keys_and_kinds_are_named():
    with pytest.raises(ValidationError, match="pathz"):
        DataSpec(kind="text", paths=["a.txt"], pathz=1)
    with pytest.raises(UserError, match=r"data: mqar\.num_kv: Extra inputs"):
        load_dataset({"kind": "mqar", "num_kv": 3})
    with pytest.raises(UserError, match="'parquet'.*'embedded', 'text', 'tokens', 'hf', 'mqar'"):
        load_dataset({"kind": "parquet"})


def test_docstring_example_runs():
    assert doctest.testmod(sqa_nas.data).failed == 0


# --- hf --------------------------------------------------------------------------------------


def test_hf_without_the_packages_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import now fails, installed or not
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(UserError, match=r"pip install 'sqa-nas\[hf\]'"):
        load_dataset(
            {"kind": "hf", "name": "roneneldan/TinyStories", "tokenizer": "gpt2"},
            cache_dir=tmp_path,
        )


def test_hf_tokenizes_once_into_the_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    tokenizers = pytest.importorskip("tokenizers")
    words = ["<eos>", "the", "cat", "sat", "on", "mat", "a", "dog"]
    tokenizer = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<eos>")
    )
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    docs = [" ".join(words[1 + (i + j) % 7] for j in range(3 + i % 5)) for i in range(200)]
    loads = []

    def fake_load_dataset(name, config, *, split, revision):
        loads.append(split)
        return datasets.Dataset.from_dict({"text": docs})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = {
        "kind": "hf",
        "name": "tiny",
        "tokenizer": str(tmp_path / "tokenizer.json"),
        "val_split": None,
        "val_fraction": 0.2,
        "eos_token": "<eos>",
    }
    ds = load_dataset(spec, cache_dir=tmp_path / "cache")
    assert ds.vocab_size == 8 and ds.meta["dtype"] == "uint16"
    assert ds.meta["documents"]["val"] > 10 and sum(ds.meta["documents"].values()) == 201
    # 200 short documents: by name misses 20% of the tokens by more than a point, so whole
    # documents in hash order fill validation and one is cut (`split.plan_split`)
    plan = plan_split({f"train/{i}": len(d.split()) for i, d in enumerate(docs)}, 0.2)
    assert ds.meta["split"] == plan.rule == "fill"
    assert abs(ds.meta["val_fraction_actual"] - 0.2) <= 0.01
    val_parts = []
    for i, doc in enumerate(docs):
        where = plan.where[f"train/{i}"]
        if where != "train":
            val_parts.append(doc if where == "val" else " ".join(doc.split()[where:]))
    decoded = " ".join(words[t] for t in ds.val.tolist())
    assert decoded == " <eos> ".join(val_parts)
    again = load_dataset(spec, cache_dir=tmp_path / "cache")
    assert loads == ["train"] and again.fingerprint == ds.fingerprint
