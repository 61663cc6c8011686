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
import math
import os
import socket
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ValidationError

from sqa_nas import checkpoint
from sqa_nas.analytics import analyze, mha_baseline
from sqa_nas.compiling import CompileDecision, decide
from sqa_nas.data import Dataset, load_dataset
from sqa_nas.errors import first_error
from sqa_nas.gpu_share import GpuShare
from sqa_nas.machine import device_name, machine_info
from sqa_nas.model import ModelConfig, SQATransformer, build_model, init_weights, layer_dict
from sqa_nas.search.budgets import crn_seeds, throughput_config, train_config
from sqa_nas.search.choices import compact_allocation
from sqa_nas.search.noise import Noise
from sqa_nas.search.records import (
    Analytics,
    Corpus,
    Device,
    LayerRecord,
    Metrics,
    Rung,
    Timings,
    TrialAttrs,
    trial_attrs,
)
from sqa_nas.search.scheduler import Segment
from sqa_nas.search.space import SearchSpec
from sqa_nas.stats import std
from sqa_nas.throughput import Throughput, measure
from sqa_nas.train import (
    NonFinite,
    Progress,
    TrainState,
    TrainStep,
    evaluate,
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
    # device name -> MHA tokens/s: only what marks a study timed before compile choices
    mha_reference: dict[str, float] = field(default_factory=dict)
    share_gpu: bool = False  # other trials train on this GPU meanwhile: time it alone
    compile_choice: dict[str, bool] = field(default_factory=dict)  # device name -> compiles
    seeds: list[int] = field(default_factory=list)  # [] : `crn_seeds(spec, budget.seeds)`
    # The study's noise trial: train with this many seeds (auto: 3 on a GPU, none on the
    # CPU) and time each; None: an ordinary trial.
    noise_seeds: int | str | None = None
    # Multi-fidelity (`search.scheduler`): what this job trains; None: the whole budget.
    segment: Segment | None = None


@dataclass
class TrialOutcome:
    """What a worker hands back: the state, objective values and the user attrs to store."""

    number: int
    state: str  # COMPLETE, FAIL or PRUNED
    values: dict[str, float] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)  # user attrs, `records.trial_attrs`
    compile_choice: dict[str, bool] = field(default_factory=dict)  # newly decided
    noise: dict[str, Any] | None = None  # the noise trial's `noise.Noise` fields


@functools.lru_cache(maxsize=2)
def _dataset(data_json: str) -> Dataset:
    return load_dataset(json.loads(data_json))


