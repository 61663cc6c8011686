"""`TokenStream`: language-modelling batches cut from two 1-D token arrays (train, val).

Every memmap-backed kind (embedded, text, tokens, hf) ends here. Windows of ``seq_len + 1``
tokens give ``x = w[:-1]`` and ``y = w[1:]``; every position has a loss. Windows ignore
document boundaries, as nanoGPT's do: the separator token between documents is a target like
any other.

- Training: window starts drawn uniformly with replacement from a ``numpy`` generator seeded
  with ``seed`` (no epochs: a window may repeat, and for budgets far below an epoch that
  matters less than a fixed order would).
- Validation: ``batch_size * n_batches`` starts evenly spaced from the first to the last
  possible one, so the windows cover the whole validation split and never change.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from sqa_nas.data.base import Batch, Dataset, to_device
from sqa_nas.errors import UserError


class TokenStream(Dataset):
    """Batches from ``train`` and ``val``: 1-D integer arrays (usually read-only memmaps)."""

    def __init__(
        self, *, train: np.ndarray, val: np.ndarray, vocab_size: int, meta: dict[str, Any]
    ) -> None:
        self.train = train
        self.val = val
        self.vocab_size = vocab_size
        self.fingerprint = meta["fingerprint"]
        self.meta = meta

    def train_batches(
        self,
        batch_size: int,
        seq_len: int,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        start: int = 0,
    ) -> Iterator[Batch]:
        """Endless (x, y) batches, both int64 (batch_size, seq_len) on `device`: windows of
        seq_len + 1 tokens starting at uniform random offsets (numpy generator seeded with `seed`),
        y = x shifted by one; from batch number `start` on (the skipped batches' offsets are
        drawn, one call per batch as they would be, and nothing else). `UserError` when the
        train split is shorter than seq_len + 1."""
        last = self._last_start("train", self.train, seq_len)
        rng = np.random.default_rng(seed)
        for _ in range(start):
            rng.integers(0, last + 1, size=batch_size)
        while True:
            yield self._batch(
                self.train, rng.integers(0, last + 1, size=batch_size), seq_len, device
            )

    def val_batches(
        self, batch_size: int, seq_len: int, n_batches: int, *, device: str | torch.device = "cpu"
    ) -> list[Batch]:
        """`n_batches` (x, y) batches of (batch_size, seq_len) from windows evenly spaced over the
        validation split (the module docstring says how), identical on every call."""
        last = self._last_start("validation", self.val, seq_len)
        starts = np.linspace(0, last, num=batch_size * n_batches).astype(np.int64)
        return [
            self._batch(self.val, s, seq_len, device)
            for s in starts.reshape(n_batches, batch_size)
        ]

    def _last_start(self, split: str, data: np.ndarray, seq_len: int) -> int:
        if len(data) < seq_len + 1:
            raise UserError(
                f"the {split} split of this {self.meta['kind']} dataset holds "
                f"{len(data)} tokens; seq_len={seq_len} needs at least "
                f"{seq_len + 1} (more data, or a shorter seq_len)"
            )
        return len(data) - seq_len - 1

    @staticmethod
    def _batch(
        data: np.ndarray, starts: np.ndarray, seq_len: int, device: str | torch.device
    ) -> Batch:
        windows = np.stack([data[s : s + seq_len + 1] for s in starts]).astype(np.int64)
        tokens = to_device(windows, device)  # (B, N + 1)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
