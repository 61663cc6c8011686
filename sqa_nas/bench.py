"""Attention benchmarks: correctness first, then timing (CUDA events after warm-up).

`time_call` is the one timing routine of the project; the search's throughput measurement
uses it too. `run_bench` times one cell (a dtype, head_dim, batch, mask, mode, scope and
backend) over variants x sequence lengths; `run_grid` runs many cells under one machine
header. Every row carries its whole configuration, the backend and kernel that ran, ms,
TFLOP/s from the mask's real density (`count_visible`), the speedup over the MHA and GQA
rows of the same cell, and, when several backends were timed on the same cell, the fraction
of the fastest one's TFLOP/s. A cell that fails (out of memory, a kernel error, a backend
that refuses) records the error in its row and the run goes on; a row that never returns (a
kernel build that hangs cannot be interrupted from Python) is cut by `row_timeout_s`: every
thread's stack is printed, the process exits, and the results file saved before the row names
it under "running".

Scopes: ``kernel`` times the attention call alone on (B, H, N, D) inputs; ``layer`` the
whole `SparseQueryAttention` (projections, RoPE when set); ``model`` a forward (or training
step) of the paper's model family under autocast, as the paper's Table 3 does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import ValidationError

from sqa_nas.attention import AttentionConfig, BlockSparseLayout
from sqa_nas.attention.masks import count_visible
from sqa_nas.attention.reference import reference_layer
from sqa_nas.errors import UserError, first_error
from sqa_nas.layer import SparseQueryAttention
from sqa_nas.machine import machine_info
from sqa_nas.registry import get_backend, get_variant, register_backend
from sqa_nas.timing import row_watchdog, time_call

SCHEMA = "sqa-nas/bench/2"
#: How the files' samples were taken (see `time_call`); files without it synchronised the
#: device before every CUDA repeat, adding the host's launch time to each sample.
TIMING = "CUDA events around each call; warm-up calls alone, repeats queued back to back"
MODES = ("fwd", "bwd", "fwd+bwd")
SCOPES = ("kernel", "layer", "model")
# "native": each variant's own mask (SW-SQA its window, ...); the others override every
# variant's mask family, so that MHA heads can be compared with SQA heads under one mask.
PATTERNS = ("native", "dense", "window", "flex", "block_sparse")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The long-context masks: a 4096-token window, plus 16 global tokens for Flex-SQA.
DEFAULT_WINDOW = 4096
DEFAULT_GLOBAL_TOKENS = 16
# A row (check, compile, warm-up, repeats) past this is taken to hang; 1M-token dense MHA
# rows take about a minute on an H200.
DEFAULT_ROW_TIMEOUT_S = 900.0
# Backward costs 2.5x the forward (flash-attention's convention: 5 matmuls vs 2).
_MODE_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}
_PROJ_FACTOR = {"fwd": 1.0, "bwd": 2.0, "fwd+bwd": 3.0}
# Keys that, with the variant and length, identify a cell: rows equal on these but for the
# backend are compared for `fraction_of_best`.
_CELL_KEYS = ("variant", "seq_len", "batch", "n_heads", "head_dim", "dtype", "causal",
              "pattern", "mask", "mode", "scope")


def paper_family(head_dim: int, n_heads: int = 16) -> tuple[str, dict]:
    """(name, ModelConfig fields) of the paper's Table 3 model at `head_dim`: d_model =
    H * head_dim, 8 layers, SwiGLU 3 * d_model, vocab 10,000. head_dim 16 is the paper's own
    model; 64 and 128 are the presets "paper-hd64" / "paper-hd128" where kernels run well."""
    from sqa_nas.model import PRESETS

    fields = dict(vocab_size=10_000, d_model=n_heads * head_dim, n_layers=8, n_heads=n_heads,
                  ffn_dim=3 * n_heads * head_dim)
    for name, preset in PRESETS.items():
        if preset == fields:
            return name, fields
    return f"paper-family-hd{head_dim}-h{n_heads}", fields


@dataclass(frozen=True)
class BenchSettings:
    """One benchmark cell: every field fixed but the variants and lengths it loops over.
    `expand_grid` makes the cells of a sweep; `run_bench` runs one, `run_grid` many."""

    variants: Sequence[str]
    seq_lens: Sequence[int]
    batch: int = 1
    n_heads: int = 16
    head_dim: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    backend: str = "auto"
    mode: str = "fwd"
    scope: str = "kernel"
    causal: bool = True
    window: int | None = None
    global_tokens: int | None = None
    warmup: int = 3
    repeats: int = 10
    baselines: Sequence[str] = ("MHA",)
    check: bool = True
    seed: int = 0
    extra: dict = field(default_factory=dict)
    pattern: str = "native"
    preset: str | None = None  # model scope: a PRESETS name; None: `paper_family(head_dim)`
    n_layers: int | None = None  # model scope: override the preset's layer count
    check_len: int = 512  # the correctness check runs at min(N, check_len) tokens
    budget_s: float | None = None  # see `time_call`
    min_repeats: int = 2

    def validate(self) -> None:
        for name in list(self.variants) + list(self.baselines):
            get_variant(name)  # UserError naming the unknown variant
        if not self.variants:
            raise UserError("--variants: give at least one variant")
        if any(n < 1 for n in self.seq_lens) or not self.seq_lens:
            raise UserError(f"--seq-lens: lengths must be positive, got {list(self.seq_lens)}")
        if self.mode not in MODES:
            raise UserError(f"--mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.scope not in SCOPES:
            raise UserError(f"--scope: {self.scope!r} is not one of {', '.join(SCOPES)}")
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.pattern not in PATTERNS:
            raise UserError(f"--patterns: {self.pattern!r} is not one of {', '.join(PATTERNS)}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {self.device}: no CUDA GPU is visible on this machine; "
                            "use --device cpu")
        if self.device not in ("cpu",) and not self.device.startswith("cuda"):
            raise UserError(f"--device: {self.device!r} is not 'cpu' or 'cuda[:N]'")
        for name in ("batch", "n_heads", "head_dim", "repeats", "check_len"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if self.backend != "auto":
            get_backend(backend_spec(self.backend))  # unknown names fail before any timing
        if self.preset is not None:
            from sqa_nas.model import PRESETS

            if self.preset not in PRESETS:
                raise UserError(f"--preset: unknown model preset {self.preset!r}; presets: "
                                f"{', '.join(PRESETS)}")
        if self.warmup < 0:
            raise UserError(f"--warmup must be >= 0, got {self.warmup}")
        for name in list(self.baselines) + list(self.variants):
            try:  # --window, --global-tokens and the variant together: refused before timing
                self.layer_config(name)
            except ValidationError as exc:
                raise UserError(f"{name}: {first_error(exc)}") from None

    def mask_overrides(self) -> dict:
        """AttentionConfig fields that set the mask, per `pattern`."""
        window = self.window if self.window is not None else DEFAULT_WINDOW
        globals_ = self.global_tokens if self.global_tokens is not None else DEFAULT_GLOBAL_TOKENS
        if self.pattern == "dense":
            return {"window": None, "global_tokens": 0, "block_sparse": None}
        if self.pattern == "window":
            return {"window": window, "global_tokens": 0, "block_sparse": None}
        if self.pattern == "flex":
            return {"window": window, "global_tokens": globals_, "block_sparse": None}
        if self.pattern == "block_sparse":
            return {"window": None, "global_tokens": 0, "block_sparse": BlockSparseLayout()}
        out = {}  # native: the variant's own mask, unless --window / --global-tokens say
        if self.window is not None:
            out["window"] = self.window
        if self.global_tokens is not None:
            out["global_tokens"] = self.global_tokens
        return out

    def layer_config(self, name: str) -> AttentionConfig:
        if self.scope == "model":
            return self.model_config(name).layer_configs[0]
        overrides: dict = {"causal": self.causal, "backend": backend_spec(self.backend),
                           **self.mask_overrides()}
        return get_variant(name).config(d_model=self.n_heads * self.head_dim,
                                        n_heads=self.n_heads, head_dim=self.head_dim,
                                        **overrides)

    def model_config(self, name: str):
        from sqa_nas.model import PRESETS, ModelConfig

        fields = (dict(PRESETS[self.preset]) if self.preset
                  else paper_family(self.head_dim, self.n_heads)[1])
        if self.n_layers is not None:
            fields["n_layers"] = self.n_layers
        attention = {"variant": name, "backend": backend_spec(self.backend),
                     **self.mask_overrides()}
        return ModelConfig(**fields, causal=self.causal, attention=attention)


def backend_spec(spec: str) -> str:
    """The registered name of a backend spec. ``"flash_attn:pack_gqa=0"`` builds, once,
    the backend's class with those keyword options and registers it under the spec itself,
    so options can be benchmarked side by side with the default instance."""
    if ":" not in spec:
        return spec
    from sqa_nas.registry import list_backends

    if any(b.name == spec for b in list_backends()):
        return spec
    base, *options = spec.split(":")
    kwargs = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise UserError(f"backend {spec!r}: options are key=value, got {option!r}")
        kwargs[key] = {"0": False, "1": True, "false": False, "true": True,
                       "none": None}.get(value.lower(), value)
    cls = type(get_backend(base))
    try:
        backend = cls(**kwargs)
    except TypeError:
        raise UserError(f"backend {base!r} takes no option {', '.join(kwargs)}") from None
    backend.name = spec
    register_backend(backend)
    return spec


def check_layer(layer: SparseQueryAttention, n: int, dtype: torch.dtype,
                device: torch.device, seed: int = 0, backward: bool = False
                ) -> tuple[float, float]:
    """(error, tolerance) of the layer's output at length n against the float64 reference;
    the tolerance is twice the error of the plain formula in `dtype`, plus a small floor.
    With `backward`, the input's gradient is checked the same way (the layer then runs the
    backend it trains with), and the worse of the two, relative to its tolerance, is
    returned."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, n, layer.config.d_model, generator=gen).to(device, dtype)
    if not backward:
        with torch.no_grad():
            outs = [layer(x), reference_layer(layer, x.double(), torch.float64),
                    reference_layer(layer, x, dtype)]
        return _error_and_tolerance(*outs)
    grad_out = torch.randn(1, n, layer.config.d_model, generator=gen).to(device, dtype)
    outs, grads = [], []
    for run, leaf in ((layer, x), (lambda t: reference_layer(layer, t, torch.float64),
                                   x.double()), (lambda t: reference_layer(layer, t, dtype), x)):
        leaf = leaf.detach().requires_grad_()
        out = run(leaf)
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out, leaf, grad_out.to(out.dtype))[0])
    layer.zero_grad(set_to_none=True)
    return max(_error_and_tolerance(*outs), _error_and_tolerance(*grads),
               key=lambda et: et[0] / et[1])


