"""How much a search learns per GPU-hour: the `paper_dense.yaml` space run by the product's
own search command in labelled configurations, side by side in one session.

Per run it records the wall time, NVML utilisation (mean and trace, sampled by the search
itself), the share of wall time inside training steps, trials per GPU-hour, and per trial
the timing breakdown (build, compile, throughput, train, eval), the compile decision and the
achieved training tokens/s against the trial's measured step throughput.

    python -m experiments.search_efficiency                            # on a GPU
    python -m experiments.search_efficiency --runs eager,auto,auto-x2 --tokens 10000000
    python -m experiments.search_efficiency --smoke                    # CPU, seconds

Runs: ``eager`` (compile: false), ``auto`` (compile: auto, the default), ``auto-x2`` (compile
auto, two trials per GPU: `execution.trials_per_gpu: 2`), ``eager-x2`` (compile: false, two
trials per GPU), ``ray-eager-x2`` (the same through Ray on every GPU of the machine).
``issue`` and ``ray-issue`` run the configuration issue 14 measured, beside ours: the code
of another checkout (``--baseline DIR``, e.g. ``git worktree add DIR ee8172c``) with its own
`paper_dense.yaml` (compile: true), NVML sampled here while its search runs. Writes
experiments/results/search_efficiency_<gpu>.json and a PNG of utilisation over time;
``--merge`` joins result files of several sessions (a later file's run of the same label and
tokens per trial replaces the earlier one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
import yaml

from experiments.common import SEARCH_SPACES, progress, tracked, write_result
from sqa_nas.cli import guarded
from sqa_nas.cli import main as cli_main
from sqa_nas.errors import UserError
from sqa_nas.search.figures import run_stats
from sqa_nas.search.records import trial_records
from sqa_nas.search.study_attrs import read_study_attrs
from sqa_nas.search.utilisation import GpuSampler

RUNS = {
    "eager": {"compile": False, "trials_per_gpu": 1},
    "auto": {"compile": "auto", "trials_per_gpu": 1},
    "auto-x2": {"compile": "auto", "trials_per_gpu": 2},
    "eager-x2": {"compile": False, "trials_per_gpu": 2},
    "ray-eager-x2": {"compile": False, "trials_per_gpu": 2, "executor": "ray"},
    # Another checkout's code and space, untouched but for the budget (needs --baseline).
    "issue": {"baseline": True},
    "ray-issue": {"baseline": True, "executor": "ray"},
}


def _space(label: str, tokens: int, n_trials: int, smoke: bool) -> dict:
    space = yaml.safe_load((SEARCH_SPACES / "paper_dense.yaml").read_text())
    run = RUNS[label]
    space["study"] = f"efficiency_{label}"
    space["budget"]["n_trials"] = n_trials
    space["budget"]["train"].update(tokens=tokens, compile=run["compile"])
    space.setdefault("execution", {})["trials_per_gpu"] = run["trials_per_gpu"]
    if "executor" in run:
        space["execution"]["executor"] = run["executor"]
    if smoke:
        space["model"].update(d_model=32, n_layers=2, n_heads=4, ffn_dim=64, seq_len=32)
        space["budget"]["train"].update(batch_size=4, warmup_steps=2, eval_batches=2)
        space["budget"]["throughput"].update(batch_size=2, warmup=1, repeats=2)
        space["data"] = {"kind": "embedded"}
        space["seed_trials"] = ["MHA", "xSQA"]
        space["execution"].update(device="cpu", trials_per_gpu=1)
    return space


def run(label: str, tokens: int, n_trials: int, smoke: bool) -> dict:
    """One search in a fresh directory; its figures as stored by the search."""
    with tempfile.TemporaryDirectory(prefix="sqa-nas-efficiency-") as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_text(yaml.safe_dump(_space(label, tokens, n_trials, smoke)))
        storage = f"sqlite:///{tmp}/study.db"
        start = time.perf_counter()
        status = cli_main(["search", str(path), "--storage", storage])
        wall = time.perf_counter() - start
        if status:
            raise UserError(f"the {label} search exited with status {status}")
        study = optuna.load_study(study_name=f"efficiency_{label}", storage=storage)
        stats = run_stats(read_study_attrs(study, storage).runs)[-1]
        trials = [r for r in trial_records(study) if r.state == "COMPLETE"]
    rows = []
    for r in trials:
        a, m, t = r.typed, r.typed.metrics, r.typed.timings
        rows.append(
            {
                "number": r.number,
                "allocation": a.allocation,
                "timings": t.stored(),
                "compile": a.compile,
                "throughput_tokens_per_s": m.throughput_tokens_per_s,
                "train_tokens_per_s": m.train_tokens_per_s,
                "train_vs_step": (
                    round(m.train_tokens_per_s / m.throughput_tokens_per_s, 3)
                    if m.train_tokens_per_s and m.throughput_tokens_per_s
                    else None
                ),
            }
        )
    gpus = max(1, len(stats.nvml_util_by_gpu))
    ratios = [x["train_vs_step"] for x in rows if x["train_vs_step"]]
    return {
        "label": label,
        "settings": RUNS[label],
        "tokens_per_trial": tokens,
        "n_trials": len(trials),
        "wall_s": round(wall, 1),
        "search_wall_s": stats.wall_s,
        "nvml_util_mean": stats.nvml_util_mean,
        "nvml_note": stats.nvml_note,
        "nvml_trace": stats.nvml_trace,
        "train_step_share": stats.train_step_share,
        "in_trial_fraction": stats.in_trial_fraction,
        "trials_per_gpu_hour": round(len(trials) / (wall / 3600) / gpus, 1),
        "train_vs_step_median": statistics.median(ratios) if ratios else None,
        "trials": rows,
    }


def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_baseline(label: str, tree: Path, tokens: int, n_trials: int, smoke: bool) -> dict:
    """The search of another checkout (`tree`) on its own `paper_dense.yaml`, only the budget
    (and, with --smoke, the model's size) changed: its command in a child process, NVML
    sampled here over the child's wall time."""
    space = yaml.safe_load((tree / "search_spaces" / "paper_dense.yaml").read_text())
    space["study"] = f"efficiency_{label}"
    space["budget"]["n_trials"] = n_trials
    space["budget"]["train"]["tokens"] = tokens
    if "executor" in RUNS[label]:
        space.setdefault("execution", {})["executor"] = RUNS[label]["executor"]
    if smoke:
        space["model"].update(d_model=32, n_layers=2, n_heads=4, ffn_dim=64, seq_len=32)
        space["budget"]["train"].update(batch_size=4, warmup_steps=2, compile=False)
        space["budget"]["throughput"].update(batch_size=2, warmup=1, repeats=2)
        space["data"] = {"kind": "embedded"}
        space["seed_trials"] = ["MHA", "xSQA"]
        space.setdefault("execution", {})["device"] = "cpu"
    with tempfile.TemporaryDirectory(prefix="sqa-nas-efficiency-") as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_text(yaml.safe_dump(space))
        storage = f"sqlite:///{tmp}/study.db"
        # The checkout's packages first; what the environment already adds stays behind.
        paths = [str(tree.resolve()), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        command = [sys.executable, "cli.py", "search", str(path), "--storage", storage]
        gpus = _gpu_count()
        sampler = GpuSampler(list(range(gpus)) if gpus else None)
        start = time.perf_counter()
        with sampler:
            done = subprocess.run(command, cwd=tree, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        if done.returncode:
            raise UserError(f"the {label} search ({tree}) exited with status {done.returncode}")
        study = optuna.load_study(study_name=f"efficiency_{label}", storage=storage)
        trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    u = sampler.summary()
    rows = [{"number": t.number, "timings": t.user_attrs.get("timings")} for t in trials]
    train = [(r["timings"] or {}).get("train_s") or 0.0 for r in rows]
    n_gpus = max(1, len(u.by_gpu))
    return {
        "label": label,
        "settings": {"baseline": tree.name, "commit": _commit(tree), **space["budget"]["train"]},
        "tokens_per_trial": tokens,
        "n_trials": len(trials),
        "wall_s": round(wall, 1),
        "nvml_util_mean": u.mean,
        "nvml_note": u.note,
        "nvml_trace": u.trace,
        # Its records time whole training calls, compile included: an upper bound.
        "train_step_share": round(sum(train) / (wall * n_gpus), 4) if train else None,
        "train_step_share_note": "train_s per trial, torch.compile inside it (an upper bound)",
        "trials_per_gpu_hour": round(len(trials) / (wall / 3600) / n_gpus, 1),
        "trials": rows,
    }


def _commit(tree: Path) -> str | None:
    """The checkout's commit: a COMMIT file beside its code (what a `git archive` copy
    carries), else `git rev-parse` there."""
    marker = tree / "COMMIT"
    if marker.is_file():
        return marker.read_text().strip()
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def plot(result: dict, out: Path) -> None:
    """Utilisation over time, one line per run (first GPU of each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for r in result["runs"]:
        trace = r.get("nvml_trace") or {}
        first = next(iter((trace.get("by_gpu") or {}).values()), None)
        if first:
            ax.plot(trace["t_s"], first, label=f"{r['label']} {r['tokens_per_trial'] / 1e6:g}M")
    ax.set_xlabel("seconds into the search")
    ax.set_ylabel("GPU utilisation (NVML)")
    ax.set_ylim(0, 1.05)
    ax.set_title(result["machine"]["device"] + ": paper_dense search")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="eager,auto,auto-x2", help=f"of {', '.join(RUNS)}")
    p.add_argument("--tokens", default="10000000", help="tokens per trial, comma-separated")
    p.add_argument("--n-trials", type=int, default=16)
    p.add_argument("--smoke", action="store_true", help="tiny CPU search (a test)")
    p.add_argument(
        "--baseline", type=Path, help="another checkout, for the issue and ray-issue runs"
    )
    p.add_argument(
        "--merge", nargs="+", type=Path, help="join result files (later runs replace earlier)"
    )
    p.add_argument("--plot", type=Path, help="only draw the PNG of this result file")
    p.add_argument("--out", type=Path, help="result file (default experiments/results/...)")
    args = p.parse_args(argv)
    if args.plot:
        plot(json.loads(args.plot.read_text()), args.plot.with_suffix(".png"))
        return 0
    if args.merge:
        files = [json.loads(f.read_text()) for f in args.merge]
        # A later file's run replaces an earlier one of the same label and budget.
        # Each run names the file it was measured in: runs of one file share a session.
        by_key = {
            (r["label"], r["tokens_per_trial"]): {"source": name.name} | r
            for name, f in zip(args.merge, files)
            for r in f["runs"]
        }
        runs = list(by_key.values())
        # The commands that measured them (a merged file's own sources, not its merge).
        sources = [c for f in files for c in f.get("merged_from") or [f.get("command")]]
        # The files by name only: where they were kept on the merging machine says nothing.
        command = " ".join(
            ["python -m experiments.search_efficiency --merge"] + [f.name for f in args.merge]
        )
        payload = {"runs": runs, "merged_from": sources, "command": command}
        write_result("search_efficiency", payload, args.out, machine=files[0]["machine"])
        return 0
    labels = [x for x in args.runs.split(",") if x]
    unknown = sorted(set(labels) - set(RUNS))
    if unknown:
        raise UserError(f"--runs: unknown {', '.join(unknown)}; known: {', '.join(RUNS)}")
    try:
        budgets = [int(x) for x in args.tokens.split(",") if x]
    except ValueError:
        raise UserError(f"--tokens: whole numbers, comma-separated, got {args.tokens!r}") from None
    if any("baseline" in RUNS[x] for x in labels) and not (
        args.baseline and (args.baseline / "cli.py").is_file()
    ):
        raise UserError(f"--runs {args.runs}: give --baseline DIR, a checkout with its cli.py")
    if not args.smoke and not torch.cuda.is_available():
        raise UserError("search_efficiency needs a CUDA GPU (or --smoke on the CPU)")
    if args.smoke:
        budgets, args.n_trials = [2048], 2
    runs = []
    grid = [(tokens, label) for tokens in budgets for label in labels]
    for tokens, label in tracked(grid, "runs", lambda x: f"{x[1]} {x[0] / 1e6:g}M"):
        if "baseline" in RUNS[label]:
            runs.append(run_baseline(label, args.baseline, tokens, args.n_trials, args.smoke))
        else:
            runs.append(run(label, tokens, args.n_trials, args.smoke))
        r = runs[-1]
        progress(
            f"{label} {tokens / 1e6:g}M: {r['n_trials']} trials in {r['wall_s']:.0f} s, "
            f"NVML {r['nvml_util_mean']}, train-step share {r['train_step_share']}, "
            f"{r['trials_per_gpu_hour']} trials/GPU-hour"
        )
    name = "search_efficiency" + ("_smoke" if args.smoke else "")
    out = write_result(name, {"runs": runs}, args.out)
    if not args.smoke:
        try:
            plot(json.loads(out.read_text()), out.with_suffix(".png"))
        except ImportError as exc:  # a GPU machine without matplotlib: draw it with --plot
            progress(f"no PNG ({exc}); draw it with --plot {out}")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
