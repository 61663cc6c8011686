"""Training-step throughput of the paper's Table 1 model, eager and compiled, on one GPU.

The conditions of the independent compiled reference in shared anchors: vocab 10,000,
d_model 256, 8 layers, H = 16, batch 128 x 1024 tokens, bf16 autocast, fused AdamW, gradient
clipping. Per variant it times a full training step (forward, loss, backward, optimizer)
with the product's `TrainStep`: eager, and with compiled blocks (what a search trial uses),
and records the compile seconds of the first compiled step and of a second, fresh model of
the same layout (the block graphs are reused: what later trials of a search pay). For MHA
and xSQA also the whole model compiled, and with CUDA graphs (mode="reduce-overhead").

    python -m experiments.step_throughput                  # on a GPU
    python -m experiments.step_throughput --smoke          # CPU, tiny model, seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from experiments.common import progress, tracked, write_result
from sqa_nas.cli import guarded
from sqa_nas.errors import UserError
from sqa_nas.model import ModelConfig, build_model
from sqa_nas.timing import time_call
from sqa_nas.train import TrainStep, autocast

VARIANTS = ["MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "lSQA"]
WHOLE = ["MHA", "xSQA"]  # also timed with the whole model compiled, and with CUDA graphs
# The independent compiled reference, tokens/s (shared anchors, measured 2026-11-29).
ANCHOR = {"MHA": 2.36e6, "GQA": 2.45e6, "SQA": 3.29e6, "sSQA": 3.25e6, "xSQA": 3.97e6}


def _optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")


def _time(loss_fn, model, device, batch, seq, vocab, repeats) -> dict:
    """First-call seconds (compiling, if any) and median tokens/s of full training steps."""
    x = torch.randint(0, vocab, (batch, seq), device=device)
    opt = _optimizer(model, device)

    def step(_):
        loss = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    start = time.perf_counter()
    step(None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first_s = time.perf_counter() - start
    samples = time_call(step, device=device, warmup=3, repeats=repeats)
    return {
        "first_call_s": round(first_s, 3),
        "tokens_per_s": round(batch * seq / statistics.median(samples), 1),
        "step_ms": round(1e3 * statistics.median(samples), 3),
    }


def _whole(model, device, mode):
    compiled = torch.compile(model, fullgraph=True, dynamic=False, mode=mode)

    def loss(x):
        with autocast(device):
            logits = compiled(x)
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x.flatten())

    return loss


def measure(variant: str, cfg: dict, device, batch: int, seq: int, repeats: int) -> dict:
    """One variant's rows: eager, compiled blocks (first and second model), and for
    `WHOLE` the whole model compiled and with CUDA graphs."""
    vocab = cfg["vocab_size"]
    config = ModelConfig(**cfg, attention={"variant": variant})
    row: dict = {"variant": variant}

    def fresh():
        torch.manual_seed(0)
        return build_model(config).to(device)

    model = fresh()
    eager = TrainStep(model, device, seq)
    row["eager"] = _time(
        lambda x, s=eager: s.loss(x, x), model, device, batch, seq, vocab, repeats
    )
    for which in ("blocks", "blocks_again"):
        model = fresh()
        step = TrainStep(model, device, seq, compiled=True)
        row[which] = _time(
            lambda x, s=step: s.loss(x, x), model, device, batch, seq, vocab, repeats
        )
    if variant in WHOLE and device.type == "cuda":
        for which, mode in (("whole", None), ("cudagraphs", "reduce-overhead")):
            model = fresh()
            model.prepare(seq, torch.bfloat16)
            fn = _whole(model, device, mode)
            try:
                row[which] = _time(fn, model, device, batch, seq, vocab, repeats)
            except Exception as exc:  # recorded, not hidden
                row[which] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    row["backends"] = sorted({b for b, _ in model.backends()})
    row["anchor_tokens_per_s"] = ANCHOR.get(variant)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU (a test)")
    p.add_argument("--out", help="result file (default experiments/results/...)")
    args = p.parse_args(argv)
    smoke = args.smoke
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    if device.type != "cuda" and not smoke:
        raise UserError("step_throughput needs a CUDA GPU (or --smoke on the CPU)")
    cfg = dict(vocab_size=10_000, d_model=256, n_layers=8, n_heads=16, ffn_dim=768)
    batch, seq, repeats = args.batch, args.seq, args.repeats
    if smoke:
        cfg = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, ffn_dim=64)
        batch, seq, repeats = 2, 16, 2
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise UserError(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    start, rows = time.perf_counter(), []
    for v in tracked(variants, "variants"):
        if smoke:  # the CPU compile costs ~30 s per shape: the smoke test times eager only
            model = build_model(ModelConfig(**cfg, attention={"variant": v}))
            step = TrainStep(model, device, seq)
            rows.append(
                {
                    "variant": v,
                    "eager": _time(
                        lambda x, s=step: s.loss(x, x), model, device, batch, seq, 64, 2
                    ),
                }
            )
        else:
            rows.append(measure(v, cfg, device, batch, seq, repeats))
        progress(
            f"{v}: "
            + ", ".join(
                f"{k} {r['tokens_per_s'] / 1e6:.2f}M tok/s (first {r['first_call_s']:.1f} s)"
                for k, r in rows[-1].items()
                if isinstance(r, dict) and "tokens_per_s" in r
            )
        )
    payload = {
        "model": cfg,
        "batch": batch,
        "seq_len": seq,
        "variants": rows,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_result(
        "step_throughput" + ("_smoke" if smoke else ""),
        payload,
        args.out and Path(args.out),
    )
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
