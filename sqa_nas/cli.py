"""`sqa-nas` / `python cli.py`: the command line. Parses arguments and calls the library.

Every command reports user errors (`UserError`) as one line on stderr and exits with code 2;
argparse does the same for malformed arguments.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from rich.console import Console

from sqa_nas.errors import UserError

# (command, module with add_arguments(parser) and run(args) -> int, help)
COMMANDS = [
    ("variants", "sqa_nas.cli", "list attention variants and kernel backends on this machine"),
    ("bench", "sqa_nas.cli", "time attention variants (correctness check first)"),
]

# Logs and pipes get wide tables; terminals use their own width.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False)


def _csv(kind):
    def parse(text: str):
        try:
            items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}") from None
        if not items:
            raise argparse.ArgumentTypeError("expected at least one value")
        return items
    return parse


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# ---------------------------------------------------------------------------------- variants
def add_variants_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-heads", type=_positive, default=16,
                   help="reference head count H used to show head numbers (default 16)")


def run_variants(args) -> int:
    from rich.table import Table

    from sqa_nas.registry import list_backends, list_variants

    table = Table(title=f"Attention variants (H = {args.n_heads})")
    for col in ("variant", "H_q", "H_kv", "pattern", "attention FLOPs vs MHA", "what"):
        table.add_column(col)
    for v in list_variants():
        hq, hkv = v.heads(args.n_heads)
        table.add_row(v.name, f"{v.q} = {hq}", f"{v.kv} = {hkv}", v.pattern,
                      f"{max(hq, hkv) / args.n_heads:.2f}x", v.description)
    console.print(table)
    backends = Table(title="Kernel backends on this machine")
    for col in ("backend", "available", "what / why not"):
        backends.add_column(col)
    for b in list_backends():
        why_not = b.availability()
        backends.add_row(b.name, "[green]yes[/]" if why_not is None else "[red]no[/]",
                         b.description if why_not is None else why_not)
    console.print(backends)
    return 0


# ------------------------------------------------------------------------------------- bench
def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variants", type=_csv(str), default=["MHA", "GQA", "SQA", "sSQA", "xSQA"])
    p.add_argument("--seq-lens", type=_csv(int), default=[1024, 4096])
    p.add_argument("--batch", type=_positive, default=1)
    p.add_argument("--n-heads", type=_positive, default=16, help="reference H (default 16)")
    p.add_argument("--head-dim", type=_positive, default=64)
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
    p.add_argument("--repeats", type=_positive, default=10)
    p.add_argument("--baselines", type=_csv(str), default=["MHA", "GQA"],
                   help="variants every row is compared to (default MHA,GQA)")
    p.add_argument("--no-check", action="store_true", help="skip the correctness check")
    p.add_argument("--json", type=Path, help="write the results as JSON here")


def run_bench(args) -> int:
    import torch
    from rich import box
    from rich.table import Table

    from sqa_nas.bench import BenchSettings, run_bench
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


# -------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sqa-nas", description="Search and benchmark Sparse Query Attention architectures.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        mod = sys.modules[__name__] if module == __name__ else importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text)
        key = name.replace("-", "_")
        getattr(mod, f"add_{key}_arguments")(p)
        p.set_defaults(run=getattr(mod, f"run_{key}"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