def _error_and_tolerance(out, ref, plain) -> tuple[float, float]:
    """|out - ref| against twice |plain - ref| (ref in float64, plain in the working dtype)."""
    out, ref, plain = out.double(), ref.double(), plain.double()
    scale = ref.abs().max().item() or 1.0
    return ((out - ref).abs().max().item(),
            2 * (plain - ref).abs().max().item() + 1e-6 * scale)


def _kernel_flops(layer: SparseQueryAttention, batch: int, n: int, mode: str) -> float:
    c = layer.config
    return 4.0 * batch * c.attn_heads * c.head_dim * count_visible(layer.mask_spec, n) \
        * _MODE_FACTOR[mode]


def _proj_flops(layer: SparseQueryAttention, batch: int, n: int, mode: str) -> float:
    params = sum(p.numel() for p in layer.parameters())
    return 2.0 * batch * n * params * _PROJ_FACTOR[mode]


def model_flops(config, batch: int, n: int, mode: str = "fwd") -> float:
    """Whole-model FLOPs (`sqa_nas.analytics`, LM head included); the attention products
    scale by the backward factor of attention, the rest by that of matmuls."""
    from sqa_nas.analytics import analyze

    cost = analyze(config, n)
    tokens = batch * n
    return tokens * (cost.attn_flops * _MODE_FACTOR[mode]
                     + (cost.flops - cost.attn_flops) * _PROJ_FACTOR[mode])


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _timed_fn(layer, settings: BenchSettings, n: int, device, dtype, name: str):
    """(setup, fn, model) for the configured scope and mode; `time_call` times only `fn`.
    `model` is the SQATransformer in model scope (to read the backends it used), else None."""
    b, c = settings.batch, layer.config
    grad = settings.mode != "fwd"
    model = None
    if settings.scope == "model":
        from sqa_nas.model import build_model

        with torch.device(device):  # initialised where it runs: 0.5B parameters at hd128
            model = build_model(settings.model_config(name))  # float32 weights
        model.train(grad)
        tokens = torch.randint(0, model.config.vocab_size, (b, n), device=device)

        def run():
            with _autocast(device, dtype):  # the paper's Table 3 setup: bf16 autocast
                return model(tokens)

        def loss():
            with _autocast(device, dtype):
                logits = model(tokens)
            return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())

        if settings.mode == "fwd":
            def forward(_):
                with torch.inference_mode():
                    run()
            return None, forward, model
        if settings.mode == "fwd+bwd":
            return None, lambda _: loss().backward(), model
        return loss, (lambda value: value.backward()), model
    if settings.scope == "layer":
        inputs = (torch.randn(b, n, c.d_model, device=device, dtype=dtype, requires_grad=grad),)
        run = layer
    else:
        problem = layer.problem(n, device.type, dtype, grad)
        backend, _ = layer.select(problem)
        inputs = tuple(torch.randn(b, heads, n, c.head_dim, device=device, dtype=dtype,
                                   requires_grad=grad)
                       for heads in (c.attn_heads, c.n_kv_heads, c.n_kv_heads))

        def run(q, k, v):
            return backend.forward(q, k, v, problem)

    if settings.mode == "fwd":
        def forward(_):
            with torch.no_grad():
                run(*inputs)
        return None, forward, model
    if settings.mode == "fwd+bwd":
        return None, lambda _: run(*inputs).sum().backward(), model
    # bwd: the forward runs untimed in setup.
    return (lambda: run(*inputs).sum()), (lambda loss: loss.backward()), model


