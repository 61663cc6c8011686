"""The ``hf`` kind: a Hugging Face dataset, tokenized once into the token cache.

Needs the ``hf`` extra (``datasets``, ``tokenizers``) only to build: a cache that is already
there loads without them. Documents are encoded without the tokenizer's special tokens and
joined, within a split, by ``eos_token`` when it is given. With ``val_split: null``, the
documents of ``train_split`` are split by the rules files are (`split.plan_split`), counted
in tokens: document i, named ``"<train_split>/<i>"``, is validation when its name's hash is
below ``val_fraction`` (``split: by_document``) as long as that gives validation
``val_fraction`` of the tokens to within 1 percentage point; otherwise documents in hash order
fill validation and the next one is cut (``split: fill``). To weigh them, the documents are
tokenized once into a scratch file beside the cache, then copied into their splits.
Fingerprint: `cache.Fingerprint` with one piece per document, named ``<split name>/<index>``
(``<split name>/<index>[:cut]`` and ``[cut:]`` for a cut one), over its token bytes, added
per batch of `_ENCODE_BATCH` documents: the training ones, then the validation ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sqa_nas.data.cache import (
    CorpusWriter,
    Split,
    cache_key,
    cached_corpus,
    memmap,
    private_open,
    progress,
)
from sqa_nas.data.spec import HFSpec
from sqa_nas.data.split import SPLIT_RULE, plan_split
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
        sources: dict[Split, str] = {"train": spec.train_split}
        if spec.val_split is not None:
            sources["val"] = spec.val_split
        splits = {split: _split(datasets, spec, source) for split, source in sources.items()}
        meta: dict[str, Any] = {"kind": "hf", "vocab_size": vocab_size, "spec": spec.model_dump()}
        total = sum(len(s) for s in splits.values())
        dtype = "uint16" if vocab_size <= 2**16 else "uint32"
        with (
            CorpusWriter(directory, dtype=dtype, separator=eos) as writer,
            progress(f"tokenizing {spec.name}", total, unit="documents") as advance,
        ):
            if spec.val_split is None:
                rule = _carve(writer, tokenizer, spec, splits["train"], directory, advance)
                meta.update(val_fraction=spec.val_fraction, split=rule)
            else:
                meta["split"] = "named"
                for split, data in splits.items():
                    for names, texts in _batches(data, sources[split], spec.text_field):
                        encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
                        for name, encoding in zip(names, encodings):
                            writer.add(split, name, encoding.ids)
                        advance(len(texts))
        writer.finish(meta)

    key = spec.model_dump()
    if spec.val_split is None:  # the split is made here, by a rule that has versions
        key["split_rule"] = SPLIT_RULE
    return cached_corpus(root / "corpus" / f"hf-{cache_key(key)}", build)


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


def _batches(data: Any, source: str, text_field: str) -> Iterator[tuple[list[str], list[str]]]:
    """(document names, texts) of ``data`` in batches of `_ENCODE_BATCH` documents, in order;
    document i is named ``<source>/<i>``."""
    for start in range(0, len(data), _ENCODE_BATCH):
        texts = data[start : start + _ENCODE_BATCH][text_field]
        yield [f"{source}/{start + i}" for i in range(len(texts))], texts


def _carve(
    writer: CorpusWriter,
    tokenizer: Any,
    spec: HFSpec,
    data: Any,
    directory: Path,
    advance: Callable[[int], None],
) -> str:
    """Tokenize ``data`` (``train_split``) into a scratch file in ``directory``, split its
    documents by `plan_split` in tokens, and add them to ``writer`` in the order the module
    docstring gives. Returns the rule that made the split (``by_document`` or ``fill``)."""
    scratch = directory / "documents.tmp"
    names: list[str] = []
    lengths: list[int] = []
    with open(scratch, "wb", opener=private_open) as out:
        for batch_names, texts in _batches(data, spec.train_split, spec.text_field):
            for name, encoding in zip(
                batch_names, tokenizer.encode_batch(texts, add_special_tokens=False)
            ):
                out.write(np.asarray(encoding.ids, writer.dtype).tobytes())
                names.append(name)
                lengths.append(len(encoding.ids))
            advance(len(texts))
    plan = plan_split(dict(zip(names, lengths)), spec.val_fraction, piece="document")
    tokens = memmap(scratch, writer.dtype)
    starts = np.cumsum([0, *lengths])
    splits: tuple[Split, Split] = ("train", "val")
    for first in range(0, len(names), _ENCODE_BATCH):
        for split in splits:
            for i in range(first, min(first + _ENCODE_BATCH, len(names))):
                where, doc = plan.where[names[i]], tokens[starts[i] : starts[i + 1]]
                if where == split:
                    writer.add(split, names[i], doc)
                elif isinstance(where, int) and split == "train":  # cut: the head trains
                    writer.add(split, f"{names[i]}[:{where}]", doc[:where])
                elif isinstance(where, int):  # and the tail validates
                    writer.add(split, f"{names[i]}[{where}:]", doc[where:])
    del tokens  # unmap before the scratch file goes
    scratch.unlink()
    return plan.rule
