"""What a search space's budget means for one trial: its training and throughput settings
(`sqa_nas.train` configs) and the seeds every trial of a study shares."""

from __future__ import annotations

import hashlib

from sqa_nas.search.space import SearchSpec
from sqa_nas.train import ThroughputConfig, TrainConfig


def train_config(spec: SearchSpec) -> TrainConfig:
    """The training settings of a search space's budget, at its model's seq_len."""
    b = spec.budget.train
    return TrainConfig(
        seq_len=spec.model.seq_len,
        batch_size=b.batch_size,
        steps=b.steps,
        tokens=b.tokens,
        seconds=b.seconds,
        lr=b.lr,
        min_lr_ratio=b.min_lr_ratio,
        warmup_steps=b.warmup_steps,
        weight_decay=b.weight_decay,
        grad_clip=b.grad_clip,
        compile=b.compile,
        eval_batches=b.eval_batches,
        eval_batch_size=b.eval_batch_size,
    )


def throughput_config(spec: SearchSpec) -> ThroughputConfig:
    """How a search space measures throughput (seq_len defaults to the model's)."""
    t = spec.budget.throughput
    return ThroughputConfig(
        seq_len=t.seq_len or spec.model.seq_len,
        batch_size=t.batch_size,
        warmup=t.warmup,
        repeats=t.repeats,
        backward=t.mode == "fwd+bwd",
        ci_target=t.ci_target,
        max_seconds=t.max_seconds,
    )


def crn_seeds(spec: SearchSpec, n: int, purpose: str = "study") -> list[int]:
    """`n` seeds for weights and data order, the same for every trial of a study (common
    random numbers: two trials differ only in their layout). `purpose` draws another
    family (``confirm``: fresh seeds, none of the study's)."""
    base = spec.sampler.seed or 0
    return [
        int.from_bytes(hashlib.sha256(f"{base}:{purpose}:{r}".encode()).digest()[:4], "big")
        for r in range(n)
    ]