def timed_step(settings: BenchSettings, name: str, n: int):
    """(setup, fn) of one benchmark row, as `time_call` takes them: for profiling a row
    outside `run_bench` (``profile_call(fn, device)``)."""
    device, dtype = torch.device(settings.device), DTYPES[settings.dtype]
    with torch.device(device):
        layer = SparseQueryAttention(settings.layer_config(name)).to(dtype)
    setup, fn, _ = _timed_fn(layer, settings, n, device, dtype, name)
    return setup, fn


def run_bench(settings: BenchSettings, progress: Callable[[str], None] | None = None) -> dict:
    """Benchmark every (variant, seq_len) of one cell; returns {"schema", "machine",
    "settings", "rows"}."""
    settings.validate()
    device = torch.device(settings.device)
    rows = _bench_cell(settings, progress)
    return {"schema": SCHEMA, "machine": machine_info(device), "timing": TIMING,
            "settings": _settings_dict(settings), "rows": rows}


def _bench_cell(settings: BenchSettings, progress, before_row=None,
                row_timeout_s: float | None = None) -> list[dict]:
    device = torch.device(settings.device)
    dtype = DTYPES[settings.dtype]
    names = list(dict.fromkeys(list(settings.baselines) + list(settings.variants)))
    rows = []
    torch.manual_seed(settings.seed)
    for n in settings.seq_lens:
        for name in names:
            if progress:
                progress(f"{name} @ {n} ({_cell_label(settings)})")
            if before_row:
                before_row(rows, {"variant": name, "seq_len": n, "cell": _cell_label(settings),
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "row_timeout_s": row_timeout_s})
            with row_watchdog(row_timeout_s):
                rows.append(_bench_one(settings, name, n, device, dtype))
            _release(device)
        _add_speedups([r for r in rows if r["seq_len"] == n], settings.baselines)
    return rows


