"""One trial: build the model a trial's params describe, measure its throughput, train it for
the budget, and evaluate it on held-out batches. Runs inside an executor's worker.

Returns a `TrialOutcome` (state, objective values, user attrs following `records`); it never
raises for a trial's own failure: out of memory and exceptions become FAIL with the reason, a
non-finite loss becomes PRUNED.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import socket
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError

from sqa_nas.analytics import analyze, mha_baseline
from sqa_nas.compiling import allow_recompiles
from sqa_nas.data import IGNORE_INDEX, accuracy_counts, load_dataset
from sqa_nas.errors import first_error
from sqa_nas.machine import device_name, machine_info
from sqa_nas.model import ModelConfig, build_model, layer_dict
from sqa_nas.search.records import compact_allocation
from sqa_nas.search.space import SearchSpec
from sqa_nas.timing import time_call

Progress = Callable[[dict[str, Any]], None]
CURVE_POINTS = 50
WARMUP_S = 0.5


@dataclass
class TrialJob:
    number: int
    params: dict[str, Any]
    spec: dict[str, Any]  # SearchSpec.model_dump(mode="json"): picklable, version-free
    seed_variant: str | None = None
    mha_reference: dict[str, float] = field(default_factory=dict)  # device name -> tokens/s


@dataclass
class TrialOutcome:
    number: int
    state: str  # COMPLETE, FAIL or PRUNED
    values: dict[str, float] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    mha_reference: dict[str, float] = field(default_factory=dict)  # newly measured


class NonFinite(Exception):
    pass


@functools.lru_cache(maxsize=2)
def _dataset(data_json: str):
    return load_dataset(json.loads(data_json))


@functools.lru_cache(maxsize=4)
def _spec(spec_json: str) -> SearchSpec:
    return SearchSpec.model_validate(json.loads(spec_json))


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def run_trial(job: TrialJob, *, device: torch.device | None = None,
              progress: Progress | None = None) -> TrialOutcome:
    """Evaluate one trial; failures are returned as FAIL / PRUNED outcomes, never raised."""
    t_start = time.perf_counter()
    spec = _spec(json.dumps(job.spec, sort_keys=True))
    device = device or pick_device(spec.execution.device)
    outcome = TrialOutcome(job.number, "COMPLETE")
    attrs = outcome.attrs
    attrs["device"] = {"name": device_name(device), "type": device.type,
                       "host": socket.gethostname(), "node": os.environ.get(
                           "SQA_NAS_NODE", socket.gethostname()),
                       "gpu": device.index if device.type == "cuda" else None}
    info = machine_info(device)
    attrs["versions"] = {k: info[k] for k in ("torch", "cuda", "cudnn", "python", "sqa_nas")}
    timings = attrs["timings"] = {}
    try:
        _evaluate(job, spec, device, outcome, timings, progress)
    except NonFinite as exc:
        outcome.state, attrs["fail_reason"] = "PRUNED", str(exc)
    except torch.OutOfMemoryError as exc:
        outcome.state = "FAIL"
        attrs["fail_reason"] = "out of memory: " + str(exc).splitlines()[0]
    except Exception as exc:  # a trial's own failure must not stop the search
        outcome.state = "FAIL"
        message = first_error(exc) if isinstance(exc, ValidationError) else str(exc)
        attrs["fail_reason"] = f"{type(exc).__name__}: {' '.join(message.split())}"[:500]
        attrs["traceback"] = traceback.format_exc(limit=6)[-4000:]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    timings["total_s"] = time.perf_counter() - t_start
    return outcome


def _evaluate(job: TrialJob, spec: SearchSpec, device: torch.device, outcome: TrialOutcome,
              timings: dict, progress: Progress | None) -> None:
    attrs, objectives = outcome.attrs, set(spec.objectives)
    seed = (spec.sampler.seed or 0) * 100_003 + job.number
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    data = _dataset(json.dumps(spec.data.model_dump(mode="json"), sort_keys=True))
    attrs["corpus"] = {"kind": data.meta.get("kind"), "fingerprint": data.fingerprint,
                       "tokens": data.meta.get("tokens")}
    config = spec.build_config(job.params, data.vocab_size)
    cost = analyze(config, spec.model.seq_len)
    model = build_model(config).to(device)
    timings["build_s"] = time.perf_counter() - t0
    layers = [layer_dict(c) | {"pattern": c.pattern} for c in config.layer_configs]
    attrs.update(model=config.resolved(), seed_variant=job.seed_variant,
                 allocation=compact_allocation(layers))
    attrs["analytics"] = {
        "params": cost.params, "flops_per_token": cost.flops,
        "train_flops_per_token": cost.train_flops, "attention_flops_per_token": cost.attn_flops,
        "kv_cache_bytes_per_token": cost.kv_bytes,
        "analytic_speedup_vs_mha": cost.speedup_vs_mha}
    metrics: dict[str, Any] = {"kv_cache_bytes": cost.kv_bytes, "params": cost.params,
                               "attention_flops": cost.attn_flops}

    if objectives & {"throughput_tokens_per_s", "speedup_vs_mha"}:
        t0 = time.perf_counter()
        metrics["throughput_tokens_per_s"] = measure_throughput(model, spec, device)
        name = attrs["device"]["name"]
        reference = job.mha_reference.get(name)
        if reference is None:  # once per GPU type: the same-shape MHA model on this device
            mha = build_model(mha_baseline(config)).to(device)
            # The best of two medians: every speedup of the study divides by this figure, so
            # one taken while the machine was briefly busy must not skew them all (seen on
            # a 2-core CPU: 394 tokens/s against 9,119 for the same model a moment before).
            reference = max(measure_throughput(mha, spec, device) for _ in range(2))
            outcome.mha_reference[name] = reference
            del mha
        metrics["mha_throughput_tokens_per_s"] = reference
        metrics["speedup_vs_mha"] = metrics["throughput_tokens_per_s"] / reference
        timings["throughput_s"] = time.perf_counter() - t0

    if objectives & {"val_loss"}:
        t0 = time.perf_counter()
        curve, steps, tokens = train(model, data, spec, device, seed, progress)
        timings["train_s"] = time.perf_counter() - t0
        attrs["curve"] = curve
        metrics.update(train_steps=steps, train_tokens=tokens)
        t0 = time.perf_counter()
        metrics.update(evaluate(model, data, spec, device))
        timings["eval_s"] = time.perf_counter() - t0
    # Backends are chosen at the first forward on the device: record what actually ran.
    attrs["layers"] = [x | {"backend": b, "backend_reason": why}
                       for x, (b, why) in zip(layers, model.backends())]
    attrs["metrics"] = metrics
    outcome.values = {o: float(metrics[o]) for o in spec.objectives}


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def measure_throughput(model, spec: SearchSpec, device: torch.device) -> float:
    """Median tokens/s of forward (+ backward) on random tokens, after warm-up; CUDA events
    on GPU (`sqa_nas.timing.time_call`)."""
    t = spec.budget.throughput
    n = t.seq_len or spec.model.seq_len
    tokens = torch.randint(0, model.config.vocab_size, (t.batch_size, n), device=device)
    backward = t.mode == "fwd+bwd"

    def step(_):
        with _autocast(device):
            logits = model(tokens)
        if backward:
            logits.float().square().mean().backward()

    model.train(backward)
    with torch.set_grad_enabled(backward):
        # Warm up for at least `warmup` calls and half a second: the first calls in a fresh
        # worker pay one-time costs (kernel selection, allocator growth, oneDNN primitives
        # per shape) that would otherwise land in the timed samples.
        start, calls = time.perf_counter(), 0
        while calls < t.warmup or time.perf_counter() - start < WARMUP_S:
            step(None)
            calls += 1
        samples = time_call(step, device=device, warmup=0, repeats=t.repeats)
    model.zero_grad(set_to_none=True)
    return t.batch_size * n / statistics.median(samples)


def lr_at(step: int, total: int, spec: SearchSpec) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr (total may be unknown: -1)."""
    b = spec.budget.train
    if step < b.warmup_steps:
        return b.lr * (step + 1) / b.warmup_steps
    if total <= b.warmup_steps:
        return b.lr
    progress = min(1.0, (step - b.warmup_steps) / (total - b.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return b.lr * (b.min_lr_ratio + (1 - b.min_lr_ratio) * cosine)


def _planned_steps(spec: SearchSpec) -> int:
    b = spec.budget.train
    per_step = b.batch_size * spec.model.seq_len
    options = [x for x in (b.steps, b.tokens and -(-b.tokens // per_step)) if x]
    return min(options) if options else -1


def train(model, data, spec: SearchSpec, device: torch.device, seed: int,
          progress: Progress | None = None):
    """AdamW with warm-up + cosine, bf16 autocast on GPU, gradient clipping; stops at the
    first of steps / tokens / seconds. Returns (curve, steps, tokens)."""
    b = spec.budget.train
    n = spec.model.seq_len
    total = _planned_steps(spec)
    # With only a time budget the schedule cannot know its length: hold lr after warm-up.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": b.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=b.lr,
                            betas=(0.9, 0.95), fused=device.type == "cuda")
    step_fn = model
    if b.compile and device.type == "cuda":
        allow_recompiles()  # every trial's model is a new graph of the same forward
        step_fn = torch.compile(model)
    batches = data.train_batches(b.batch_size, n, seed=seed, device=device)
    model.train()
    curve, step, tokens, start = [], 0, 0, time.perf_counter()
    every = max(1, (total if total > 0 else 1000) // CURVE_POINTS)
    while True:
        if total > 0 and step >= total:
            break
        if b.seconds and time.perf_counter() - start >= b.seconds:
            break
        lr = lr_at(step, total, spec)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = next(batches)
        with _autocast(device):
            logits = step_fn(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1),
                               ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if b.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), b.grad_clip)
        opt.step()
        step += 1
        tokens += x.numel()
        if step % every == 0 or step == 1:
            value = loss.item()  # the one host sync: at curve points, not every step
            if not math.isfinite(value):
                raise NonFinite(f"non-finite training loss ({value}) at step {step}")
            curve.append([step, tokens, round(value, 5)])
            if progress:
                progress({"step": step, "of": total, "loss": value, "lr": lr})
    return curve, step, tokens


@torch.no_grad()
def evaluate(model, data, spec: SearchSpec, device: torch.device) -> dict[str, float]:
    """Token-weighted loss, perplexity and next-token accuracy on fixed held-out batches."""
    b = spec.budget.train
    model.eval()
    loss_sum, counted, correct = 0.0, 0, 0
    for x, y in data.val_batches(b.eval_batch_size or b.batch_size, spec.model.seq_len,
                                 b.eval_batches, device=device):
        with _autocast(device):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1),
                                    ignore_index=IGNORE_INDEX, reduction="sum").item()
        c, k = accuracy_counts(logits, y)
        correct, counted = correct + c, counted + k
    if counted == 0:
        raise ValueError("the validation batches have no target tokens")
    loss = loss_sum / counted
    if not math.isfinite(loss):
        raise NonFinite(f"non-finite validation loss ({loss})")
    return {"val_loss": loss, "perplexity": math.exp(min(loss, 700)),
            "accuracy": correct / counted, "val_tokens": counted}


def config_of(job: TrialJob) -> ModelConfig:
    spec = _spec(json.dumps(job.spec, sort_keys=True))
    data = _dataset(json.dumps(spec.data.model_dump(mode="json"), sort_keys=True))
    return spec.build_config(job.params, data.vocab_size)
