"""The benchmark grid: correctness first, then timing (CUDA events after warm-up).

`run_bench` times one cell (a dtype, head_dim, batch, mask, mode, scope and backend) over
variants x sequence lengths; `run_grid` runs many cells under one machine header. Every row
(`BenchRow`) carries its whole configuration, the backend and kernel that ran, ms, TFLOP/s
from the mask's real density (`count_visible`), the speedup over the MHA and GQA rows of the
same cell, and, when several backends were timed on the same cell, the fraction of the
fastest one's TFLOP/s. Rows that no device of the run can hold are refused before anything
runs (`BenchSettings.validate`, `bench.memory`). A cell that fails (out of memory, a kernel
error, a backend that refuses) records the error in its row and the run goes on; a row that
never returns (a kernel build that hangs cannot be interrupted from Python) is cut by
`row_timeout_s`: every thread's stack is printed, the process exits, and the results file
saved before the row names it under "running".

Scopes: ``kernel`` times the attention call alone on (B, H, N, D) inputs; ``layer`` the
whole `SparseQueryAttention` (projections, RoPE when set); ``model`` a forward (or training
step) of the paper's model family under autocast, as the paper's Table 3 does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import json
import re
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from sqa_nas.analytics import format_bytes
from sqa_nas.attention.masks import count_visible
from sqa_nas.bench.check import check_config
from sqa_nas.bench.flops import kernel_flops, model_flops, projection_flops
from sqa_nas.bench.report import add_fraction_of_best
from sqa_nas.bench.row import OUT_OF_MEMORY, BenchResult, BenchRow
from sqa_nas.bench.settings import DTYPES, BenchSettings, paper_family
from sqa_nas.errors import UserError
from sqa_nas.layer import SparseQueryAttention
from sqa_nas.machine import machine_info
from sqa_nas.model import build_model
from sqa_nas.timing import row_watchdog, time_call

_TRIED = re.compile(r"[Tt]ried to allocate (\d+(?:\.\d+)? ?(?:[KMGTP]i?B|bytes))")


def _autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to the row's dtype on any device (CPU rows time bf16 too), unlike
    `train.autocast`, which training skips on CPU where it only slows small models down."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _timed_fn(layer, settings: BenchSettings, n: int, device, dtype, name: str):
    """(setup, fn, model) for the configured scope and mode; `time_call` times only `fn`.
    `model` is the SQATransformer in model scope (to read the backends it used), else None."""
    b, c = settings.batch, layer.config
    grad = settings.mode != "fwd"
    model = None
    run: Callable[..., torch.Tensor]  # the model (model scope), the layer or the backend
    if settings.scope == "model":
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
    inputs: tuple[torch.Tensor, ...]
    if settings.scope == "layer":
        inputs = (torch.randn(b, n, c.d_model, device=device, dtype=dtype, requires_grad=grad),)
        run = layer
    else:
        problem = layer.problem(n, device.type, dtype, grad)
        backend, _ = layer.select(problem)
        inputs = tuple(
            torch.randn(b, heads, n, c.head_dim, device=device, dtype=dtype, requires_grad=grad)
            for heads in (c.attn_heads, c.n_kv_heads, c.n_kv_heads)
        )

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


def timed_step(
    settings: BenchSettings, name: str, n: int
) -> tuple[Callable[[], object] | None, Callable[[object], object]]:
    """(setup, fn) of the row of variant `name` at `n` tokens in the cell `settings`, as
    `time_call` takes them (``fn(setup())`` is one step; only `fn` is timed): for timing or
    profiling a row outside `run_bench` (``profile_call(fn, device)``)."""
    device, dtype = torch.device(settings.device), DTYPES[settings.dtype]
    with torch.device(device):
        layer = SparseQueryAttention(settings.layer_config(name)).to(dtype)
    setup, fn, _ = _timed_fn(layer, settings, n, device, dtype, name)
    return setup, fn


def run_bench(
    settings: BenchSettings, progress: Callable[[str], None] | None = None
) -> BenchResult:
    """Benchmark every (variant, seq_len) of one cell, baselines first at each length.
    `progress` gets a line before every row. Raises `UserError` for bad settings."""
    settings.validate()
    device = torch.device(settings.device)
    rows = _bench_cell(settings, progress)
    return BenchResult(machine=machine_info(device), settings=settings.as_dict(), rows=rows)


def _bench_cell(
    settings: BenchSettings, progress, before_row=None, row_timeout_s: float | None = None
) -> list[BenchRow]:
    device = torch.device(settings.device)
    dtype = DTYPES[settings.dtype]
    names = list(dict.fromkeys(list(settings.baselines) + list(settings.variants)))
    rows: list[BenchRow] = []
    torch.manual_seed(settings.seed)
    for n in settings.seq_lens:
        for name in names:
            if progress:
                progress(f"{name} @ {n} ({_cell_label(settings)})")
            if before_row:
                before_row(
                    rows,
                    {
                        "variant": name,
                        "seq_len": n,
                        "cell": _cell_label(settings),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "row_timeout_s": row_timeout_s,
                    },
                )
            with row_watchdog(row_timeout_s):
                rows.append(BenchRow.from_dict(_bench_one(settings, name, n, device, dtype)))
            _release(device)
        rows = _add_speedups(rows, n, settings.baselines)
    return rows


def expand_grid(base: BenchSettings, **axes: Sequence) -> list[BenchSettings]:
    """Cells of the cross product of `axes` (BenchSettings field -> values) over `base`.
    Fields not named keep base's value."""
    names = [k for k, v in axes.items() if v]
    for k in names:
        if not hasattr(base, k):
            raise UserError(f"no benchmark setting named {k!r}")
    return [
        dataclasses.replace(base, **dict(zip(names, combo)))
        for combo in itertools.product(*(axes[k] for k in names))
    ]


