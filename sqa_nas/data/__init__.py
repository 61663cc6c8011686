"""Training and validation data for the trials: one spec in, one `Dataset` out.

    >>> from sqa_nas.data import DataSpec, load_dataset
    >>> ds = load_dataset(DataSpec(kind="mqar", vocab_size=64, num_kv_pairs=4))
    >>> x, y = next(ds.train_batches(batch_size=2, seq_len=32, seed=0))
    >>> x.shape, y.dtype, ds.vocab_size
    (torch.Size([2, 32]), torch.int64, 64)

Kinds: ``embedded`` (the stdlib's Python sources as bytes; the default, no download),
``text`` (local files as bytes), ``tokens`` (nanoGPT ``train.bin`` / ``val.bin``), ``hf`` (a
Hugging Face dataset and tokenizer) and ``mqar`` (associative recall, generated). The first
four train on random windows of a token stream (`stream`), built once into the cache
(`cache`); ``mqar`` generates its sequences (`mqar`). How the file kinds and ``hf`` divide
training from validation, and the line that says what was made, are in `split`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sqa_nas.data.base import IGNORE_INDEX, Batch, Dataset, accuracy_counts
from sqa_nas.data.cache import cache_root
from sqa_nas.data.corpus import load_embedded, load_text
from sqa_nas.data.hf import load_hf
from sqa_nas.data.mqar import MQAR
from sqa_nas.data.spec import (
    AnySpec,
    DataSpec,
    EmbeddedSpec,
    HFSpec,
    MQARSpec,
    TextSpec,
    TokensSpec,
)
from sqa_nas.data.split import describe_split
from sqa_nas.data.tokens import load_tokens
from sqa_nas.errors import UserError, first_error

__all__ = [
    "IGNORE_INDEX",
    "AnySpec",
    "Batch",
    "DataSpec",
    "Dataset",
    "EmbeddedSpec",
    "HFSpec",
    "MQARSpec",
    "TextSpec",
    "TokensSpec",
    "accuracy_counts",
    "cache_root",
    "describe_data",
    "describe_split",
    "load_dataset",
]

_LOADERS: dict[str, Callable[[Any, Path], Dataset]] = {
    "embedded": load_embedded,
    "text": load_text,
    "tokens": load_tokens,
    "hf": load_hf,
    "mqar": lambda spec, root: MQAR(spec),
}


def load_dataset(
    spec: DataSpec | AnySpec | Mapping[str, Any], *, cache_dir: str | Path | None = None
) -> Dataset:
    """The dataset of ``spec`` (a spec or its dict form, as under ``data:`` in YAML), built
    into the cache on first use. ``cache_dir`` overrides ``$SQA_NAS_CACHE`` and
    ``~/.cache/sqa_nas``. Bad specs and unusable data raise `UserError`."""
    if isinstance(spec, Mapping):
        try:
            spec = DataSpec.model_validate(dict(spec))
        except ValidationError as exc:
            raise UserError(f"data: {first_error(exc)}") from None
    if isinstance(spec, DataSpec):
        spec = spec.root
    return _LOADERS[spec.kind](spec, cache_root(cache_dir))


def describe_data(
    spec: DataSpec | AnySpec | Mapping[str, Any], *, cache_dir: str | Path | None = None
) -> str:
    """One line on the dataset of ``spec``: kind, tokens, the validation share made and the
    one asked, and how (`split.describe_split`). Loads it as `load_dataset` does: from the
    cache once built, so cheap."""
    return describe_split(load_dataset(spec, cache_dir=cache_dir).meta)