@functools.lru_cache(maxsize=4)
def _spec(spec_json: str) -> SearchSpec:
    return SearchSpec.model_validate(json.loads(spec_json))


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
    seeds = job.seeds or crn_seeds(spec, spec.budget.seeds)
    noise_n = _noise_seeds(job.noise_seeds, device)
    if noise_n:
        seeds = crn_seeds(spec, max(noise_n, len(seeds)))
        record.noise_trial = True
    elif job.noise_seeds is not None:  # auto, on a CPU: say so once, in the study
        reason = "off on the CPU (budget.noise_seeds: auto; set a number to measure it)"
        outcome.noise = Noise(n=0, reason=reason).model_dump()
    record.seeds = seeds
    t0 = time.perf_counter()
    data = _dataset(json.dumps(spec.data.model_dump(mode="json"), sort_keys=True))
    record.corpus = Corpus(
        kind=data.meta.get("kind"), fingerprint=data.fingerprint, tokens=data.meta.get("tokens")
    )
    config = spec.build_config(job.params, data.vocab_size)
    cost = analyze(config, spec.model.seq_len)
    model = build_model(config, seed=seeds[0]).to(device)
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
    metrics = record.metrics = Metrics(
        kv_cache_bytes=cost.kv_bytes, params=cost.params, attention_flops=cost.attn_flops
    )

    segment = job.segment
    later = segment is not None and segment.continues  # timed in the trial's first segment
    if segment is not None and later:
        record.metrics = metrics = Metrics.model_validate(segment.carry)
    timed = bool(objectives & {"throughput_tokens_per_s", "speedup_vs_mha"}) and not later
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

    measured: list[Throughput] = []
    scores: list[dict[str, float]] = []  # per seed
    on_the_way: list[tuple[int, dict[str, float]]] = []  # a baseline's rung evaluations
    for i, seed in enumerate(seeds):
        if i:
            init_weights(model, seed)  # in place: the compiled blocks hold these modules
        if timed and (i == 0 or noise_n):  # the noise trial times every seed's model
            t0 = time.perf_counter()
            measured.append(_throughput(model, config, spec, device, step, share))
            timings.throughput_s = (timings.throughput_s or 0.0) + time.perf_counter() - t0
        if objectives & {"val_loss"}:
            part = segment if i == 0 else None  # more seeds: the noise trial, a baseline
            got, evaluated = _train(
                model, data, spec, device, seed, step, share, progress, record, part
            )
            scores.append(got)
            on_the_way += evaluated
    if measured:
        _throughput_metrics(metrics, measured)
    losses = [x["val_loss"] for x in scores]
    if scores:  # means over the seeds (the same validation tokens for each)
        metrics.val_loss = statistics.fmean(losses)
        if len(losses) > 1:
            metrics.val_loss_std, metrics.val_loss_seeds = std(losses), losses
        metrics.perplexity = math.exp(min(metrics.val_loss, 700))
        metrics.accuracy = statistics.fmean(x["accuracy"] for x in scores)
        metrics.val_tokens = int(scores[0]["val_tokens"])
    if noise_n:
        outcome.noise = Noise.of(losses, measured, name, job.number).model_dump()
    # Backends chosen for the training step on the device: what actually trained.
    record.layers = [
        LayerRecord(**x | {"backend": b, "backend_reason": why})
        for x, (b, why) in zip(layers, backends)
    ]
    outcome.values = {o: float(metrics.value(o)) for o in spec.objectives}
    if segment is not None:
        _rungs(segment, outcome, record, on_the_way)


def _rungs(
    segment: Segment,
    outcome: TrialOutcome,
    record: TrialAttrs,
    on_the_way: list[tuple[int, dict[str, float]]],
) -> None:
    """The rungs a segment reached (a baseline's on its way, then its end's) in `record`; a
    segment that leaves a checkpoint ends PAUSED, waiting for a promotion."""
    rungs = []
    for i, (tokens, scores) in enumerate(on_the_way):  # a baseline's, at rungs 0, 1, ...
        values = outcome.values | {k: v for k, v in scores.items() if k in outcome.values}
        rungs.append(Rung(rung=i, tokens=tokens, values=values, decision="baseline"))
    end = "paused" if segment.save else "complete"
    reached = record.metrics.train_tokens or segment.tokens
    rungs.append(
        Rung(rung=segment.rung, tokens=reached, values=dict(outcome.values), decision=end)
    )
    record.rungs = rungs  # assigned, not appended: the record stores the fields set
    if segment.save:
        outcome.state, record.checkpoint = "PAUSED", segment.save


def _noise_seeds(asked: int | str | None, device: torch.device) -> int:
    """How many seeds the noise trial trains with (0: not the noise trial, or it is off)."""
    if asked == "auto":
        return 3 if device.type == "cuda" else 0
    return int(asked or 0)


_REFERENCE: dict[str, TrainStep] = {}  # this worker's MHA step, by model and device


def _throughput(
    model: SQATransformer,
    config: ModelConfig,
    spec: SearchSpec,
    device: torch.device,
    step: TrainStep,
    share: GpuShare,
) -> Throughput:
    """The trial's step timed in rounds paired with the same-shape MHA model's step, built
    once per worker (and kept: its weights never change) and timed anew beside every trial."""
    measure_cfg = throughput_config(spec)
    mha = mha_baseline(config)
    key = json.dumps([mha.resolved(), str(device), step.compiled], sort_keys=True)
    if key not in _REFERENCE:
        _REFERENCE.clear()  # one reference per worker: a study has one model shape
        reference = build_model(mha, seed=0).to(device)
        _REFERENCE[key] = TrainStep(reference, device, measure_cfg.seq_len, compiled=step.compiled)
    # The rounds run until the intervals of the study's own objectives are narrow.
    names = {"throughput_tokens_per_s": "throughput", "speedup_vs_mha": "speedup"}
    watch = [w for o, w in names.items() if o in spec.objectives]
    with share.exclusive():  # alone on the GPU: other trials' steps would count
        return measure(step, measure_cfg, device, _REFERENCE[key], watch)