def expand_grid(base: BenchSettings, **axes: Sequence) -> list[BenchSettings]:
    """Cells of the cross product of `axes` (BenchSettings field -> values) over `base`.
    Fields not named keep base's value."""
    names = [k for k, v in axes.items() if v]
    for k in names:
        if not hasattr(base, k):
            raise UserError(f"no benchmark setting named {k!r}")
    return [dataclasses.replace(base, **dict(zip(names, combo)))
            for combo in itertools.product(*(axes[k] for k in names))]


def run_grid(cells: Sequence[BenchSettings], progress: Callable[[str], None] | None = None,
             extra: dict | None = None,
             on_cell: Callable[[dict], None] | None = None,
             row_timeout_s: float | None = None) -> dict:
    """Run every cell under one machine header; rows of the same cell timed with several
    backends get `fraction_of_best`. Returns {"schema", "machine", "settings", "grid",
    "rows"}. `on_cell` gets the result so far (``"partial": True``) after every cell, so a
    run stopped by a time limit still leaves its finished rows behind, and before every row
    with that row under ``"running"``, so a run cut by `row_timeout_s` (see `row_watchdog`)
    says which row hung."""
    if not cells:
        raise UserError("the benchmark grid is empty")
    for cell in cells:
        cell.validate()
    device = torch.device(cells[0].device)
    dicts = [_settings_dict(c) for c in cells]
    grid = {}  # what varies across cells, summarised before anything runs
    for k in dicts[0]:
        values = list(dict.fromkeys(json.dumps(d[k], default=str) for d in dicts))
        if len(values) > 1:
            grid[k] = [json.loads(v) for v in values]
    result = {"schema": SCHEMA, "machine": machine_info(device), "timing": TIMING,
              "settings": dicts[0] | (extra or {}), "grid": grid, "rows": []}
    def before_row(done: list[dict], row: dict) -> None:  # done: this cell's rows so far
        if on_cell is not None:
            on_cell(result | {"rows": result["rows"] + done, "partial": True, "running": row})

    for cell in cells:
        result["rows"] += _bench_cell(cell, progress, before_row, row_timeout_s)
        if on_cell is not None:
            on_cell(result | {"partial": True})
    add_fraction_of_best(result["rows"])
    return result


