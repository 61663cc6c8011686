"""One trial: build the model a trial's params describe, measure its throughput, train it for
the budget and evaluate it on held-out batches (through `sqa_nas.train`), and record what
happened (`sqa_nas.search.records.TrialAttrs`). Runs inside an executor's worker.

Returns a `TrialOutcome` (state, objective values, user attrs as `records.trial_attrs` writes
them); it never raises for a trial's own failure: out of memory and exceptions become FAIL
with the reason, a non-finite loss becomes PRUNED.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ValidationError

from sqa_nas.analytics import analyze, mha_baseline
from sqa_nas.compiling import CompileDecision, decide
from sqa_nas.data import Dataset, load_dataset
from sqa_nas.errors import first_error
from sqa_nas.gpu_share import GpuShare
from sqa_nas.machine import device_name, machine_info
from sqa_nas.model import SQATransformer, build_model, layer_dict
from sqa_nas.search.records import (
    Analytics,
    Corpus,
    Device,
    LayerRecord,
    Metrics,
    Timings,
    TrialAttrs,
    compact_allocation,
    trial_attrs,
)
from sqa_nas.search.space import SearchSpec
from sqa_nas.train import (
    NonFinite,
    Progress,
    ThroughputConfig,
    TrainConfig,
    TrainStep,
    evaluate,
    measure_throughput,
    pick_device,
    train,
)


@dataclass
class TrialJob:
    """What a worker needs to run trial `number`: its params and the search space."""

    number: int
    params: dict[str, Any]
    spec: dict[str, Any]  # SearchSpec.model_dump(mode="json"): picklable, version-free
    seed_variant: str | None = None
    mha_reference: dict[str, float] = field(default_factory=dict)  # device name -> tokens/s
    share_gpu: bool = False  # other trials train on this GPU meanwhile: time it alone
    compile_choice: dict[str, bool] = field(default_factory=dict)  # device name -> compiles


@dataclass
class TrialOutcome:
    """What a worker hands back: the state, objective values and the user attrs to store."""

    number: int
    state: str  # COMPLETE, FAIL or PRUNED
    values: dict[str, float] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)  # user attrs, `records.trial_attrs`
    mha_reference: dict[str, float] = field(default_factory=dict)  # newly measured
    compile_choice: dict[str, bool] = field(default_factory=dict)  # newly decided


@functools.lru_cache(maxsize=2)
def _dataset(data_json: str) -> Dataset:
    return load_dataset(json.loads(data_json))


@functools.lru_cache(maxsize=4)
def _spec(spec_json: str) -> SearchSpec:
    return SearchSpec.model_validate(json.loads(spec_json))


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
    )


def run_trial(
    job: TrialJob, *, device: torch.device | None = None, progress: Progress | None = None
) -> TrialOutcome:
    """Evaluate one trial; failures are returned as FAIL / PRUNED outcomes, never raised."""
    t_start = time.perf_counter()
    spec = _spec(json.dumps(job.spec, sort_keys=True))
    device = device or pick_device(spec.execution.device)
    outcome = TrialOutcome(job.number, "COMPLETE")
    info = machine_info(device)
    record = TrialAttrs(
        device=Device(
            name=device_name(device),
            type=device.type,
            host=socket.gethostname(),
            node=os.environ.get("SQA_NAS_NODE", socket.gethostname()),
            gpu=device.index if device.type == "cuda" else None,
        ),
        versions={k: info[k] for k in ("torch", "cuda", "cudnn", "python", "sqa_nas")},
        timings=Timings(),
    )
    share = GpuShare.for_device(device, enabled=job.share_gpu)
    try:
        _evaluate(job, spec, device, outcome, record, progress, share)
    except NonFinite as exc:
        outcome.state, record.fail_reason = "PRUNED", str(exc)
    except torch.OutOfMemoryError as exc:
        outcome.state = "FAIL"
        record.fail_reason = "out of memory: " + str(exc).splitlines()[0]
    except Exception as exc:  # a trial's own failure must not stop the search
        outcome.state = "FAIL"
        message = first_error(exc) if isinstance(exc, ValidationError) else str(exc)
        record.fail_reason = f"{type(exc).__name__}: {' '.join(message.split())}"[:500]
        record.traceback = traceback.format_exc(limit=6)[-4000:]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    record.timings.total_s = time.perf_counter() - t_start
    if share.enabled:
        record.timings.window_wait_s = share.waited_s
        record.timings.stepped_aside_s = share.stepped_aside_s
    outcome.attrs.update(trial_attrs(record))
    return outcome


def _evaluate(
    job: TrialJob,
    spec: SearchSpec,
    device: torch.device,
    outcome: TrialOutcome,
    record: TrialAttrs,
    progress: Progress | None,
    share: GpuShare,
) -> None:
    objectives, timings = set(spec.objectives), record.timings
    seed = (spec.sampler.seed or 0) * 100_003 + job.number
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    data = _dataset(json.dumps(spec.data.model_dump(mode="json"), sort_keys=True))
    record.corpus = Corpus(
        kind=data.meta.get("kind"), fingerprint=data.fingerprint, tokens=data.meta.get("tokens")
    )
    config = spec.build_config(job.params, data.vocab_size)
    cost = analyze(config, spec.model.seq_len)
    model = build_model(config).to(device)
    timings.build_s = time.perf_counter() - t0
    layers = [layer_dict(c) | {"pattern": c.pattern} for c in config.layer_configs]
    record.model, record.seed_variant = config.resolved(), job.seed_variant
    record.allocation = compact_allocation(layers)
    record.analytics = Analytics(
        params=cost.params,
        flops_per_token=cost.flops,
        train_flops_per_token=cost.train_flops,
        attention_flops_per_token=cost.attn_flops,
        kv_cache_bytes_per_token=cost.kv_bytes,
        analytic_speedup_vs_mha=cost.speedup_vs_mha,
    )
    metrics = Metrics(
        kv_cache_bytes=cost.kv_bytes, params=cost.params, attention_flops=cost.attn_flops
    )

    cfg, measure = train_config(spec), throughput_config(spec)
    timed = bool(objectives & {"throughput_tokens_per_s", "speedup_vs_mha"})
    name = record.device.name
    assert name is not None  # run_trial records device_name(device)
    # One answer per study and device, so every throughput (and the MHA reference) is
    # measured the same way; a study made before the choice existed timed eagerly.
    decided = job.compile_choice.get(name, False if name in job.mha_reference else None)
    t0 = time.perf_counter()
    with share.training():  # compiling runs steps: out of other trials' timing windows
        step, decision = training_step(model, spec, timed, device, decided)
    timings.compile_s, record.compile = time.perf_counter() - t0, decision.record()
    if decided is None:
        outcome.compile_choice[name] = decision.used
    backends = model.backends()

    if timed:
        t0 = time.perf_counter()
        with share.exclusive():  # alone on the GPU: other trials' steps would count
            metrics.throughput_tokens_per_s = measure_throughput(model, measure, device, step)
        reference = job.mha_reference.get(name)
        if reference is None:  # once per GPU type: the same-shape MHA model on this device
            mha = build_model(mha_baseline(config)).to(device)
            mha_step = TrainStep(mha, device, measure.seq_len, compiled=step.compiled)
            # The best of two medians: every speedup of the study divides by this figure, so
            # one taken while the machine was briefly busy must not skew them all (seen on
            # a 2-core CPU: 394 tokens/s against 9,119 for the same model a moment before).
            with share.exclusive():
                reference = max(
                    measure_throughput(mha, measure, device, mha_step) for _ in range(2)
                )
            outcome.mha_reference[name] = reference
            del mha, mha_step
        metrics.mha_throughput_tokens_per_s = reference
        metrics.speedup_vs_mha = metrics.throughput_tokens_per_s / reference
        timings.throughput_s = time.perf_counter() - t0

    if objectives & {"val_loss"}:
        # Shared with other trials, and stepping aside for their throughput windows; held
        # through evaluation too, whose kernels would also land in their windows.
        with share.training():
            t0 = time.perf_counter()
            result = train(
                model,
                data,
                cfg,
                device,
                seed,
                progress,
                step=step,
                between_steps=share.yield_if_wanted,
            )
            ended = time.time()
            timings.train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            scores = evaluate(model, data, cfg, device)
        timings.train_window = (ended - result.seconds, ended)  # the step loop, for the share
        record.curve = result.curve
        metrics.train_steps, metrics.train_tokens = result.steps, result.tokens
        metrics.train_tokens_per_s = round(result.tokens_per_s, 1)
        metrics.val_loss, metrics.perplexity = scores["val_loss"], scores["perplexity"]
        metrics.accuracy, metrics.val_tokens = scores["accuracy"], int(scores["val_tokens"])
        timings.eval_s = time.perf_counter() - t0
    # Backends chosen for the training step on the device: what actually trained.
    record.layers = [
        LayerRecord(**x | {"backend": b, "backend_reason": why})
        for x, (b, why) in zip(layers, backends)
    ]
    record.metrics = metrics
    outcome.values = {o: float(metrics.value(o)) for o in spec.objectives}


def training_step(
    model: SQATransformer,
    spec: SearchSpec,
    timed: bool,
    device: torch.device,
    decided: bool | None,
) -> tuple[TrainStep, CompileDecision]:
    """The `TrainStep` a trial trains and is timed with (`timed`: the throughput batch shape
    too), compiled or not as its study `decided` on this device, or, for the first trial
    there (None), as `sqa_nas.compiling.decide` says for ``budget.train.compile``; warm: a
    compiled step has compiled its blocks for those shapes. The decision carries the
    measured compile seconds."""
    cfg, measure = train_config(spec), throughput_config(spec)
    shapes = {(cfg.batch_size, cfg.seq_len)}
    if timed:
        shapes.add((measure.batch_size, measure.seq_len))
    eager, eager_s = None, None
    if decided is not None:
        decision = CompileDecision(decided, "as its study decided on this device")
    else:
        if cfg.compile == "auto" and device.type == "cuda":
            eager = TrainStep(model, device, cfg.seq_len)
            eager.warm(cfg.batch_size, cfg.seq_len)  # one-time costs out of the figure
            eager_s = min(eager.warm(cfg.batch_size, cfg.seq_len) for _ in range(3))
        n, planned = spec.budget.n_trials, cfg.planned_steps
        graphs = min(spec.layouts(), n * spec.model.n_layers) * len(shapes)
        decision = decide(cfg.compile, device, graphs, n * planned if planned > 0 else -1, eager_s)
    if not decision.used:
        return eager or TrainStep(model, device, cfg.seq_len), decision
    try:
        step = TrainStep(model, device, cfg.seq_len, compiled=True)
        first = sum(step.warm(*s) for s in sorted(shapes))
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # a backend dynamo cannot trace whole: train eagerly, say why
        torch._dynamo.reset()
        reason = f"eager: compiling failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        return TrainStep(model, device, cfg.seq_len), CompileDecision(False, reason[:300])
    decision.compile_s = round(first - len(shapes) * (eager_s or 0.0), 2)
    return step, decision