def _throughput_metrics(metrics: Metrics, measured: list[Throughput]) -> None:
    """The first measurement's figures (the noise trial's later ones only feed `noise`)."""
    first = measured[0]
    metrics.throughput_tokens_per_s = first.tokens_per_s
    if math.isfinite(first.rel_ci95):  # too few rounds for an interval: none is stored
        metrics.throughput_rel_ci95 = round(first.rel_ci95, 5)
    metrics.mha_throughput_tokens_per_s = first.reference_tokens_per_s
    metrics.speedup_vs_mha = first.speedup
    if first.speedup_ci95 is not None:
        low, high = first.speedup_ci95
        metrics.speedup_ci95 = (round(low, 5), round(high, 5))
    metrics.throughput_rounds = first.rounds
    metrics.noisy_throughput = first.noisy


def _train(
    model: SQATransformer,
    data: Dataset,
    spec: SearchSpec,
    device: torch.device,
    seed: int,
    step: TrainStep,
    share: GpuShare,
    progress: Progress | None,
    record: TrialAttrs,
    segment: Segment | None = None,
) -> tuple[dict[str, float], list[tuple[int, dict[str, float]]]]:
    """Train the model with `seed` (data order) and evaluate it: the whole budget, or a
    `segment` of it (resumed from its checkpoint, evaluated at a baseline's rungs on the
    way, saved at its end). Returns the scores and the (tokens, scores) on the way; the
    first seed's curve, steps and speed go in `record`, timings add up over seeds."""
    cfg, timings, metrics = train_config(spec), record.timings, record.metrics
    per_step = cfg.batch_size * cfg.seq_len
    state: TrainState | None = None
    if segment is not None and segment.resume:
        weights, state, _ = checkpoint.load(segment.resume, device)
        model.load_state_dict(weights)
    # Steps to stop at: a baseline's rungs on the way, then the segment's end (None: the
    # budget, whatever bounds it: steps, tokens or seconds).
    ends = [*segment.eval_at, segment.tokens] if segment else []
    stops: list[int | None] = [-(-t // per_step) for t in ends] or [None]
    start = state.tokens if state is not None else 0
    wait, evaluated, windows = share.yield_if_wanted, [], []
    # Shared with other trials, and stepping aside for their throughput windows; held
    # through evaluation too, whose kernels would also land in their windows.
    with share.training():
        for stop in stops:
            t0 = time.perf_counter()
            result = train(
                model,
                data,
                cfg,
                device,
                seed,
                progress,
                step=step,
                between_steps=wait,
                stop_step=stop,
                resume=state,
            )
            ended, state = time.time(), result.state
            timings.train_s = (timings.train_s or 0.0) + time.perf_counter() - t0
            windows.append((ended - result.seconds, ended))  # for the training-step share
            t0 = time.perf_counter()
            scores = evaluate(model, data, cfg, device)
            timings.eval_s = (timings.eval_s or 0.0) + time.perf_counter() - t0
            if stop != stops[-1]:
                evaluated.append((result.tokens, scores))
    if segment is not None and segment.save:
        meta = {"rung": segment.rung, "seed": seed, "model": record.model}
        assert state is not None  # train() always leaves one
        checkpoint.save(segment.save, model, state, meta)
    if timings.train_window is not None:
        timings.train_windows = [*(timings.train_windows or [timings.train_window]), *windows]
    else:
        timings.train_window = windows[0]
        if len(windows) > 1:
            timings.train_windows = windows
        record.curve = result.curve
        metrics.train_steps, metrics.train_tokens = result.steps, result.tokens
        seconds = sum(b - a for a, b in windows)
        speed = (result.tokens - start) / seconds if seconds > 0 else 0.0
        metrics.train_tokens_per_s = round(speed, 1)
    return scores, evaluated


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