_CHECKS: dict[tuple, tuple[float, float]] = {}


def _check(config: AttentionConfig, backend: str, n: int, dtype, device,
           backward: bool = False) -> dict:
    """The correctness check of `config` on `backend` at min(N, check_len) tokens, of the
    gradient too when the timed row runs a backward; cached per process, since it does not
    depend on the timed length (and each new shape costs a compile on FlexAttention)."""
    key = (config.model_copy(update={"backend": backend}).model_dump_json(), str(dtype),
           str(device), n, backward)
    if key not in _CHECKS:
        checked = SparseQueryAttention(config.model_copy(update={"backend": backend}))
        _CHECKS[key] = check_layer(checked.to(device, dtype), n, dtype, device,
                                   backward=backward)
    err, tol = _CHECKS[key]
    return {"check_error": err, "check_tolerance": tol, "check_ok": err <= tol, "check_len": n}


def _bench_one(settings: BenchSettings, name: str, n: int, device, dtype) -> dict:
    grad = settings.mode != "fwd"
    row: dict = {"variant": name, "seq_len": n, "batch": settings.batch,
                 "n_heads": settings.n_heads, "head_dim": settings.head_dim,
                 "mode": settings.mode, "scope": settings.scope, "dtype": settings.dtype,
                 "causal": settings.causal, "pattern": settings.pattern,
                 "backend_requested": settings.backend,
                 "baseline": name in settings.baselines}
    try:
        config = settings.layer_config(name)
        with torch.device(device):
            layer = SparseQueryAttention(config).to(dtype)
        row.update(n_q_heads=config.n_q_heads, n_kv_heads=config.n_kv_heads,
                   head_dim=config.head_dim, n_heads=config.n_heads, pattern=config.pattern,
                   window=config.window, global_tokens=config.global_tokens,
                   mask=layer.mask_spec.describe(),
                   density=count_visible(layer.mask_spec, n) / n**2)
        if settings.scope == "model":
            row["model"] = settings.preset or paper_family(settings.head_dim,
                                                           settings.n_heads)[0]
        problem = layer.problem(n, device.type, dtype, grad)
        backend, reason = layer.select(problem)
        row.update(backend=backend.name, backend_reason=reason,
                   kernel=backend.kernel_name(problem, _probe_inputs(backend, problem,
                                                                     device, dtype)))
        if settings.check:
            row.update(_check(config, backend.name, min(n, settings.check_len), dtype, device,
                              backward=grad))
            if not row["check_ok"]:
                row["error"] = (f"correctness check failed: error {row['check_error']:.3g} > "
                                f"tolerance {row['check_tolerance']:.3g}")
                return row
        setup, fn, model = _timed_fn(layer, settings, n, device, dtype, name)
        samples = time_call(fn, device=device, warmup=settings.warmup,
                            repeats=settings.repeats, setup=setup,
                            budget_s=settings.budget_s, min_repeats=settings.min_repeats)
        # What ran, read again after the calls (a backend may have fallen back inside), once
        # the timed inputs are freed: the probe's own q / k / v then reuse their memory
        # instead of adding to it (GBs at 1M tokens). Out of memory here keeps the timing
        # and the kernel read before it.
        del setup, fn
        _release(device)
        with contextlib.suppress(torch.cuda.OutOfMemoryError):
            row["kernel"] = backend.kernel_name(problem, _probe_inputs(backend, problem,
                                                                       device, dtype))
        if model is not None:
            row["backend"] = "+".join(sorted({b for b, _ in model.backends()}))
    except torch.cuda.OutOfMemoryError:
        row["error"] = "out of memory"
        return row
    except UserError as exc:
        row["error"] = str(exc)
        return row
    except Exception as exc:  # a kernel that fails must not end the whole sweep
        row["error"] = _one_line(exc)
        return row
    median = statistics.median(samples)
    if settings.scope == "model":
        flops = model_flops(model.config, settings.batch, n, settings.mode)
    else:
        flops = _kernel_flops(layer, settings.batch, n, settings.mode)
        if settings.scope == "layer":
            flops += _proj_flops(layer, settings.batch, n, settings.mode)
    row.update(ms=median * 1e3, ms_min=min(samples) * 1e3,
               ms_spread=(max(samples) - min(samples)) * 1e3, repeats=len(samples),
               flops=flops, tflops=flops / median / 1e12,
               tokens_per_s=settings.batch * n / median)
    return row