def run_grid(
    cells: Sequence[BenchSettings],
    progress: Callable[[str], None] | None = None,
    extra: dict | None = None,
    on_cell: Callable[[BenchResult], object] | None = None,
    row_timeout_s: float | None = None,
) -> BenchResult:
    """Run every cell under one machine header; rows of the same cell timed with several
    backends get `fraction_of_best`. The result's settings are the first cell's with
    `extra` merged in; its `grid` lists what varies across cells.

    `on_cell` gets the result so far (``partial=True``) after every cell, so a run stopped
    by a time limit still leaves its finished rows behind, and before every row with that
    row under `running`, so a run cut by `row_timeout_s` (see `row_watchdog`) says which
    row hung. Raises `UserError` for an empty grid or a bad cell, before anything runs."""
    if not cells:
        raise UserError("the benchmark grid is empty")
    for cell in cells:
        cell.validate()
    device = torch.device(cells[0].device)
    dicts = [c.as_dict() for c in cells]
    grid = {}  # what varies across cells, summarised before anything runs
    for k in dicts[0]:
        values = list(dict.fromkeys(json.dumps(d[k], default=str) for d in dicts))
        if len(values) > 1:
            grid[k] = [json.loads(v) for v in values]
    result = BenchResult(
        machine=machine_info(device), settings=dicts[0] | (extra or {}), grid=grid, rows=[]
    )

    def before_row(done: list[BenchRow], row: dict) -> None:  # done: this cell's rows so far
        if on_cell is not None:
            on_cell(result.replace(rows=result.rows + done, partial=True, running=row))

    for cell in cells:
        result = result.replace(
            rows=result.rows + _bench_cell(cell, progress, before_row, row_timeout_s)
        )
        if on_cell is not None:
            on_cell(result.replace(partial=True))
    return result.replace(rows=add_fraction_of_best(result.rows))


