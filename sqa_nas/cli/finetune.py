"""`sqa-nas finetune DIR --data SPEC --tokens N [--lr LR] [--out DIR2]`: continued training of
an sqa-nas export (a converted model) with the project's training loop; writes the trained
weights as a new export with ``finetune.json`` (settings, loss curve, validation loss before
and after). Nothing is written until training has finished."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from sqa_nas.cli import console, shown
from sqa_nas.cli.args import positive, whole
from sqa_nas.cli.convert import check_out
from sqa_nas.convert import (
    FinetuneSettings,
    export_model,
    finetune,
    load_data,
    load_export,
    read_data_spec,
    write_record,
)
from sqa_nas.errors import UserError
from sqa_nas.export import hf
from sqa_nas.export.torch_code import allocation_text
from sqa_nas.progress import Bar
from sqa_nas.train import pick_device


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="an sqa-nas export folder (what `sqa-nas convert` writes)")
    p.add_argument(
        "--data",
        metavar="DATA",
        help="training data: a data kind, a YAML data mapping, or a YAML file with one (a "
        "search space's data: section); default: embedded",
    )
    p.add_argument("--tokens", type=positive, required=True, metavar="N", help="training tokens")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=positive, default=8, metavar="B")
    p.add_argument("--seq-len", type=positive, default=512, metavar="N")
    p.add_argument("--warmup-steps", type=whole(0), metavar="N", help="default: steps / 10")
    p.add_argument("--eval-batches", type=positive, default=8, metavar="N")
    p.add_argument("--seed", type=whole(0), default=0, help="data order seed")
    p.add_argument("--compile", action="store_true", help="torch.compile the blocks (GPU)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--out", metavar="DIR2", help="the export folder to write (default: DIR-finetuned)"
    )
    p.add_argument("--force", action="store_true", help="write into a folder holding files")


def run_finetune_command(args) -> int:
    folder = Path(args.dir)
    out = Path(args.out) if args.out else folder.with_name(folder.name + "-finetuned")
    if not 0 < args.lr < math.inf:
        raise UserError(f"--lr must be a finite number > 0, got {args.lr}")
    if out.resolve() == folder.resolve():
        raise UserError(f"--out {out} is DIR itself: give another folder")
    check_out(out, args.force)
    device = pick_device("cpu" if args.device == "cpu" else "auto")
    if args.device == "cuda" and device.type != "cuda":
        raise UserError("--device cuda: no GPU is visible")
    spec = read_data_spec(args.data)
    model = load_export(folder)
    fmt = "hf" if (folder / "config.json").is_file() else "torch"  # the source's format
    if fmt == "hf" and (missing := hf.transformers_missing()):
        raise UserError(f"{folder} is a Hugging Face export and {missing}: nothing was trained")
    data = load_data(spec, model.config.vocab_size)
    settings = FinetuneSettings(
        tokens=args.tokens,
        lr=args.lr,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        seed=args.seed,
        warmup_steps=args.warmup_steps,
        eval_batches=args.eval_batches,
        compile=args.compile,
    )
    total = settings.train_config().planned_steps
    with Bar(total, "steps", console=console) as bar:
        bar.update(0, "evaluating before training")
        record = finetune(
            model,
            data,
            settings,
            device,
            lambda p: bar.update(p["step"], f"loss {p['loss']:.4f}"),
        )
        bar.update(record["steps"])
    record = {"source": str(folder), "data_spec": spec, **record}
    before, after = record["val_before"], record["val_after"]
    provenance = dict(model.config.provenance or {})
    provenance["finetune"] = {
        "source": str(folder),
        "tokens": record["tokens"],
        "lr": args.lr,
        "val_loss_before": before["val_loss"],
        "val_loss_after": after["val_loss"],
    }
    provenance["weights"] = f"fine-tuned for {record['tokens']:,} tokens (sqa-nas finetune)"
    state = model.to("cpu").state_dict()
    title = f"{allocation_text(model.config)}: fine-tuned for {record['tokens']:,} tokens"
    export_model(
        model.config,
        out,
        fmt=fmt,
        state_dict=state,
        provenance=provenance,
        title=title,
        force=args.force,
    )
    write_record(record, out)
    console.print(
        f"val_loss {before['val_loss']:.4f} -> {after['val_loss']:.4f} after "
        f"{record['tokens']:,} tokens ({record['seconds']:.1f} s); wrote {shown(out)}/"
    )
    return 0
