"""Attention benchmarks: correctness first, then timing (CUDA events after warm-up).

`time_call` is the one timing routine of the project; the search's throughput measurement
uses it too. `run_bench` times the attention kernel or the whole layer for a grid of
variants x sequence lengths and returns rows with ms, TFLOP/s (from the mask's real density)
and the speedup over the MHA (and GQA) baseline of the same shape and mask.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sqa_nas.attention import SparseQueryAttention
from sqa_nas.attention.masks import count_visible
from sqa_nas.attention.reference import reference_layer
from sqa_nas.cli import csv, positive
from sqa_nas.errors import UserError
from sqa_nas.machine import machine_info
from sqa_nas.registry import get_variant

MODES = ("fwd", "bwd", "fwd+bwd")
SCOPES = ("kernel", "layer")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Backward costs 2.5x the forward (flash-attention's convention: 5 matmuls vs 2).
_MODE_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}
_PROJ_FACTOR = {"fwd": 1.0, "bwd": 2.0, "fwd+bwd": 3.0}


def time_call(fn: Callable[[object], object], *, device: torch.device, warmup: int = 3,
              repeats: int = 10, setup: Callable[[], object] | None = None) -> list[float]:
    """Seconds per call of ``fn(setup())``, `repeats` samples after `warmup` calls. Only
    `fn` is timed; CUDA events on GPU, `perf_counter` on CPU."""
    cuda = device.type == "cuda"
    samples = []
    for i in range(warmup + repeats):
        arg = setup() if setup else None
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn(arg)
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            fn(arg)
            elapsed = time.perf_counter() - t0
        if i >= warmup:
            samples.append(elapsed)
    return samples


@dataclass(frozen=True)
class BenchSettings:
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
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {self.device}: no CUDA GPU is visible on this machine; "
                            "use --device cpu")
        if self.device not in ("cpu",) and not self.device.startswith("cuda"):
            raise UserError(f"--device: {self.device!r} is not 'cpu' or 'cuda[:N]'")
        for name in ("batch", "n_heads", "head_dim", "repeats"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")

    def layer_config(self, name: str):
        overrides: dict = {"causal": self.causal, "backend": self.backend}
        if self.window is not None:
            overrides["window"] = self.window
        if self.global_tokens is not None:
            overrides["global_tokens"] = self.global_tokens
        return get_variant(name).config(d_model=self.n_heads * self.head_dim,
                                        n_heads=self.n_heads, head_dim=self.head_dim,
                                        **overrides)


def check_layer(layer: SparseQueryAttention, n: int, dtype: torch.dtype,
                device: torch.device, seed: int = 0) -> tuple[float, float]:
    """(error, tolerance) of the layer's output at length n against the float64 reference;
    the tolerance is twice the error of the plain formula in `dtype`, plus a small floor."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, n, layer.config.d_model, generator=gen).to(device, dtype)
    with torch.no_grad():
        out = layer(x).double()
        ref = reference_layer(layer, x.double().cpu().to(device), torch.float64)
        plain = reference_layer(layer, x, dtype).double()
    scale = ref.abs().max().item() or 1.0
    err = (out - ref).abs().max().item()
    return err, 2 * (plain - ref).abs().max().item() + 1e-6 * scale


def _kernel_flops(layer: SparseQueryAttention, batch: int, n: int, mode: str) -> float:
    c = layer.config
    return 4.0 * batch * c.attn_heads * c.head_dim * count_visible(layer.mask_spec, n) \
        * _MODE_FACTOR[mode]


def _proj_flops(layer: SparseQueryAttention, batch: int, n: int, mode: str) -> float:
    params = sum(p.numel() for p in layer.parameters())
    return 2.0 * batch * n * params * _PROJ_FACTOR[mode]