def _probe_inputs(backend, problem, device, dtype):
    """Uninitialised (q, k, v) of the problem's shape, for backends whose kernel choice
    depends on the tensors (SDPA's dispatcher); None for the others."""
    if backend.name != "sdpa":
        return None
    shape = (1, problem.seq_len, problem.head_dim)
    return tuple(torch.empty(shape[0], h, *shape[1:], device=device, dtype=dtype)
                 for h in (problem.n_q_heads, problem.n_kv_heads, problem.n_kv_heads))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if "out of memory" in message.lower():
        return "out of memory"
    return f"{type(exc).__name__}: {message}"[:300]


def _release(device: torch.device) -> None:
    """Free the previous row's tensors before the next (a 1M-token row needs the room)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cell_label(s: BenchSettings) -> str:
    return (f"{s.scope} {s.mode} {s.dtype} hd{s.head_dim} b{s.batch} "
            f"{'causal' if s.causal else 'non-causal'} {s.pattern} {s.backend}")


def _add_speedups(rows: list[dict], baselines: Sequence[str]) -> None:
    for base in baselines:
        ref = next((r for r in rows if r["variant"] == base and "ms" in r), None)
        for r in rows:
            if ref is not None and "ms" in r:
                r[f"speedup_vs_{base}"] = ref["ms"] / r["ms"]


def add_fraction_of_best(rows: list[dict]) -> None:
    """Where several backends timed the same cell, every row gets the best explicitly named
    backend (`best_backend`) and its own share of that backend's TFLOP/s
    (`fraction_of_best`): the measure of how good `auto`'s choice was."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(json.dumps(r.get(k)) for k in _CELL_KEYS), []).append(r)
    for group in groups.values():
        named = [r for r in group if r.get("backend_requested") != "auto" and "tflops" in r]
        if len({r["backend_requested"] for r in group}) < 2 or not named:
            continue
        best = max(named, key=lambda r: r["tflops"])
        for r in group:
            if "tflops" in r:
                r["best_backend"] = best["backend_requested"]
                r["fraction_of_best"] = r["tflops"] / best["tflops"]


def _settings_dict(s: BenchSettings) -> dict:
    return {k: (list(v) if isinstance(v, tuple | list) else v)
            for k, v in s.__dict__.items() if k != "extra"} | s.extra


