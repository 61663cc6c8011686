"""The paper's Table 1 (dense models, validation loss) at a budget that fits our GPU time.

Same architecture family as the paper (d_model 256, 8 layers, H = 16, SwiGLU 768, context
1024), every variant trained for the same number of tokens on the embedded corpus (the
Python sources installed on the machine, site-packages included, so a run never repeats its
data) for several seeds, through the search's own trial code. Reports validation loss,
perplexity, next-token accuracy and wall time with their spread, and compares the ordering
with the paper's (MHA < GQA < sSQA < SQA < xSQA < MQA < xSMQA).

    python experiments/paper_table1.py --tokens 20000000 --seeds 0,1      # on a GPU
    python experiments/paper_table1.py --smoke                            # CPU, seconds
"""

from __future__ import annotations

import argparse
import sys
import time

from science import (
    PAPER_MODEL,
    PAPER_TABLE1,
    SMOKE_MODEL,
    aggregate,
    corpus_of,
    make_spec,
    ordering_report,
    train_allocation,
    write_result,
)

from sqa_nas.cli import guarded

VARIANTS = ["MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "lSQA"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--tokens", type=int, default=20_000_000, help="training tokens per run")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-batches", type=int, default=32)
    p.add_argument("--compile", action="store_true", help="torch.compile each model (GPU)")
    p.add_argument("--no-site-packages", action="store_true",
                   help="standard library only (a smaller corpus)")
    p.add_argument("--smoke", action="store_true", help="tiny model and budget (CPU test)")
    p.add_argument("--out", help="result file (default experiments/results/...)")
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    model, tokens, batch, evals = PAPER_MODEL, args.tokens, args.batch, args.eval_batches
    if args.smoke:
        model, tokens, batch, evals = SMOKE_MODEL, 2 * 4 * 64, 4, 2
    rows, reference, start = [], {}, time.perf_counter()
    for seed in seeds:
        spec = make_spec(study="paper_table1", model=model, variants=variants, tokens=tokens,
                         batch=batch, lr=args.lr, seed=seed, compile=args.compile,
                         site_packages=not (args.smoke or args.no_site_packages),
                         eval_batches=evals)
        for name, params in spec.seed_params():
            row = train_allocation(spec, params, seed_index=seed, label=name,
                                   mha_reference=reference)
            rows.append(row)
            print(f"seed {seed} {name:6s} {row['allocation']:8s} val_loss "
                  f"{row['val_loss'] or float('nan'):.4f} acc {row['accuracy'] or 0:.3f} "
                  f"{row['train_s'] or 0:.1f}s {row['state']} {row['fail_reason'] or ''}",
                  flush=True)
    agg = aggregate(rows)
    order = ordering_report(agg, PAPER_TABLE1)
    print(f"our order: {' < '.join(order['our_order'])}; paper: "
          f"{' < '.join(order['paper_order'])}; Kendall tau {order['kendall_tau']}")
    write_result("paper_table1" + ("_smoke" if args.smoke else ""), {
        "experiment": "paper_table1",
        "budget": {"tokens_per_run": tokens, "batch_size": batch, "seq_len": model["seq_len"],
                   "lr": args.lr, "eval_batches": evals, "compile": args.compile},
        "model": model, "seeds": seeds, "variants": variants, "corpus": corpus_of(rows),
        "wall_s": time.perf_counter() - start, "paper": PAPER_TABLE1,
        "runs": rows, "summary": agg, "ordering": order,
    }, out=args.out and __import__("pathlib").Path(args.out))


if __name__ == "__main__":
    sys.exit(guarded(main))