def _timed_fn(layer, settings: BenchSettings, n: int, device, dtype):
    """(setup, fn) for the configured scope and mode; `time_call` times only `fn`."""
    b, c = settings.batch, layer.config
    grad = settings.mode != "fwd"
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
        return None, forward
    if settings.mode == "fwd+bwd":
        return None, lambda _: run(*inputs).sum().backward()
    # bwd: the forward runs untimed in setup.
    return (lambda: run(*inputs).sum()), (lambda loss: loss.backward())


def run_bench(settings: BenchSettings, progress: Callable[[str], None] | None = None) -> dict:
    """Benchmark every (variant, seq_len); returns {"machine", "settings", "rows"}."""
    settings.validate()
    device = torch.device(settings.device)
    dtype = DTYPES[settings.dtype]
    names = list(dict.fromkeys(list(settings.baselines) + list(settings.variants)))
    rows = []
    torch.manual_seed(settings.seed)
    for n in settings.seq_lens:
        for name in names:
            if progress:
                progress(f"{name} @ {n}")
            rows.append(_bench_one(settings, name, n, device, dtype))
        _add_speedups([r for r in rows if r["seq_len"] == n], settings.baselines)
    return {"machine": machine_info(device), "settings": _settings_dict(settings), "rows": rows}


def _bench_one(settings: BenchSettings, name: str, n: int, device, dtype) -> dict:
    config = settings.layer_config(name)
    layer = SparseQueryAttention(config).to(device, dtype)
    row = {"variant": name, "seq_len": n, "batch": settings.batch,
           "n_q_heads": config.n_q_heads, "n_kv_heads": config.n_kv_heads,
           "head_dim": config.head_dim, "pattern": config.pattern,
           "mask": layer.mask_spec.describe(), "mode": settings.mode, "scope": settings.scope,
           "dtype": settings.dtype, "baseline": name in settings.baselines,
           "density": count_visible(layer.mask_spec, n) / n**2}
    try:
        grad = settings.mode != "fwd"
        backend, reason = layer.select(layer.problem(n, device.type, dtype, grad))
        row.update(backend=backend.name, backend_reason=reason)
        if settings.check:
            check_n = min(n, 512)
            checked = SparseQueryAttention(config.model_copy(update={"backend": backend.name}))
            checked.load_state_dict(layer.state_dict())
            err, tol = check_layer(checked.to(device, dtype), check_n, dtype, device)
            row.update(check_error=err, check_tolerance=tol, check_ok=err <= tol)
            if err > tol:
                row["error"] = f"correctness check failed: error {err:.3g} > tolerance {tol:.3g}"
                return row
        setup, fn = _timed_fn(layer, settings, n, device, dtype)
        samples = time_call(fn, device=device, warmup=settings.warmup,
                            repeats=settings.repeats, setup=setup)
    except torch.cuda.OutOfMemoryError:
        row["error"] = "out of memory"
        torch.cuda.empty_cache()
        return row
    except UserError as exc:
        row["error"] = str(exc)
        return row
    median = statistics.median(samples)
    flops = _kernel_flops(layer, settings.batch, n, settings.mode)
    if settings.scope == "layer":
        flops += _proj_flops(layer, settings.batch, n, settings.mode)
    row.update(ms=median * 1e3, ms_min=min(samples) * 1e3,
               ms_spread=(max(samples) - min(samples)) * 1e3, repeats=len(samples),
               flops=flops, tflops=flops / median / 1e12)
    return row


def _add_speedups(rows: list[dict], baselines: Sequence[str]) -> None:
    for base in baselines:
        ref = next((r for r in rows if r["variant"] == base and "ms" in r), None)
        for r in rows:
            if ref is not None and "ms" in r:
                r[f"speedup_vs_{base}"] = ref["ms"] / r["ms"]


def _settings_dict(s: BenchSettings) -> dict:
    return {k: (list(v) if isinstance(v, tuple | list) else v)
            for k, v in s.__dict__.items() if k != "extra"} | s.extra