# ------------------------------------------------------------------------- profile and plot
# One panel row per value of these (when they vary); inside a panel, colour = variant and
# line style = backend.
_PANEL_KEYS = ("model", "scope", "mode", "dtype", "head_dim", "batch", "causal", "mask")
_STYLES = ("-", "--", ":", "-.")


def plot_rows(rows: Sequence[dict], path: str | Path, title: str = "",
              baseline: str = "MHA", panel_keys: Sequence[str] = _PANEL_KEYS) -> Path:
    """PNG with time (left, log-log) and speedup over `baseline` (right) against sequence
    length: one panel row per value of the `panel_keys` that vary, a colour per variant, a
    line style per backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    timed = [r for r in rows if "ms" in r]
    varying = [k for k in panel_keys if len({json.dumps(r.get(k)) for r in timed}) > 1]
    panels: dict[str, list[dict]] = {}
    for r in timed:
        panels.setdefault(", ".join(f"{k}={r.get(k)}" for k in varying), []).append(r)
    variants = list(dict.fromkeys(r["variant"] for r in timed))
    backends = list(dict.fromkeys(r.get("backend_requested", "auto") for r in timed))
    colors = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    styles = {b: _STYLES[i % len(_STYLES)] for i, b in enumerate(backends)}
    fig = Figure(figsize=(13, 0.6 + 3.6 * max(1, len(panels))))
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(panels)), 2, squeeze=False)
    tokens = FuncFormatter(lambda x, _: f"{x / 1024:g}k" if x >= 1024 else f"{x:g}")
    for (ax_t, ax_s), (panel, pts_all) in zip(axes, panels.items()):
        lines: dict[tuple, list[dict]] = {}
        for r in pts_all:
            lines.setdefault((r["variant"], r.get("backend_requested", "auto")), []).append(r)
        for (variant, backend), pts in lines.items():
            pts = sorted(pts, key=lambda r: r["seq_len"])
            label = variant + (f" ({backend})" if len(backends) > 1 else "")
            style = dict(color=colors[variant], linestyle=styles[backend], marker="o",
                         markersize=3, label=label)
            ax_t.plot([r["seq_len"] for r in pts], [r["ms"] for r in pts], **style)
            speed = [(r["seq_len"], r[f"speedup_vs_{baseline}"]) for r in pts
                     if f"speedup_vs_{baseline}" in r]
            if speed:
                ax_s.plot(*zip(*speed), **style)
        ax_t.set(xscale="log", yscale="log", ylabel="ms per call", title=f"time  {panel}")
        ax_t.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax_t.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax_t.yaxis.set_minor_formatter(NullFormatter())
        ax_s.set(xscale="log", ylabel=f"speedup vs {baseline} (x)",
                 title=f"speedup vs {baseline}  {panel}")
        lengths = sorted({r["seq_len"] for r in pts_all})
        for ax in (ax_t, ax_s):
            ax.set_xlabel("sequence length (tokens)")
            ax.set_xticks(lengths)
            ax.xaxis.set_major_formatter(tokens)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
            ax.title.set_fontsize(9)
        ax_s.legend(*ax_t.get_legend_handles_labels(), fontsize=7, loc="center left",
                    bbox_to_anchor=(1.01, 0.5))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# ------------------------------------------------------------------------------ result files
def write_json(path: Path, data: dict) -> Path:
    """Write a results file (creating its folder) through a temporary sibling and a rename,
    so a stop mid-write leaves the old file whole; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_rows(path: Path | None, schema: str, machine: dict, args: argparse.Namespace,
               rows: list[dict]) -> None:
    """A diagnosis script's result (`path` None: none): its rows under the machine header,
    with the command and the flags that made it."""
    if path is None:
        return
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(path, {"schema": schema, "machine": machine,
                      "command": " ".join(["python", *sys.argv]), "settings": settings,
                      "rows": rows})
    print(f"wrote {path}")


def group_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped into one table per cell setting (all but variant, length, backend)."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        key = (f"attention {r['scope']}, {r['mode']}, {r['dtype']}, batch {r['batch']}, "
               f"head_dim {r['head_dim']}, {'causal' if r['causal'] else 'non-causal'}, "
               f"{r['pattern']}")
        out.setdefault(key, []).append(r)
    return out
