"""Training, evaluation and the learning-rate schedule of one language model, on a small typed
config: what the search, the experiments and users call alike.

`TrainConfig` holds only what training reads (the search builds it from its spec, see
`sqa_nas.search.trial.train_config`); `lr_at` is a pure function of the step; `TrainStep` is
the forward and loss of a training step, eager or with compiled blocks; `train` runs AdamW
with that schedule on a `TrainStep` and stops at the first of steps / tokens / seconds;
`evaluate` scores fixed held-out batches; `sqa_nas.throughput` times the same `TrainStep`.

A run bounded by steps or tokens can stop early (`train(stop_step=...)`) and continue later
from its `TrainState` (`train(resume=...)`, on any device; `sqa_nas.checkpoint` writes and
reads it with the weights): the schedule always spans the full budget and the data stream
picks up at the next batch, so on the CPU the continued run is bitwise the unstopped one.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from sqa_nas.compiling import compile_blocks
from sqa_nas.data import IGNORE_INDEX, Dataset, accuracy_counts
from sqa_nas.model import SQATransformer

Progress = Callable[[dict[str, Any]], None]
CURVE_POINTS = 50  # training-loss points kept per run (one host sync each)


class NonFinite(Exception):
    """A training or validation loss that is NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    """What training and evaluation read. A run stops at the first of `steps`, `tokens`
    (rounded up to whole steps) and `seconds`; at least one must be set."""

    seq_len: int  # tokens per sequence, training and evaluation
    batch_size: int = 8
    steps: int | None = None
    tokens: int | None = None
    seconds: float | None = None
    lr: float = 3e-3  # peak learning rate, reached at the end of warm-up
    min_lr_ratio: float = 0.1  # the cosine decays to min_lr_ratio * lr at the last step
    warmup_steps: int = 10
    weight_decay: float = 0.1  # on matrices (dim >= 2) only
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping
    # torch.compile the blocks on GPU: True, False, or "auto" (`sqa_nas.compiling.decide`;
    # `train` itself reads "auto" as False: the caller decides and passes its `TrainStep`)
    compile: bool | Literal["auto"] = False
    eval_batches: int = 8
    eval_batch_size: int | None = None  # None: batch_size

    def __post_init__(self) -> None:
        if self.steps is None and self.tokens is None and self.seconds is None:
            raise ValueError("TrainConfig needs steps, tokens or seconds")

    @property
    def planned_steps(self) -> int:
        """Steps the schedule spans: the fewer of `steps` and `tokens` in steps; -1 when only
        `seconds` bounds the run (the schedule cannot know its length)."""
        per_step = self.batch_size * self.seq_len
        options = [x for x in (self.steps, self.tokens and -(-self.tokens // per_step)) if x]
        return min(options) if options else -1


@dataclass(frozen=True)
class ThroughputConfig:
    """How `sqa_nas.throughput.measure` times a model: `batch_size` x `seq_len` random
    tokens, forward (+ backward when `backward`), at least `warmup` untimed calls, then
    rounds of `repeats` timed calls until the 95% intervals are within `ci_target`
    (relative half-width) or `max_seconds` have passed."""

    seq_len: int
    batch_size: int = 8
    warmup: int = 2
    repeats: int = 5
    backward: bool = True
    ci_target: float = 0.03
    max_seconds: float = 20.0


@dataclass(frozen=True)
class TrainState:
    """Where a run stands after `train` returns: what a later `train(resume=...)` needs to
    continue it exactly, given the model's weights (kept apart: `sqa_nas.checkpoint`), the
    same `TrainConfig`, data and seed. No random number is drawn in a step (no dropout;
    block-sparse layouts draw their random blocks from their own seeded generators) and
    gradient clipping keeps nothing, so no RNG state is needed."""

    step: int  # optimizer steps done; the data stream resumes at batch number `step`
    tokens: int  # training tokens seen
    curve: list[tuple[int, int, float]]  # as `TrainResult.curve`, so far
    optimizer: dict[str, Any]  # the AdamW state_dict, tensors on the device trained on
    seed: int  # the data seed, checked on resume
    planned_steps: int  # the schedule's length (`TrainConfig.planned_steps`), checked too


@dataclass(frozen=True)
class TrainResult:
    """What `train` did: the loss curve, the steps taken and the tokens seen (both counted
    from the run's start, a resumed run's earlier calls included), and where it stands."""

    curve: list[tuple[int, int, float]]  # (step, tokens seen, training loss), subsampled
    steps: int
    tokens: int
    seconds: float = 0.0  # in this call's step loop, synchronised at its end
    state: TrainState | None = None  # to continue from (`train` always sets it)
    tokens_before: int = 0  # tokens seen before this call (resumed from a `TrainState`)

    @property
    def tokens_per_s(self) -> float:
        """Training tokens per second of this call's step loop."""
        return (self.tokens - self.tokens_before) / self.seconds if self.seconds > 0 else 0.0


def pick_device(preference: str = "auto") -> torch.device:
    """The device to train on: the current CUDA device unless `preference` is "cpu" or no
    GPU is visible."""
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def autocast(device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """Mixed precision on GPU (bf16 by default, as the paper trains); a no-op context on CPU,
    where autocast would only slow the small models down."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """The learning rate of step `step` (0-based) of `total` (-1: unknown).

    Linear warm-up from lr / warmup_steps at step 0 to lr at step warmup_steps - 1, then a
    cosine from lr at step warmup_steps down to min_lr_ratio * lr at step `total`; with
    `total` unknown or inside the warm-up, lr is held after the warm-up."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if total <= cfg.warmup_steps:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / (total - cfg.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss in float32 of logits (B, N, V) against targets (B, N)."""
    return F.cross_entropy(
        logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=IGNORE_INDEX
    )


class TrainStep:
    """The forward and loss of one training step (bf16 autocast on GPU): what `train` trains
    with and `sqa_nas.throughput.measure` times, so the throughput objective is the training speed.

    `compiled`: the blocks run compiled (`sqa_nas.compiling.compile_blocks`, one graph per
    distinct block shape, shared with later models in this process) and so does the loss;
    the model itself stays eager for evaluation. Backends are chosen and RoPE tables sized
    here, before any trace (`SQATransformer.prepare`)."""

    def __init__(
        self,
        model: SQATransformer,
        device: torch.device,
        seq_len: int,
        *,
        compiled: bool = False,
        mode: str | None = None,
    ) -> None:
        self.model, self.device, self.compiled = model, device, compiled
        self.timed = False  # warmed and timed before (`sqa_nas.throughput.measure`)
        dtype = torch.bfloat16 if device.type == "cuda" else model.embed.weight.dtype
        model.prepare(seq_len, dtype)
        self.blocks = compile_blocks(model, mode) if compiled else []
        self._loss = _compiled_cross_entropy() if compiled else _cross_entropy

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean loss of inputs x against targets y, both (B, N) int64."""
        with autocast(self.device):
            logits = self.model(x, self.blocks)  # (B, N, vocab)
        return self._loss(logits, y)

    def warm(self, batch_size: int, seq_len: int) -> float:
        """Run one forward and backward on random tokens (compiling on the first call) and
        return its seconds, synchronised; leaves no gradients behind."""
        vocab = self.model.config.vocab_size
        x = torch.randint(0, vocab, (batch_size, seq_len), device=self.device)
        start = time.perf_counter()
        self.loss(x, x).backward()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.model.zero_grad(set_to_none=True)
        return time.perf_counter() - start


@functools.cache
def _compiled_cross_entropy() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return torch.compile(_cross_entropy, fullgraph=True, dynamic=False)


def prefetch(batches: Iterator, depth: int = 2) -> Iterator:
    """`batches` drawn by a background thread, `depth` ahead, so the next batch is on the
    device (pinned, non-blocking copies) before the step needs it. Ends with the source;
    an exception in the source is raised here."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def fill() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(done)
        except BaseException as exc:  # handed to the consumer
            ready.put(exc)

    thread = threading.Thread(target=fill, name="sqa-nas-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def train(
    model: SQATransformer,
    data: Dataset,
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    progress: Progress | None = None,
    *,
    step: TrainStep | None = None,
    between_steps: Callable[[], None] | None = None,
    stop_step: int | None = None,
    resume: TrainState | None = None,
) -> TrainResult:
    """Train `model` in place on `data`'s training split.

    AdamW (betas 0.9, 0.95; weight decay on matrices only) with `lr_at` set before every
    step, bf16 autocast on GPU, gradient clipping; batches of (batch_size, seq_len) tokens
    from `data.train_batches(seed=seed)`, prefetched. `step` is the `TrainStep` to train
    with (default: compiled when ``cfg.compile is True`` on a GPU). `progress` gets {step,
    of, loss, lr} at each curve point, the only host syncs of the loop; `between_steps()` is
    called after every optimizer step (a trial sharing its GPU steps aside there,
    `sqa_nas.gpu_share`). `TrainResult.seconds` counts the step loop only. Raises
    `NonFinite` at the first non-finite loss it reads.

    `stop_step`: stop once that many steps are done in all (the schedule still spans
    `cfg.planned_steps`). `resume`: continue from a `TrainResult.state` (the model already
    holding that run's weights): the optimizer state is loaded (a copy: `resume` is not
    changed), the data stream starts at batch `resume.step` and the curve goes on. Both
    need a run bounded by steps or tokens; `ValueError` otherwise, and when `resume` came
    from another seed, schedule length or batch shape."""
    n, total = cfg.seq_len, cfg.planned_steps
    _check_resume(cfg, seed, stop_step, resume)
    if step is None:
        step = TrainStep(model, device, n, compiled=cfg.compile is True and device.type == "cuda")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": other, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    curve: list[tuple[int, int, float]] = []
    steps, tokens = 0, 0
    if resume is not None:
        _load_optimizer(opt, resume.optimizer)
        curve, steps, tokens = list(resume.curve), resume.step, resume.tokens
    tokens_before = tokens
    batches = data.train_batches(cfg.batch_size, n, seed=seed, device=device, start=steps)
    if device.type == "cuda":
        batches = prefetch(batches)
    model.train()
    start = time.perf_counter()
    every = max(1, (total if total > 0 else 1000) // CURVE_POINTS)
    while True:
        if total > 0 and steps >= total:
            break
        if stop_step is not None and steps >= stop_step:
            break
        if cfg.seconds and time.perf_counter() - start >= cfg.seconds:
            break
        lr = lr_at(steps, total, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = next(batches)  # (B, N) inputs and next-token targets
        loss = step.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if between_steps is not None:
            between_steps()
        steps += 1
        tokens += x.numel()
        if steps % every == 0 or steps == 1:
            value = loss.item()  # the one host sync: at curve points, not every step
            if not math.isfinite(value):
                raise NonFinite(f"non-finite training loss ({value}) at step {steps}")
            curve.append((steps, tokens, round(value, 5)))
            if progress:
                progress({"step": steps, "of": total, "loss": value, "lr": lr})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    state = TrainState(steps, tokens, list(curve), opt.state_dict(), seed, total)
    return TrainResult(curve, steps, tokens, seconds, state, tokens_before)


def _load_optimizer(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load a copy of `saved` into `opt`, keeping `opt`'s implementation flags: a state the
    fused CUDA AdamW saved continues with the CPU's own implementation, and the other way
    round (torch casts the tensors onto the parameters' device, `step` too when fused)."""
    saved = copy.deepcopy(saved)
    for group, own in zip(saved["param_groups"], opt.param_groups):
        group.update({k: own[k] for k in ("foreach", "capturable", "fused")})
    opt.load_state_dict(saved)


def _check_resume(
    cfg: TrainConfig, seed: int, stop_step: int | None, resume: TrainState | None
) -> None:
    """`ValueError` unless `train` can stop at `stop_step` and continue `resume` exactly."""
    if cfg.seconds is not None and (stop_step is not None or resume is not None):
        raise ValueError(
            f"a run bounded by seconds ({cfg.seconds}) cannot stop at a step or resume: "
            "its schedule has no fixed length; bound it by steps or tokens instead"
        )
    done = resume.step if resume is not None else 0
    if stop_step is not None and stop_step < done:
        raise ValueError(f"stop_step={stop_step} is before the resumed step {done}")
    if resume is None:
        return
    per_step = cfg.batch_size * cfg.seq_len
    if resume.seed != seed:
        raise ValueError(f"resuming a run of seed {resume.seed} with seed {seed}")
    if resume.planned_steps != cfg.planned_steps:
        raise ValueError(
            f"resuming a run planned for {resume.planned_steps} steps with a config "
            f"planned for {cfg.planned_steps}: the LR schedule would differ"
        )
    if resume.tokens != resume.step * per_step:
        raise ValueError(
            f"resuming a run of {resume.tokens} tokens in {resume.step} steps with "
            f"batch_size * seq_len = {per_step} tokens per step"
        )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data: Dataset, cfg: TrainConfig, device: torch.device
) -> dict[str, float]:
    """Token-weighted loss, perplexity and next-token accuracy on `data`'s fixed validation
    batches (`eval_batches` of (eval_batch_size, seq_len)); targets equal to IGNORE_INDEX
    are not counted. Returns {val_loss, perplexity, accuracy, val_tokens}; raises
    `NonFinite` for a non-finite loss."""
    model.eval()
    loss_sum, counted, correct = 0.0, 0, 0
    for x, y in data.val_batches(
        cfg.eval_batch_size or cfg.batch_size, cfg.seq_len, cfg.eval_batches, device=device
    ):
        with autocast(device):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(
            logits.view(-1, logits.size(-1)),
            y.view(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        ).item()
        c, k = accuracy_counts(logits, y)
        correct, counted = correct + c, counted + k
    if counted == 0:
        raise ValueError("the validation batches have no target tokens")
    loss = loss_sum / counted
    if not math.isfinite(loss):
        raise NonFinite(f"non-finite validation loss ({loss})")
    return {
        "val_loss": loss,
        "perplexity": math.exp(min(loss, 700)),
        "accuracy": correct / counted,
        "val_tokens": counted,
    }
