"""`DataSpec`: which data a trial trains and validates on, as written under ``data:`` in YAML.

One model per kind, told apart by ``kind`` (a pydantic discriminated union)::

    data: {kind: embedded}                                    # stdlib sources, bytes, no download
    data: {kind: text, paths: ["notes/*.md"]}                 # your files (or folders), bytes
    data: {kind: tokens, path: data/owt, dtype: uint16}       # nanoGPT train.bin / val.bin
    data: {kind: hf, name: roneneldan/TinyStories, tokenizer: gpt2}
    data: {kind: mqar, vocab_size: 8192, num_kv_pairs: 8}     # associative recall, generated

Unknown keys are errors that name the key (``text.pathz: Extra inputs are not permitted``).
Where the data is cached is a property of the machine, not of the spec: see `cache.cache_root`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

ValFraction = Annotated[float, Field(gt=0, lt=1)]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class EmbeddedSpec(_Spec):
    """The Python standard library's ``.py`` sources as bytes (vocab 256); see `corpus`."""

    kind: Literal["embedded"] = "embedded"
    # Also every .py under site-packages (purelib/platlib): hundreds of MB on a GPU machine.
    include_site_packages: bool = False
    val_fraction: ValFraction = 0.05


class TextSpec(_Spec):
    """Local UTF-8 text files as bytes (vocab 256). ``paths`` are files, glob patterns
    (``**`` recurses) or directories (every file under one, extensionless ones too, hidden
    names left out; binary files skipped and counted, `corpus`). Validation gets
    ``val_fraction`` of the bytes to within a percentage point: by file when the files'
    hashes land that close, else whole files then the tail of one (a single file keeps its
    last ``val_fraction``); see `split`."""

    kind: Literal["text"] = "text"
    paths: list[str] = Field(min_length=1)
    val_fraction: ValFraction = 0.05


class TokensSpec(_Spec):
    """Pre-tokenized memmaps in nanoGPT's layout: ``train.bin`` and ``val.bin`` (raw
    ``dtype``) or ``train.npy`` and ``val.npy`` (dtype from the header) in ``path``.
    ``vocab_size`` comes from here or from ``path/meta.json``; ``meta.pkl`` is never read
    (unpickling runs code)."""

    kind: Literal["tokens"] = "tokens"
    path: str
    dtype: Literal["uint16", "uint32"] = "uint16"
    vocab_size: int | None = Field(None, gt=0)


class HFSpec(_Spec):
    """A Hugging Face dataset tokenized once with a `tokenizers` tokenizer (the ``hf`` extra).

    ``tokenizer`` is a Hub name or a local ``tokenizer.json``. With ``val_split: null`` the
    validation documents are drawn from ``train_split``: ``val_fraction`` of its tokens, to
    within a percentage point (see `split`). ``eos_token``,
    if given, separates documents (as byte 0xFF does in the byte corpora). The cache is keyed
    by these options, not by the Hub's content: pin the dataset's ``revision`` to be sure two
    machines tokenize the same data."""

    kind: Literal["hf"] = "hf"
    name: str = Field(min_length=1)
    config: str | None = None
    revision: str | None = None
    tokenizer: str = Field(min_length=1)
    text_field: str = "text"
    train_split: str = "train"
    val_split: str | None = "validation"
    val_fraction: ValFraction = 0.05
    max_documents: int | None = Field(None, gt=0)  # per split, the first ones
    eos_token: str | None = None


class MQARSpec(_Spec):
    """Multi-query associative recall (Zoology, Arora et al. 2023, arXiv 2312.04927).

    ``seq_len``: None serves whatever length the trial asks for; a number pins it (a trial
    asking for another length is refused). See `mqar` for the sequence layout."""

    kind: Literal["mqar"] = "mqar"
    vocab_size: int = Field(8192, gt=0)
    num_kv_pairs: int = Field(8, gt=0)
    seq_len: int | None = Field(None, gt=0)
    seed: int = Field(0, ge=0)
    power_a: float = Field(0.01, gt=0)  # query gaps ~ a * g^(a-1): Zoology's default
    random_non_queries: bool = True  # filler tokens random (Zoology's default) or 0

    @model_validator(mode="after")
    def _check(self) -> MQARSpec:
        keys, values = self.vocab_size // 2 - 1, self.vocab_size - self.vocab_size // 2
        if self.num_kv_pairs > min(keys, values):
            raise ValueError(
                f"vocab_size={self.vocab_size} holds {keys} distinct keys (1 .. vocab/2 - 1) "
                f"and {values} values (vocab/2 .. vocab - 1); num_kv_pairs={self.num_kv_pairs} "
                f"needs at least {self.num_kv_pairs} of each"
            )
        if self.seq_len is not None and self.seq_len < 4 * self.num_kv_pairs:
            raise ValueError(
                f"seq_len={self.seq_len} is too short for num_kv_pairs="
                f"{self.num_kv_pairs}: it needs 4 * num_kv_pairs = "
                f"{4 * self.num_kv_pairs} (the pairs, then a query slot per pair)"
            )
        return self


AnySpec = EmbeddedSpec | TextSpec | TokensSpec | HFSpec | MQARSpec


class DataSpec(RootModel[Annotated[AnySpec, Field(discriminator="kind")]]):
    """Any of the specs above, chosen by ``kind``: ``DataSpec(kind="mqar", num_kv_pairs=16)``
    or ``DataSpec.model_validate(yaml_dict)``; the concrete spec is ``.root``."""

    model_config = ConfigDict(frozen=True)
