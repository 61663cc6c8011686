"""Is flash-attn's backward right? Gradients of `FlashAttnBackend` (eager and under
torch.compile) against a float32 reference, per head_dim x (H_q, H_kv) x mask.

A relative error above 5% in the output or any gradient is printed as BAD, and the exit
status is then 1. On an H200 with flash-attn-4 4.0.0b36 every head_dim 16 row is BAD (dQ
for every layout, dK / dV with GQA) while head_dim 32, 64 and 128 stay within bf16 error
for every layout (experiments/results/fa4_backward_h200.log): why `FlashAttnBackend`
refuses training below head_dim 32 (`FA4_MIN_BACKWARD_HEAD_DIM`).

    python -m experiments.fa4_backward_check --head-dims 16,32,64,128   # a CUDA GPU
"""

from __future__ import annotations

import argparse
import sys

import torch

from sqa_nas.attention import MaskSpec, dense_mask
from sqa_nas.attention.problem import AttentionProblem
from sqa_nas.attention.reference import reference_attention
from sqa_nas.cli import guarded
from sqa_nas.errors import UserError
from sqa_nas.kernels.flash_attn import FlashAttnBackend
from sqa_nas.machine import machine_info

LAYOUTS = ((8, 8), (8, 4), (8, 2), (8, 1), (16, 4), (12, 4))
MASKS = (MaskSpec(True), MaskSpec(False), MaskSpec(True, window=64))


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--head-dims", default="16,32,64,128")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args(argv)
    backend = FlashAttnBackend()
    if backend.availability():
        raise UserError(f"flash_attn: {backend.availability()}")
    print(
        f"{backend.flavour} {machine_info(torch.device('cuda'))['flash_attn']} on "
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    )
    torch.manual_seed(0)
    compiled = torch.compile(backend.forward)
    bad = 0
    for d in (int(x) for x in args.head_dims.split(",")):
        for hq, hkv in LAYOUTS:
            for mask in MASKS:
                q, k, v, grad_out = (
                    torch.randn(
                        args.batch, h, args.seq_len, d, device="cuda", dtype=torch.bfloat16
                    )
                    for h in (hq, hkv, hkv, hq)
                )
                problem = AttentionProblem(
                    mask, hq, hkv, d, args.seq_len, torch.bfloat16, "cuda", d**-0.5, False
                )  # False: ask the kernel, not the policy
                leaves = [t.float().requires_grad_() for t in (q, k, v)]
                ref = reference_attention(
                    *leaves, dense_mask(mask, args.seq_len, q.device), d**-0.5
                )
                ref_grads = torch.autograd.grad(ref, leaves, grad_out.float())
                row = [f"d{d} {hq}/{hkv} {mask.describe()}"]
                for name, fn in (("eager", backend.forward), ("compiled", compiled)):
                    x = [t.clone().requires_grad_() for t in (q, k, v)]
                    out = fn(*x, problem)
                    grads = torch.autograd.grad(out, x, grad_out)
                    errs = [rel(out, ref)] + [rel(a, b) for a, b in zip(grads, ref_grads)]
                    flag = " BAD" if max(errs) > 0.05 else ""
                    bad += bool(flag)
                    row.append(
                        f"{name}: out {errs[0]:.3g} dq {errs[1]:.3g} dk {errs[2]:.3g} "
                        f"dv {errs[3]:.3g}{flag}"
                    )
                print(" | ".join(row), flush=True)
    print(f"BAD rows: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(guarded(main))
