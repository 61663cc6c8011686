"""Decode speed and KV-cache size of the exported model, per attention variant.

Inference is SQA's other half: a layer's KV cache holds its H_kv heads, so at a long context
the bytes every new token reads are GQA's for SQA (H_q = H/2, H_kv = H/4), and a sliding
window caps them. Per variant (MHA, GQA, MQA, SQA, sSQA, xSQA, xSMQA, SW-SQA):

1. export the variant (`sqa_nas.export.export_model`, the `paper` preset: the paper's model)
   and import its model.py, the code a user gets;
2. check it before timing: on the exported model in float32, the logits of cached decoding
   (a prompt longer than any window, then one token at a time) equal the full forward's;
3. build the timed model with the same model.py at the `--model` size (its documented
   `build_model(config, layers)`, same LAYERS), in bf16 on the GPU, and for each batch size
   time a `--prompt`-token prefill and then `--new` tokens decoded one at a time (greedy)
   against the KV cache, with CUDA events (the median of `--repeats` runs);
4. measure the KV cache's bytes from its tensors after the run and check them equal to
   `sqa_nas.analytics`' KV bytes per token times the tokens each layer holds (all of them,
   or a window's window + 1).

Weights do not change the speed: the timed model keeps model.py's initialisation. Batch 1 is
mostly the host launching kernels (no CUDA graphs); the larger batch reads the cache.

    python -m experiments.decode                 # on a GPU (an H200: under 3 minutes)
    python -m experiments.decode --smoke         # CPU, tiny model, seconds
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from experiments.common import default_out, progress, write_result
from experiments.science import git_revision
from sqa_nas.analytics import analyze, format_bytes
from sqa_nas.cli import guarded
from sqa_nas.errors import UserError
from sqa_nas.export import export_model
from sqa_nas.machine import header_line, machine_info
from sqa_nas.model import PRESETS, ModelConfig

VARIANTS = ["MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "SW-SQA"]
SMOKE = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, ffn_dim=64)
CHECK_NEW = 8  # tokens decoded one at a time in the check


def load_model_py(folder: Path, name: str):
    """The exported model.py of `folder` as a module named `name`."""
    spec = importlib.util.spec_from_file_location(name, folder / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def config_of(variant: str, size: dict, window: int | None) -> ModelConfig:
    """`variant` on every layer of a model of `size`, its window replaced by `window`."""
    attention: dict = {"variant": variant, "backend": "sdpa"}
    if variant == "SW-SQA" and window is not None:
        attention["window"] = window
    return ModelConfig(**size, attention=attention)


def check(module, device: torch.device, prompt: int) -> float:
    """Max |cached - full| / max |full| of the exported model's logits (float32): a prompt,
    then CHECK_NEW tokens one at a time against the KV cache, against one full forward."""
    with torch.device(device):
        model = module.build_model().float().eval()
    tokens = torch.randint(0, model.args.vocab_size, (2, prompt + CHECK_NEW), device=device)
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(prompt + CHECK_NEW)
        parts = [model(tokens[:, :prompt], cache)]
        parts += [model(tokens[:, t : t + 1], cache) for t in range(prompt, prompt + CHECK_NEW)]
    error = ((torch.cat(parts, 1) - full).abs().max() / full.abs().max()).item()
    if not error <= 1e-3:
        raise RuntimeError(f"cached decoding differs from the full forward by {error:.2e}")
    return error


def elapsed(fn, device: torch.device) -> float:
    """Seconds `fn()` takes: CUDA events on a GPU, the wall clock on the CPU."""
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3


def decode_run(model, batch: int, prompt: int, new: int, device: torch.device) -> dict:
    """One prefill and `new` greedy steps against a fresh KV cache, timed apart."""
    vocab = model.args.vocab_size
    tokens = torch.randint(0, vocab, (batch, prompt), device=device)
    cache = model.new_cache(prompt + new)  # dense layers allocated once, before timing
    state = {}

    def prefill():
        state["next"] = model(tokens, cache)[:, -1:].argmax(-1)

    def steps():
        token = state["next"]
        for _ in range(new):
            token = model(token, cache)[:, -1:].argmax(-1)  # (B, 1)

    with torch.no_grad():
        prefill_s = elapsed(prefill, device)
        decode_s = elapsed(steps, device)
    return {"prefill_s": prefill_s, "decode_s": decode_s, "cache": cache}


def held_tokens(config: ModelConfig, tokens: int) -> list[int]:
    """Tokens each layer's cache holds after `tokens`: all, or a window's window + 1 and its
    global tokens (model.py's LayerCache)."""
    return [
        tokens if c.window is None else min(tokens, c.window + 1 + c.global_tokens)
        for c in config.layer_configs
    ]


def measure(variant: str, args, device: torch.device, root: Path) -> dict:
    """One variant: export, check, then decode tokens/s and KV bytes per batch size."""
    size = SMOKE if args.smoke else PRESETS[args.model]
    small = SMOKE if args.smoke else PRESETS["paper"]
    folder = export_model(config_of(variant, small, args.window), root / variant, title=variant)
    module = load_model_py(folder, f"decode_{variant.replace('-', '_')}")
    config = config_of(variant, size, args.window)
    spans = [c.window + 2 + c.global_tokens for c in config.layer_configs if c.window]
    error = check(module, device, max([args.check_prompt, *spans]))  # windows wrap around
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    # The timed size: model.py's CONFIG scaled up, its LAYERS kept (the same H = 16 heads).
    scaled = {
        **module.CONFIG,
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "head_dim": config.layer_configs[0].head_dim,
        "ffn_dim": config.ffn_dim,
    }
    assert len(module.LAYERS) == config.n_layers and config.n_heads == module.CONFIG["n_heads"]
    with torch.device(device):
        model = module.build_model(scaled, module.LAYERS).to(dtype).eval()
    per_token = [x.kv_bytes for x in analyze(config, 1, dtype.itemsize).layers]
    row: dict = {"variant": variant, "check_error": error, "layers": module.LAYERS[0]}
    decode_run(model, 1, min(64, args.prompt), 4, device)  # warm-up: kernels, allocator
    for batch in args.batch:
        prefill, decode = [], []
        for _ in range(args.repeats):
            run = decode_run(model, batch, args.prompt, args.new, device)
            prefill.append(run["prefill_s"])
            decode.append(run["decode_s"])
        measured = run["cache"].nbytes()
        del run  # the cache: up to gigabytes
        held = held_tokens(config, args.prompt + args.new)
        expected = batch * sum(b * n for b, n in zip(per_token, held, strict=True))
        if measured != expected:  # a bug in the cache or in the formula: stop, loudly
            raise RuntimeError(
                f"{variant} batch {batch}: KV cache {measured:,} B, analytics {expected:,} B"
            )
        decode_s = statistics.median(decode)
        row[f"batch_{batch}"] = cell = {
            "decode_tokens_per_s": round(batch * args.new / decode_s, 1),
            "ms_per_step": round(1e3 * decode_s / args.new, 3),
            "ms_per_step_runs": [round(1e3 * s / args.new, 3) for s in decode],
            "prefill_ms": round(1e3 * statistics.median(prefill), 2),
            "kv_cache_bytes": measured,
            "kv_cache_bytes_analytics": expected,
        }
        progress(
            f"{variant:7s} batch {batch:3d}: {cell['decode_tokens_per_s']:>12,.0f} tok/s "
            f"decode ({cell['ms_per_step']:.2f} ms/step), KV cache {format_bytes(measured)}"
        )
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def markdown(payload: dict) -> str:
    """The result as a table: per variant and batch, decode tokens/s and KV-cache MiB."""
    batches = payload["batch"]
    head = ["variant", "H_q/H_kv"] + [f"tok/s b={b}" for b in batches]
    head += [f"KV cache b={b}" for b in batches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in payload["variants"]:
        heads = f"{row['layers']['n_q_heads']}/{row['layers']['n_kv_heads']}"
        cells = [row["variant"], heads]
        cells += [f"{row[f'batch_{b}']['decode_tokens_per_s']:,.0f}" for b in batches]
        cells += [format_bytes(row[f"batch_{b}"]["kv_cache_bytes"]) for b in batches]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(payload: dict, path: Path) -> None:
    """Decode tokens/s and KV-cache MiB per variant, one bar per batch size."""
    # matplotlib is optional (only the plot needs it): imported when drawing
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, batches = payload["variants"], payload["batch"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(batches)
    for i, b in enumerate(batches):
        xs = [j + i * width for j in range(len(rows))]
        cells = [r[f"batch_{b}"] for r in rows]
        speed = [c["decode_tokens_per_s"] for c in cells]
        axes[0].bar(xs, speed, width, label=f"batch {b}")
        axes[1].bar(xs, [c["kv_cache_bytes"] / 2**20 for c in cells], width, label=f"batch {b}")
    ticks = [j + 0.4 - width / 2 for j in range(len(rows))]
    for ax, label in zip(axes, ("decode tokens/s", "KV cache (MiB)"), strict=True):
        ax.set_xticks(ticks, [r["variant"] for r in rows], rotation=30)
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(
        f"{payload['model_name']}: prompt {payload['prompt']:,} + {payload['new']} tokens, "
        f"{payload['machine']['device']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument(
        "--model", choices=["paper", "paper-hd64", "paper-hd128"], default="paper-hd128"
    )
    p.add_argument("--batch", default="1,32", help="batch sizes, comma-separated")
    p.add_argument("--prompt", type=int, default=4096, help="prompt tokens (prefill)")
    p.add_argument("--new", type=int, default=128, help="tokens decoded one at a time")
    p.add_argument(
        "--repeats", type=int, default=5, help="runs per batch size (median; all are kept)"
    )
    p.add_argument("--window", type=int, help="SW-SQA's window (default: the variant's)")
    p.add_argument("--check-prompt", type=int, default=64, help="prompt of the check")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU (a test)")
    p.add_argument("--out", type=Path, help="result JSON (default results/decode_<gpu>.json)")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise UserError(
            f"--variants: unknown {', '.join(unknown) or 'none given'}; "
            f"known: {', '.join(VARIANTS)}"
        )
    try:
        args.batch = [int(b) for b in args.batch.split(",") if b]
    except ValueError:
        raise UserError(f"--batch: expected whole numbers, got {args.batch!r}") from None
    if not args.batch or min(args.batch) < 1 or min(args.prompt, args.new, args.repeats) < 1:
        raise UserError("--batch, --prompt, --new and --repeats must be at least 1")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise UserError("decode needs a CUDA GPU (or --smoke on the CPU)")
    if args.smoke:
        args.prompt, args.new, args.repeats, args.check_prompt = 24, 6, 2, 16
        args.batch, args.window = [1, 3], 8
    machine = machine_info(device)
    print(header_line(machine), flush=True)
    start, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as root:
        for variant in variants:
            rows.append(measure(variant, args, device, Path(root)))
    payload = {
        "model_name": "smoke" if args.smoke else args.model,
        "model": SMOKE if args.smoke else PRESETS[args.model],
        "dtype": "float32" if device.type == "cpu" else "bfloat16",
        "prompt": args.prompt,
        "new": args.new,
        "batch": args.batch,
        "repeats": args.repeats,
        "variants": rows,
        "wall_s": round(time.perf_counter() - start, 1),
        "git_revision": git_revision(),
    }
    print(markdown(payload))
    out = args.out or default_out("decode" + ("_smoke" if args.smoke else ""), str(device))
    path = write_result("decode", payload, out, machine=machine)
    plot({**payload, "machine": machine}, path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
