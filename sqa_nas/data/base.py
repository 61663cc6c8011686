"""`Dataset`: what a trial sees of its data, whatever the kind.

A batch is ``(x, y)``, both int64 of shape (B, N) on the requested device. For language
modelling ``y[:, i] = x[:, i + 1]`` in the underlying stream (y is x shifted by one); for
MQAR ``y`` holds the recalled value at query positions. Positions without a loss hold
``IGNORE_INDEX`` (-100), so ``F.cross_entropy(logits.flatten(0, 1), y.flatten(),
ignore_index=IGNORE_INDEX)`` is the loss and `accuracy_counts` the matching accuracy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch

IGNORE_INDEX = -100

Batch = tuple[torch.Tensor, torch.Tensor]


class Dataset(ABC):
    """Training and validation batches of one data spec.

    ``vocab_size``: tokens are in [0, vocab_size). ``fingerprint``: a sha256 hex digest that
    is equal exactly when two datasets serve the same train and validation data (how it is
    computed is stated per kind). ``meta``: a JSON-able dict with at least ``kind``,
    ``vocab_size`` and ``fingerprint``, plus sizes.
    """

    vocab_size: int
    fingerprint: str
    meta: dict[str, Any]

    @abstractmethod
    def train_batches(
        self,
        batch_size: int,
        seq_len: int,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        start: int = 0,
    ) -> Iterator[Batch]:
        """An endless stream of (x, y) training batches of shape (batch_size, seq_len),
        reproducible for a given ``seed``. With ``start`` = k the stream begins at batch k of
        that sequence: the same batches as drawing and discarding k, without building the
        skipped ones (how a resumed run picks up its data, `sqa_nas.train.train`)."""

    @abstractmethod
    def val_batches(
        self, batch_size: int, seq_len: int, n_batches: int, *, device: str | torch.device = "cpu"
    ) -> list[Batch]:
        """``n_batches`` validation batches, the same on every call with the same arguments,
        so validation losses of different trials compare."""


def accuracy_counts(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """(correct, counted) for logits (B, N, V) against targets (B, N): argmax predictions
    counted only where ``targets != IGNORE_INDEX`` (next-token accuracy for language
    modelling, recall accuracy on query positions for MQAR). Sum both over batches and
    divide once, so batches with more counted positions weigh more."""
    keep = targets != IGNORE_INDEX
    correct = (logits.argmax(dim=-1) == targets) & keep
    return int(correct.sum()), int(keep.sum())


def to_device(array: Any, device: str | torch.device) -> torch.Tensor:
    """A numpy int array as an int64 tensor on ``device`` (pinned first when it is CUDA, so
    the copy can overlap compute)."""
    t = torch.from_numpy(array).long()
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t