def _bench_one(settings: BenchSettings, name: str, n: int, device, dtype) -> dict:
    """One row, as the dict of `BenchRow`'s JSON keys it fills in order (the keys a row
    has depend on how far it got)."""
    grad = settings.mode != "fwd"
    row: dict = {
        "variant": name,
        "seq_len": n,
        "batch": settings.batch,
        "n_heads": settings.n_heads,
        "head_dim": settings.head_dim,
        "mode": settings.mode,
        "scope": settings.scope,
        "dtype": settings.dtype,
        "causal": settings.causal,
        "pattern": settings.pattern,
        "backend_requested": settings.backend,
        "baseline": name in settings.baselines,
    }
    try:
        config = settings.layer_config(name)
        with torch.device(device):
            layer = SparseQueryAttention(config).to(dtype)
        row.update(
            n_q_heads=config.n_q_heads,
            n_kv_heads=config.n_kv_heads,
            head_dim=config.head_dim,
            n_heads=config.n_heads,
            pattern=config.pattern,
            window=config.window,
            global_tokens=config.global_tokens,
            mask=layer.mask_spec.describe(),
            density=count_visible(layer.mask_spec, n) / n**2,
        )
        if settings.scope == "model":
            row["model"] = settings.preset or paper_family(settings.head_dim, settings.n_heads)[0]
        problem = layer.problem(n, device.type, dtype, grad)
        backend, reason = layer.select(problem)
        row.update(
            backend=backend.name,
            backend_reason=reason,
            kernel=backend.kernel_name(problem, _probe_inputs(backend, problem, device, dtype)),
        )
        if settings.check:
            row.update(
                check_config(
                    config, backend.name, min(n, settings.check_len), dtype, device, backward=grad
                )
            )
            if not row["check_ok"]:
                row["error"] = (
                    f"correctness check failed: error {row['check_error']:.3g} > "
                    f"tolerance {row['check_tolerance']:.3g}"
                )
                return row
        setup, fn, model = _timed_fn(layer, settings, n, device, dtype, name)
        samples = time_call(
            fn,
            device=device,
            warmup=settings.warmup,
            repeats=settings.repeats,
            setup=setup,
            budget_s=settings.budget_s,
            min_repeats=settings.min_repeats,
        )
        # What ran, read again after the calls (a backend may have fallen back inside), once
        # the timed inputs are freed: the probe's own q / k / v then reuse their memory
        # instead of adding to it (GBs at 1M tokens). Out of memory here keeps the timing
        # and the kernel read before it.
        del setup, fn
        _release(device)
        with contextlib.suppress(torch.cuda.OutOfMemoryError):
            row["kernel"] = backend.kernel_name(
                problem, _probe_inputs(backend, problem, device, dtype)
            )
        if model is not None:
            row["backend"] = "+".join(sorted({b for b, _ in model.backends()}))
    except torch.OutOfMemoryError as exc:  # torch.cuda.OutOfMemoryError is the same class
        row["error"] = out_of_memory(exc)
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
        flops = kernel_flops(layer, settings.batch, n, settings.mode)
        if settings.scope == "layer":
            flops += projection_flops(layer, settings.batch, n, settings.mode)
    row.update(
        ms=median * 1e3,
        ms_min=min(samples) * 1e3,
        ms_spread=(max(samples) - min(samples)) * 1e3,
        repeats=len(samples),
        flops=flops,
        tflops=flops / median / 1e12,
        tokens_per_s=settings.batch * n / median,
    )
    return row


def _probe_inputs(backend, problem, device, dtype):
    """Uninitialised (q, k, v) of the problem's shape, for backends whose kernel choice
    depends on the tensors (SDPA's dispatcher); None for the others."""
    if backend.name != "sdpa":
        return None
    shape = (1, problem.seq_len, problem.head_dim)
    return tuple(
        torch.empty(shape[0], h, *shape[1:], device=device, dtype=dtype)
        for h in (problem.n_q_heads, problem.n_kv_heads, problem.n_kv_heads)
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    lowered = message.lower()
    if "out of memory" in lowered or "can't allocate memory" in lowered:
        return out_of_memory(exc)
    return f"{type(exc).__name__}: {message}"[:300]


def out_of_memory(exc: BaseException) -> str:
    """A row's error for a failed allocation (`BenchRow.out_of_memory`), with the size
    torch tried to allocate when its message says (CUDA: "Tried to allocate 8.00 GiB"; the
    CPU allocator: "you tried to allocate 8000000000 bytes")."""
    found = _TRIED.search(str(exc))
    if found is None:
        return OUT_OF_MEMORY
    size = found.group(1)
    if size.endswith(" bytes"):
        size = format_bytes(int(size.removesuffix(" bytes")))
    return f"{OUT_OF_MEMORY} (tried to allocate {size})"


def _release(device: torch.device) -> None:
    """Free the previous row's tensors before the next (a 1M-token row needs the room)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cell_label(s: BenchSettings) -> str:
    return (
        f"{s.scope} {s.mode} {s.dtype} hd{s.head_dim} b{s.batch} "
        f"{'causal' if s.causal else 'non-causal'} {s.pattern} {s.backend}"
    )


def _add_speedups(rows: list[BenchRow], n: int, baselines: Sequence[str]) -> list[BenchRow]:
    """The timed rows at length `n` get their speedup over each timed baseline at `n`."""
    refs: dict[str, float] = {}
    for base in baselines:
        ref_ms = next(
            (r.ms for r in rows if r.seq_len == n and r.variant == base and r.ms is not None), None
        )
        if ref_ms is not None:
            refs[base] = ref_ms
    return [
        r.model_copy(update={"speedups": r.speedups | {b: ms / r.ms for b, ms in refs.items()}})
        if r.seq_len == n and r.ms is not None and refs
        else r
        for r in rows
    ]