# --------------------------------------------------------------------------------------- CLI
def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variants", type=csv(str), default=["MHA", "GQA", "SQA", "sSQA", "xSQA"])
    p.add_argument("--seq-lens", type=csv(int), default=[1024, 4096])
    p.add_argument("--batch", type=positive, default=1)
    p.add_argument("--n-heads", type=positive, default=16, help="reference H (default 16)")
    p.add_argument("--head-dim", type=positive, default=64)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda when visible)")
    p.add_argument("--backend", default="auto", help="auto or a backend name (see `variants`)")
    p.add_argument("--mode", choices=["fwd", "bwd", "fwd+bwd"], default="fwd")
    p.add_argument("--scope", choices=["kernel", "layer"], default="kernel",
                   help="kernel: attention only; layer: with the projections")
    p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--window", type=int, help="sliding window for every variant")
    p.add_argument("--global-tokens", type=int, help="global tokens (needs --window)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=positive, default=10)
    p.add_argument("--baselines", type=csv(str), default=["MHA", "GQA"],
                   help="variants every row is compared to (default MHA,GQA)")
    p.add_argument("--no-check", action="store_true", help="skip the correctness check")
    p.add_argument("--json", type=Path, help="write the results as JSON here")


def run_bench_command(args) -> int:
    from rich import box
    from rich.table import Table

    from sqa_nas.cli import console
    from sqa_nas.machine import header_line

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    settings = BenchSettings(
        variants=args.variants, seq_lens=args.seq_lens, batch=args.batch, n_heads=args.n_heads,
        head_dim=args.head_dim, dtype=dtype, device=device, backend=args.backend,
        mode=args.mode, scope=args.scope, causal=args.causal, window=args.window,
        global_tokens=args.global_tokens, warmup=args.warmup, repeats=args.repeats,
        baselines=args.baselines, check=not args.no_check,
        extra={"command": " ".join(["sqa-nas", "bench", *sys.argv[2:]])})
    settings.validate()
    with console.status("benchmarking") as status:
        result = run_bench(settings, progress=lambda s: status.update(f"benchmarking {s}"))
    console.print(f"[bold]{header_line(result['machine'])}[/]")
    table = Table(title=f"attention {settings.scope}, {settings.mode}, {dtype}, batch "
                        f"{settings.batch}, head_dim {settings.head_dim}", box=box.SIMPLE_HEAD)
    cols = ["variant", "N", "heads", "pattern", "backend", "ms", "TFLOP/s"]
    cols += [f"vs {b}" for b in settings.baselines] + ["check"]
    for col in cols:
        table.add_column(col, no_wrap=True, justify="left" if col in (
            "variant", "pattern", "backend") else "right")
    failed = False
    for r in result["rows"]:
        if "error" in r:
            failed = failed or "correctness" in r["error"]
            table.add_row(r["variant"], str(r["seq_len"]), f"{r['n_q_heads']}/{r['n_kv_heads']}",
                          r["pattern"], r.get("backend", "-"), "[red]" + r["error"] + "[/]",
                          *[""] * (len(cols) - 6))
            continue
        check = ("ok" if r.get("check_ok") else "") if settings.check else "skipped"
        table.add_row(r["variant"], str(r["seq_len"]), f"{r['n_q_heads']}/{r['n_kv_heads']}",
                      r["pattern"], r["backend"], f"{r['ms']:.3f}", f"{r['tflops']:.2f}",
                      *[f"{r[f'speedup_vs_{b}']:.2f}x" if f"speedup_vs_{b}" in r else "-"
                        for b in settings.baselines], check)
    console.print(table)
    for mask in sorted({r["mask"] for r in result["rows"]}):
        console.print(f"  [dim]mask: {mask}[/]")
    for backend, reason in sorted({(r["backend"], r["backend_reason"])
                                   for r in result["rows"] if "backend" in r}):
        console.print(f"  [dim]{backend}: {reason}[/]")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 1 if failed else 0
