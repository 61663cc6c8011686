"""The ``hf`` kind: a Hugging Face dataset, tokenized once into the token cache.

Needs the ``hf`` extra (``datasets``, ``tokenizers``) only to build: a cache that is already
there loads without them. Documents are encoded without the tokenizer's special tokens and
joined, within a split, by ``eos_token`` when it is given. With ``val_split: null``, document
i of ``train_split`` goes to validation by the same hash rule as files (`corpus.in_val` on
``"<train_split>/<i>"``). Fingerprint: `cache.Fingerprint` with one piece per document, named
``<split name>/<index>``, over its token bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqa_nas.data.cache import CorpusWriter, Split, cache_key, cached_corpus, progress
from sqa_nas.data.corpus import in_val
from sqa_nas.data.spec import HFSpec
from sqa_nas.data.stream import TokenStream
from sqa_nas.errors import UserError

_ENCODE_BATCH = 1000  # documents per tokenizer call (`encode_batch` runs them in parallel)


def load_hf(spec: HFSpec, root: Path) -> TokenStream:
    """The tokenized dataset, built into ``root/corpus`` on first use."""

    def build(directory: Path) -> None:
        try:
            import datasets
            import tokenizers
        except ImportError as exc:
            raise UserError(
                f"data kind 'hf' needs the Hugging Face packages ({exc.name} is "
                "missing): pip install 'sqa-nas[hf]'"
            ) from None
        if Path(spec.tokenizer).expanduser().is_file():
            tokenizer = tokenizers.Tokenizer.from_file(str(Path(spec.tokenizer).expanduser()))
        else:
            tokenizer = tokenizers.Tokenizer.from_pretrained(spec.tokenizer)
        vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        eos = None
        if spec.eos_token is not None:
            eos = tokenizer.token_to_id(spec.eos_token)
            if eos is None:
                raise UserError(
                    f"hf data: tokenizer {spec.tokenizer!r} has no token "
                    f"{spec.eos_token!r} (eos_token)"
                )
        splits: dict[Split, Any] = {"train": _split(datasets, spec, spec.train_split)}
        if spec.val_split is not None:
            splits["val"] = _split(datasets, spec, spec.val_split)
        meta = {"kind": "hf", "vocab_size": vocab_size, "spec": spec.model_dump()}
        total = sum(len(s) for s in splits.values())
        dtype = "uint16" if vocab_size <= 2**16 else "uint32"
        with (
            CorpusWriter(directory, dtype=dtype, separator=eos) as writer,
            progress(f"tokenizing {spec.name}", total, unit="documents") as advance,
        ):
            for split, names, texts in _batches(spec, splits):
                encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
                for name, encoding in zip(names, encodings):
                    writer.add(split, name, encoding.ids)
                advance(len(texts))
        writer.finish(meta)

    return cached_corpus(root / "corpus" / f"hf-{cache_key(spec.model_dump())}", build)


def _split(datasets: Any, spec: HFSpec, split: str) -> Any:
    """One split of the dataset, cut to ``max_documents``, checked for ``text_field``."""
    try:
        data = datasets.load_dataset(spec.name, spec.config, split=split, revision=spec.revision)
    except ValueError as exc:  # datasets' "Unknown split" names the available ones
        raise UserError(
            f"hf data {spec.name!r}: {exc} (val_split: null carves the "
            "validation documents out of train_split)"
        ) from None
    if spec.text_field not in data.column_names:
        raise UserError(
            f"hf data {spec.name!r} split {split!r} has no column "
            f"{spec.text_field!r} (text_field); columns: {data.column_names}"
        )
    if spec.max_documents is not None and len(data) > spec.max_documents:
        data = data.select(range(spec.max_documents))
    return data


def _batches(
    spec: HFSpec, splits: dict[Split, Any]
) -> Iterator[tuple[Split, list[str], list[str]]]:
    """(split, document names, texts) in batches of `_ENCODE_BATCH` documents, in order."""
    for split, data in splits.items():
        source = spec.train_split if split == "train" else spec.val_split
        for start in range(0, len(data), _ENCODE_BATCH):
            texts = data[start : start + _ENCODE_BATCH][spec.text_field]
            names = [f"{source}/{start + i}" for i in range(len(texts))]
            if split == "train" and spec.val_split is None:
                for dest in ("train", "val"):
                    keep = [
                        i
                        for i, n in enumerate(names)
                        if (dest == "val") == in_val(n, spec.val_fraction)
                    ]
                    yield dest, [names[i] for i in keep], [texts[i] for i in keep]
            else:
                yield split, names, texts
