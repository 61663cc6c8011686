"""Continued training of a converted (or any) model with the project's training loop.

`finetune` evaluates the model on the data's validation batches, trains it with
`sqa_nas.train.train` (AdamW, warm-up then cosine to 0.1 lr, gradient clipping, bf16 on GPU)
for a number of tokens, evaluates again and returns the record `sqa-nas finetune` writes to
``finetune.json``: the settings, the loss curve and the validation metrics before and after.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sqa_nas.data import Dataset
from sqa_nas.model import SQATransformer
from sqa_nas.train import Progress, TrainConfig, TrainStep, evaluate, train

RECORD_FILE = "finetune.json"


@dataclass(frozen=True)
class FinetuneSettings:
    """What a fine-tune reads: `tokens` of training (rounded up to whole steps of
    batch_size x seq_len), the peak `lr` after `warmup_steps` (None: a tenth of the steps,
    at most 100), `eval_batches` validation batches before and after."""

    tokens: int
    lr: float = 1e-3
    batch_size: int = 8
    seq_len: int = 512
    seed: int = 0
    warmup_steps: int | None = None
    eval_batches: int = 8
    compile: bool = False  # torch.compile the blocks (GPU only)

    def train_config(self) -> TrainConfig:
        """The `TrainConfig` of this fine-tune."""
        steps = -(-self.tokens // (self.batch_size * self.seq_len))
        warmup = self.warmup_steps if self.warmup_steps is not None else min(100, steps // 10)
        return TrainConfig(
            seq_len=self.seq_len,
            batch_size=self.batch_size,
            tokens=self.tokens,
            lr=self.lr,
            warmup_steps=max(1, warmup),
            compile=self.compile,
            eval_batches=self.eval_batches,
        )


def finetune(
    model: SQATransformer,
    data: Dataset,
    settings: FinetuneSettings,
    device: torch.device,
    progress: Progress | None = None,
    *,
    evaluate_before: bool = True,
) -> dict[str, Any]:
    """Train `model` in place (moved to `device`) and return the record: settings, the curve
    [(step, tokens, loss)], ``val_before`` / ``val_after`` ({val_loss, perplexity, accuracy,
    val_tokens}), steps, tokens, seconds and tokens per second of the training loop."""
    cfg = settings.train_config()
    model.to(device)
    before = evaluate(model, data, cfg, device) if evaluate_before else None
    compiled = settings.compile and device.type == "cuda"
    step = TrainStep(model, device, cfg.seq_len, compiled=compiled)
    result = train(model, data, cfg, device, settings.seed, progress, step=step)
    after = evaluate(model, data, cfg, device)
    return {
        "settings": asdict(settings),
        "device": str(device),
        "data": data.meta.get("kind"),
        "data_fingerprint": data.fingerprint,
        "steps": result.steps,
        "tokens": result.tokens,
        "seconds": round(result.seconds, 3),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "curve": [list(point) for point in result.curve],
        "val_before": before,
        "val_after": after,
    }


def write_record(record: dict[str, Any], folder: Path) -> Path:
    """Write `record` as ``folder/finetune.json`` (whole or not at all)."""
    path = folder / RECORD_FILE
    part = folder / f".{RECORD_FILE}.{os.getpid()}.part"
    try:
        part.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return path
