"""Multi-query associative recall (MQAR), generated on the fly.

The task of Zoology (Arora et al. 2023, arXiv 2312.04927; ``zoology/data/associative_recall.py``),
generated the same way. With ``kv = num_kv_pairs`` and ``V = vocab_size``, one sequence of
length N is::

    x:  k1 v1 k2 v2 ... k_kv v_kv | . . q . . . q . q . . ...
    y:  -100 everywhere, except y[i] = v_j where x[i] = q = k_j

- keys: kv distinct ids from [1, V/2); values: kv distinct ids from [V/2, V).
- Every key is queried exactly once, in the query region after the 2 kv pair tokens, at
  position ``2 kv + 2 g`` for a slot g in [0, (N - 2 kv) // 2). Slots are drawn without
  replacement with probability proportional to ``a * (g + 1) ** (a - 1)`` (``power_a``; the
  default 0.01 favours short gaps), in draw order for key 1, 2, ...; the weighted draw without
  replacement is Efraimidis-Spirakis (the same distribution as ``np.random.choice(p=...)``).
- The other query-region tokens are 0, or uniform in [0, V) with ``random_non_queries``.

So the loss and `base.accuracy_counts` see only the kv query positions. Training batches come
from ``numpy`` generators seeded with ``(spec.seed, 0, seed)``; the validation set from
``(spec.seed, 1)``, so it is fixed and never drawn by training. Fingerprint: sha256 of the
spec and `GENERATOR`, since they determine every sequence.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import numpy as np
import torch

from sqa_nas.data.base import IGNORE_INDEX, Batch, Dataset, to_device
from sqa_nas.data.spec import MQARSpec
from sqa_nas.errors import UserError

GENERATOR = "sqa-nas mqar v1"  # change when the generated sequences change


class MQAR(Dataset):
    """MQAR batches for one `MQARSpec`."""

    def __init__(self, spec: MQARSpec) -> None:
        self.spec = spec
        self.vocab_size = spec.vocab_size
        options = spec.model_dump()
        self.fingerprint = hashlib.sha256(
            json.dumps({"generator": GENERATOR, **options}, sort_keys=True).encode()
        ).hexdigest()
        self.meta = {**options, "generator": GENERATOR, "fingerprint": self.fingerprint}

    def train_batches(
        self,
        batch_size: int,
        seq_len: int,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        start: int = 0,
    ) -> Iterator[Batch]:
        """Endless (x, y) batches, both int64 (batch_size, seq_len) on `device`: fresh sequences
        from a generator seeded with ``(spec.seed, 0, seed)``; y is `IGNORE_INDEX` except at the
        query positions, where it holds the recalled value. Begins at batch number `start`:
        the skipped batches' random numbers are drawn (`draw`), their sequences not laid out.
        `UserError` when `seq_len` is under 4 * num_kv_pairs or differs from a seq_len the
        spec pins."""
        self._check(seq_len)
        rng = np.random.default_rng([self.spec.seed, 0, seed])
        for _ in range(start):
            self.draw(rng, batch_size, seq_len)
        while True:
            x, y = self.generate(rng, batch_size, seq_len)
            yield to_device(x, device), to_device(y, device)

    def val_batches(
        self, batch_size: int, seq_len: int, n_batches: int, *, device: str | torch.device = "cpu"
    ) -> list[Batch]:
        """`n_batches` (x, y) batches of (batch_size, seq_len), generated from ``(spec.seed, 1)``:
        the same on every call, never drawn by training. Same checks as `train_batches`."""
        self._check(seq_len)
        x, y = self.generate(
            np.random.default_rng([self.spec.seed, 1]), batch_size * n_batches, seq_len
        )
        return [
            (to_device(xb, device), to_device(yb, device))
            for xb, yb in zip(np.split(x, n_batches), np.split(y, n_batches))
        ]

    def _check(self, seq_len: int) -> None:
        kv = self.spec.num_kv_pairs
        if self.spec.seq_len is not None and seq_len != self.spec.seq_len:
            raise UserError(
                f"mqar data is pinned to seq_len={self.spec.seq_len} by its spec; "
                f"the trial asked for {seq_len} (drop seq_len from the data spec "
                "to follow the trial's)"
            )
        if seq_len < 4 * kv:
            raise UserError(
                f"mqar: seq_len={seq_len} is too short for num_kv_pairs={kv}: "
                f"it needs 4 * num_kv_pairs = {4 * kv}"
            )

    def draw(
        self, rng: np.random.Generator, n: int, seq_len: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Every random number of ``n`` sequences, in the order `generate` has always drawn
        them: keys (n, kv), values (n, kv), uniforms (n, slots) for the query slots, and the
        filler tokens (n * (seq_len - 3 kv),) with ``random_non_queries``, else None."""
        kv, vocab = self.spec.num_kv_pairs, self.spec.vocab_size
        half, slots = vocab // 2, (seq_len - 2 * kv) // 2
        keys = np.stack([rng.choice(half - 1, kv, replace=False) + 1 for _ in range(n)])
        values = np.stack([rng.choice(vocab - half, kv, replace=False) + half for _ in range(n)])
        uniforms = rng.random((n, slots))
        filler = None
        if self.spec.random_non_queries:
            # every token after the 2 kv context tokens but the kv queries is filler
            filler = rng.integers(0, vocab, size=n * (seq_len - 3 * kv))
        return keys, values, uniforms, filler

    def generate(
        self, rng: np.random.Generator, n: int, seq_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` sequences: (x, y), both int64 (n, seq_len), laid out as the module says."""
        kv, context = self.spec.num_kv_pairs, 2 * self.spec.num_kv_pairs
        keys, values, uniforms, filler = self.draw(rng, n, seq_len)
        x = np.zeros((n, seq_len), dtype=np.int64)
        x[:, 0:context:2], x[:, 1:context:2] = keys, values  # (n, kv) each

        a = self.spec.power_a
        weights = a * np.arange(1, uniforms.shape[1] + 1) ** (a - 1)
        # Efraimidis-Spirakis: the kv largest log(u) / w are a weighted draw without
        # replacement, in draw order when sorted descending.
        scores = np.log(uniforms) / weights
        gaps = np.argsort(-scores, axis=1)[:, :kv]  # (n, kv): slot of key j's query
        query_pos = context + 2 * gaps
        np.put_along_axis(x, query_pos, keys, axis=1)
        y = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
        np.put_along_axis(y, query_pos, values, axis=1)

        if filler is not None:
            x[x == 0] = filler  # keys and values are never 0, so only query-region filler
        return x, y
