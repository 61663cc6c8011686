"""Result JSON -> markdown tables, target checks and PNGs: the README's Performance section.

Reads what `sqa-nas bench --json`, `paper_table3`, `long_context`, and the diagnoses
`host_time` and `clocks` wrote, checks the
project's performance targets against it (each with its margin, and for a miss the numbers
that explain it), draws the plots, and writes `docs/performance.md`. Nothing here runs a
benchmark, and nothing is typed in by hand: every number comes from a result file.

    python -m experiments.report                       # experiments/results/*.json
    python -m experiments.report FILE.json ... --out docs/performance.md
    python -m experiments.report --section             # print the README section

Only the PNG step needs matplotlib, so the GPU scripts import the table functions from here.
The rows of bench, paper_table3 and long_context files are read as `BenchRow`s (`rows_of`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from experiments.common import DOCS, RESULTS, ROOT
from sqa_nas.bench import BenchRow, as_rows, group_rows, plot_rows
from sqa_nas.machine import header_line

DOC = DOCS / "performance.md"
H200_SMS = 132  # streaming multiprocessors of an H200 SXM; used only in explanations
PAPER_VARIANTS = ("MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA")


# ------------------------------------------------------------------------------ loading
def kind(result: dict) -> str:
    schema = result.get("schema", "")
    for name in ("paper_table3", "long_context", "bench", "host_time", "clocks"):
        if f"/{name}/" in schema:
            return name
    if schema:  # another script's result
        return "unknown"
    return "bench" if "rows" in result and "machine" in result else "unknown"


def load(paths: Iterable[str | Path]) -> list[dict]:
    """Result files (with "rows") and calibration files (with "entries"), each tagged with
    its path; other JSON is skipped."""
    out = []
    for path in sorted(Path(p) for p in paths):
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or ("rows" in data and kind(data) == "unknown"):
            continue
        if "machine" in data and ("rows" in data or "entries" in data):
            data["_path"] = str(path)
            out.append(data)
    return out


def rows_of(result: dict) -> list[BenchRow]:
    """The rows of a bench, paper_table3 or long_context result, typed: the one reader of
    their JSON (columns a script added are in each row's `extra`)."""
    return as_rows(result["rows"])


def calibration_markdown(cal: dict) -> str:
    """The backend order `bench --calibration-out` measured, per mask family."""
    body = [
        [
            e["pattern"],
            e["dtype"],
            {True: "causal", False: "bidirectional", None: "both"}[e.get("causal")],
            {True: "fwd+bwd", False: "fwd", None: "both"}[e.get("train")],
            " > ".join(e["order"]),
            e["source"].rpartition("; ")[2],
        ]
        for e in cal["entries"]
    ]
    return _table(["pattern", "dtype", "mask", "mode", "measured order", "score"], body)


# ------------------------------------------------------------------------------ formatting
def _n(n: int) -> str:
    return f"{n:,}"


def _sec(s: float) -> str:
    return f"{s:.4f}" if s < 10 else f"{s:.2f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _or(value, default):
    """`value`, or `default` where the row lacks it (None)."""
    return default if value is None else value


def _heads(r: BenchRow) -> str:
    return f"{_or(r.n_q_heads, '?')}/{_or(r.n_kv_heads, '?')}"


def _kernels(rows: list[BenchRow]) -> str:
    seen = sorted(
        {
            f"{_or(r.backend, '?')} ({r.kernel})" if r.kernel else _or(r.backend, "?")
            for r in rows
            if r.timed
        }
    )
    return ", ".join(seen) or "none"


def _errors(rows: list[BenchRow]) -> list[str]:
    return sorted(
        {f"{r.variant} @ {_n(r.seq_len)}: {r.error}" for r in rows if r.error is not None}
    )


def _machine_line(machine: dict) -> str:
    return header_line(machine)


# ------------------------------------------------------------------------------ tables
def paper_table3_markdown(result: dict, h: str = "###") -> str:
    """Seconds per forward step, one table per head_dim; at head_dim 16 each cell also
    gives its share of the paper's A100 time, and the last column xSQA's speedup over GQA
    (the paper's in brackets)."""
    rows = rows_of(result)
    ref = result.get("reference", {}).get("paper_a100_s", {})
    out = []
    for hd in sorted({r.head_dim for r in rows}):
        sub = [r for r in rows if r.head_dim == hd]
        variants = list(dict.fromkeys(r.variant for r in sub))
        d_model = sub[0].n_heads * hd
        what = "the paper's model" if hd == 16 else "the same family"
        out.append(
            f"{h} head_dim {hd} ({what}: d_model {d_model}, "
            f"{sub[0].extra.get('n_layers', 8)} layers), seconds per forward step"
        )
        body = []
        for n in sorted({r.seq_len for r in sub}):
            at = {r.variant: r for r in sub if r.seq_len == n}
            batch = next(iter(at.values())).batch
            cells = []
            for v in variants:
                r = at.get(v)
                if r is None or not r.timed:
                    cells.append("error" if r is not None and r.error is not None else "-")
                    continue
                text = _sec(r.ms / 1e3)
                if "fraction_of_paper" in r.extra:
                    text += f" ({r.extra['fraction_of_paper']:.0%})"
                cells.append(text)
            gain = ""
            xsqa, gqa = at.get("xSQA"), at.get("GQA")
            if xsqa is not None and gqa is not None and xsqa.timed and gqa.timed:
                gain = f"{gqa.ms / xsqa.ms:.2f}x"
                paper = ref.get(str(n)) or ref.get(n)
                if paper and "fraction_of_paper" in xsqa.extra:
                    gain += f" ({paper['GQA'] / paper['xSQA']:.2f}x)"
            body.append([f"{_n(n)} ({batch})", *cells, gain])
        out.append(_table(["seq (batch)", *variants, "xSQA vs GQA"], body))
        notes = [f"kernels: {_kernels(sub)}"]
        if hd == 16 and any("fraction_of_paper" in r.extra for r in sub):
            notes.append(
                "in brackets: share of the paper's A100 time (target <= 33%), and "
                "the paper's own xSQA vs GQA"
            )
        notes += [f"failed: {e}" for e in _errors(sub)]
        out.append("\n".join(f"- {x}" for x in notes))
    return "\n\n".join(out)


def long_context_markdown(result: dict, h: str = "###") -> str:
    rows = rows_of(result)
    out = []
    heads = [r for r in rows if r.extra.get("part") == "heads"]
    if heads:
        n = heads[0].seq_len
        out.append(
            f"{h} Same mask, different heads: {_n(n)} tokens, causal forward, "
            f"head_dim {heads[0].head_dim}"
        )
        body = [
            [
                r.variant,
                _heads(r),
                _or(r.mask, r.pattern),
                _or(r.backend_requested, "auto"),
                _or(r.kernel, "-"),
                *_timing(r, "MHA"),
            ]
            for r in heads
        ]
        out.append(
            _table(
                [
                    "heads of",
                    "H_q/H_kv",
                    "mask",
                    "backend",
                    "kernel",
                    "ms",
                    "TFLOP/s (effective)",
                    "vs MHA heads",
                ],
                body,
            )
        )
    lengths = [r for r in rows if r.extra.get("part") == "lengths"]
    if lengths:
        out.append(f"{h} SW-SQA and Flex-SQA against dense attention, by length")
        body = [
            [
                _n(r.seq_len),
                r.variant,
                _heads(r),
                _or(r.mask, r.pattern),
                r.mode,
                _or(r.kernel, "-"),
                *_timing(r, "dense_MHA"),
            ]
            for r in sorted(
                lengths, key=lambda r: (r.seq_len, r.pattern == "dense", r.variant, r.mode)
            )
        ]
        out.append(
            _table(
                [
                    "seq",
                    "variant",
                    "H_q/H_kv",
                    "mask",
                    "mode",
                    "kernel",
                    "ms",
                    "TFLOP/s (effective)",
                    "vs dense MHA",
                ],
                body,
            )
        )
    errors = _errors(rows)
    if errors:
        out.append("\n".join(f"- failed: {e}" for e in errors))
    return "\n\n".join(out)


def _timing(r: BenchRow, baseline: str) -> list[str]:
    """ms, TFLOP/s and the speedup over `baseline`; an untimed row's error instead."""
    if not r.timed:
        return [_or(r.error, "-")[:80], "", ""]
    speedup = r.speedup(baseline)
    speed = f"{speedup:.2f}x" if speedup is not None else "-"
    return [f"{r.ms:.2f}", f"{r.tflops:.0f}" if r.tflops >= 10 else f"{r.tflops:.2g}", speed]


def bench_markdown(result: dict, h: str = "###") -> str:
    out = []
    rows_all = rows_of(result)
    several = any(r.fraction_of_best is not None for r in rows_all)
    for title, rows in group_rows(rows_all).items():
        out.append(f"{h} {title[0].upper() + title[1:]}")
        header = [
            "variant",
            "N",
            "H_q/H_kv",
            "backend",
            "kernel",
            "ms",
            "TFLOP/s",
            "vs MHA",
            "vs GQA",
        ] + (["of best"] if several else [])
        body = []
        for r in rows:
            base = [
                r.variant,
                _n(r.seq_len),
                _heads(r),
                _or(r.backend_requested, "auto"),
                _or(r.kernel, "-"),
            ]
            if not r.timed:
                body.append(base + [_or(r.error, "-")[:80]] + [""] * (len(header) - 6))
                continue
            body.append(
                base
                + [
                    f"{r.ms:.3f}",
                    f"{r.tflops:.1f}",
                    *[
                        f"{r.speedup(b):.2f}x" if r.speedup(b) is not None else "-"
                        for b in ("MHA", "GQA")
                    ],
                ]
                + (
                    [f"{r.fraction_of_best:.0%}" if r.fraction_of_best is not None else "-"]
                    if several
                    else []
                )
            )
        out.append(_table(header, body))
    return "\n\n".join(out)


# ------------------------------------------------------------------------------ targets
def _target(
    name: str,
    value: float | None,
    goal: float,
    *,
    at_most: bool = False,
    unit: str = "x",
    note: str = "",
) -> dict:
    def fmt(x):
        return (
            f"{x:.0%}"
            if unit == "%"
            else f"{x:.1f}"
            if unit == "TFLOP/s"
            else f"{x:.4f} s"
            if unit == "s"
            else f"{x:.2f}x"
        )

    goal_text = (
        ("<= " if at_most else ">= ") + fmt(goal) + (" TFLOP/s" if unit == "TFLOP/s" else "")
    )
    if value is None:
        return {
            "target": name,
            "goal": goal_text,
            "measured": "not measured",
            "ok": None,
            "margin": "",
            "note": note,
        }
    ok = value <= goal if at_most else value >= goal
    margin = (goal / value - 1) if at_most else (value / goal - 1)
    return {
        "target": name,
        "goal": goal_text,
        "measured": fmt(value) + (" TFLOP/s" if unit == "TFLOP/s" else ""),
        "ok": ok,
        "margin": f"{margin:+.0%}" if abs(margin) >= 0.01 else f"{margin:+.2%}",
        "note": "" if ok else note,
    }


def _grid_note(r: BenchRow) -> str:
    """Why a small head count can fall short: the kernel's grid of 128-query tiles."""
    tiles = r.batch * _or(r.n_q_heads, 1) * math.ceil(r.seq_len / 128)
    return (
        f"{_or(r.kernel, _or(r.backend, '?'))}: {tiles:,} query tiles of 128 for "
        f"{H200_SMS} SMs ({tiles / H200_SMS:.1f} waves)"
    )


def _stopped_in(files: list[dict], pattern: str) -> str:
    """Why a long-context file has no rows of `pattern`: the row it was running when it
    stopped (cut by its row limit, or ended from outside), if that row was one."""
    for res in files:
        running = res.get("running") or {}
        if f" {pattern} " in running.get("cell", ""):
            limit = running.get("row_timeout_s")
            return (
                f"the run stopped while its first row was running ({Path(res['_path']).name}"
                + (f"; row limit {limit:.0f} s)" if limit else ")")
            )
    return "no rows in the loaded files"


def targets(results: list[dict]) -> list[dict]:
    """Every target of issue 7 that the loaded results can answer; None = not measured."""
    out: list[dict] = []
    results = [r for r in results if "rows" in r]
    bench = [r for res in results if kind(res) == "bench" for r in rows_of(res)]

    def pick(rows: list[BenchRow], **want) -> list[BenchRow]:
        return [r for r in rows if all(r.value(k) == v for k, v in want.items())]

    # 1. 128k, head_dim 128, non-causal forward: SQA >= 1.95x, xSQA >= 3.8x over MHA (auto).
    for scope in ("kernel", "layer"):
        cell = pick(
            bench,
            head_dim=128,
            seq_len=131072,
            causal=False,
            pattern="dense",
            mode="fwd",
            scope=scope,
            backend_requested="auto",
        )
        for variant, goal in (("SQA", 1.95), ("xSQA", 3.8)):
            for r in pick(cell, variant=variant):
                mha = pick(cell, variant="MHA", batch=r.batch)
                note = (
                    (
                        f"MHA {mha[0].tflops:.0f} TFLOP/s vs {variant} {r.tflops:.0f}; "
                        + _grid_note(r)
                    )
                    if mha and mha[0].tflops is not None and r.tflops is not None
                    else ""
                )
                out.append(
                    _target(
                        f"{scope}, hd128, 128k, non-causal fwd: {variant} vs MHA "
                        f"(auto, batch {r.batch})",
                        r.speedup("MHA"),
                        goal,
                        note=note,
                    )
                )
        # 2. auto >= 90% of the best raw kernel on that cell.
        for r in cell:
            if r.fraction_of_best is not None:
                out.append(
                    _target(
                        f"{scope}, hd128, 128k, non-causal fwd: auto ({r.backend})"
                        f" vs best kernel ({r.best_backend}), {r.variant}",
                        r.fraction_of_best,
                        0.9,
                        unit="%",
                        note="auto picked a slower kernel: update the calibration",
                    )
                )
    # 3. Dense causal forward, head_dim 128, 32k: >= 650 TFLOP/s, MHA, SQA and xSQA heads.
    clocks = [
        c
        | {
            "head_dim": res["settings"]["head_dim"],
            "seconds": res["settings"]["seconds"],
            "_file": Path(res["_path"]).name,
        }
        for res in results
        if kind(res) == "clocks"
        for c in res["rows"]
    ]
    for r in pick(
        bench,
        head_dim=128,
        seq_len=32768,
        causal=True,
        pattern="dense",
        mode="fwd",
        scope="kernel",
        backend_requested="auto",
    ):
        if r.variant in ("MHA", "SQA", "xSQA"):
            out.append(
                _target(
                    f"kernel, hd128, 32k, causal fwd: {r.variant} heads (batch {r.batch})",
                    r.tflops,
                    650,
                    unit="TFLOP/s",
                    note=_grid_note(r) + _clocks_note(clocks, r),
                )
            )
    # 4. Window 4096 (+ 16 global) at 128k causal fwd: >= 550 TFLOP/s; xSQA >= 3.5x MHA.
    long_files = [res for res in results if kind(res) == "long_context"]
    long = [r for res in long_files for r in rows_of(res)]
    for pattern in ("window", "flex"):
        cell = pick(
            long,
            part="heads",
            seq_len=131072,
            mode="fwd",
            pattern=pattern,
            backend_requested="auto",
        )
        label = "SW (window)" if pattern == "window" else "Flex (window + global)"
        for r in cell:
            if r.variant in ("MHA", "sSQA", "xSQA"):
                out.append(
                    _target(
                        f"{label}, 128k causal fwd: {r.variant} heads",
                        r.tflops,
                        550,
                        unit="TFLOP/s",
                        note=_grid_note(r),
                    )
                )
        for r in pick(cell, variant="xSQA"):
            out.append(
                _target(
                    f"{label}, 128k causal fwd: xSQA heads vs MHA heads", r.speedup("MHA"), 3.5
                )
            )
        if long_files and not cell:  # say so, and why, rather than leave the target out
            out.append(
                _target(
                    f"{label}, 128k causal fwd",
                    None,
                    550,
                    unit="TFLOP/s",
                    note=_stopped_in(long_files, pattern),
                )
            )
    # 5. 1M-token SW-SQA forward runs and is reported.
    if long:
        million = pick(long, part="lengths", seq_len=1_048_576, variant="SW-SQA", mode="fwd")
        ran = [r for r in million if r.timed]
        out.append(
            {
                "target": "SW-SQA forward at 1M tokens on one GPU",
                "goal": "runs",
                "measured": f"{ran[0].ms:.1f} ms"
                if ran
                else (_or(million[0].error, "not run") if million else "not measured"),
                "ok": bool(ran) if million else None,
                "margin": "",
                "note": "",
            }
        )
    # 6. Paper Table 3, head_dim 16: every cell <= 1/3 of the A100 time; xSQA/GQA >= 3.5x.
    for res in results:
        if kind(res) != "paper_table3":
            continue
        rows = [r for r in rows_of(res) if r.head_dim == 16 and "paper_a100_s" in r.extra]
        profiles = {
            (p["variant"], p["seq_len"]): p
            for p in res.get("profiles", [])
            if p.get("head_dim") == 16
        }
        for r in rows:
            note = ""
            if r.timed:
                step = r.ms / 1e3
                floor = r.extra.get("softmax_exp_floor_s", 0)
                note = f"softmax exp floor {floor:.3f} s ({floor / step:.0%} of the step)"
                prof = profiles.get((r.variant, r.seq_len))
                if prof and "attention_share" in prof:
                    note += f"; attention kernels {prof['attention_share']:.0%} of GPU time"
            out.append(
                _target(
                    f"Table 3, hd16, {_n(r.seq_len)}: {r.variant} / A100",
                    r.extra.get("fraction_of_paper"),
                    1 / 3,
                    at_most=True,
                    unit="%",
                    note=note or _or(r.error, ""),
                )
            )
        for n in (131072, 200000):
            at = {r.variant: r for r in rows if r.seq_len == n and r.timed}
            if "xSQA" in at and "GQA" in at:
                out.append(
                    _target(
                        f"Table 3, hd16, {_n(n)}: xSQA vs GQA",
                        at["GQA"].ms / at["xSQA"].ms,
                        3.5,
                        note=f"GQA {at['GQA'].ms:.0f} ms, xSQA {at['xSQA'].ms:.0f} ms",
                    )
                )
    return out


# NVML's clock-event (throttle) reason bits, as nvidia-smi prints them
CLOCK_EVENTS = {
    0x1: "idle",
    0x2: "applications clocks",
    0x4: "SW power cap",
    0x8: "HW slowdown",
    0x10: "sync boost",
    0x20: "SW thermal",
    0x40: "HW thermal",
    0x80: "HW power brake",
    0x100: "display clocks",
}


def clock_events(codes: Iterable[str]) -> str:
    bits = 0
    for code in codes:
        try:
            bits |= int(code, 16)
        except ValueError:
            continue
    return ", ".join(name for bit, name in CLOCK_EVENTS.items() if bits & bit) or "none"


def clocks_markdown(result: dict, h: str = "###") -> str:
    """clocks.py: per row, time per call and per sequence under sustained load, with the
    SM clock, power and clock-event reasons sampled meanwhile."""
    s = result.get("settings", {})
    body = [
        [
            r["variant"],
            r["batch"],
            r["calls"],
            f"{r['ms']:.3f}",
            f"{r['ms_per_sequence']:.3f}",
            f"{r['sm_clock_mhz']:.0f} / {r['sm_clock_min_mhz']:.0f}",
            f"{r['power_w']:.0f}",
            f"{r['temperature_c']:.0f}",
            clock_events(r["event_reasons"]),
        ]
        for r in result["rows"]
    ]
    return (
        f"Causal forward, head_dim {s.get('head_dim', '?')}, {s.get('seq_len', 0):,} "
        f"tokens, each row's call queued back to back for {s.get('seconds', '?')} s.\n\n"
        + _table(
            [
                "variant",
                "batch",
                "calls",
                "ms",
                "ms per sequence",
                "SM MHz (median / min)",
                "W",
                "max C",
                "clock events",
            ],
            body,
        )
    )


def host_time_markdown(result: dict, h: str = "###") -> str:
    """host_time.py: synchronised vs queued samples, device and host time per call."""
    s = result.get("settings", {})
    body = [
        [
            r["variant"],
            f"{r['synced_ms']:.3f}",
            f"{r['queued_ms']:.3f}",
            f"{r['device_ms']:.3f}",
            f"{r['host_ms']:.3f}",
        ]
        for r in result["rows"]
    ]
    return (
        f"{s.get('pattern', '?')} mask, {s.get('mode', '?')}, head_dim "
        f"{s.get('head_dim', '?')}, {s.get('seq_len', 0):,} tokens.\n\n"
        + _table(
            [
                "variant",
                "synchronised ms",
                "queued ms",
                "device ms (profiler)",
                "host ms per call",
            ],
            body,
        )
    )


def _clocks_note(clocks: list[dict], r: BenchRow) -> str:
    """For a TFLOP/s miss: what the clocks did while the same row ran for seconds (`clocks`:
    the rows of clocks files)."""
    same = [
        c
        for c in clocks
        if c["variant"] == r.variant and c["seq_len"] == r.seq_len and c["head_dim"] == r.head_dim
    ]
    if not same:
        return ""
    c = min(same, key=lambda c: c["batch"] != r.batch)
    per_seq = ", ".join(
        f"batch {x['batch']} {x['ms_per_sequence']:.2f}"
        for x in sorted(same, key=lambda x: x["batch"])
    )
    held = (
        f" = {r.flops / (c['ms'] / 1e3) / 1e12:.0f} TFLOP/s"
        if c["batch"] == r.batch and r.flops
        else ""
    )
    return (
        f"; held for {c['seconds']:g} s ({c['_file']}): {c['ms']:.2f} ms a call{held}, SM "
        f"clock {c['sm_clock_mhz']:.0f} MHz median, {c['sm_clock_min_mhz']:.0f} min, at "
        f"{c['power_w']:.0f} W ({clock_events(c['event_reasons'])}); ms per sequence "
        f"{per_seq}"
    )


def targets_markdown(items: list[dict]) -> str:
    if not items:
        return "No result file answers a target yet."
    mark = {True: "met", False: "**missed**", None: "not measured"}
    return _table(
        ["target", "goal", "measured", "margin", "", "why (for a miss)"],
        [
            [t["target"], t["goal"], t["measured"], t["margin"], mark[t["ok"]], t["note"]]
            for t in items
        ],
    )


# ------------------------------------------------------------------------------ plots
def write_pngs(result: dict, png_dir: Path) -> list[Path]:
    """One PNG per result file: time and speedup vs length (see `sqa_nas.bench.plot_rows`)."""
    stem = Path(result.get("_path", "result.json")).stem
    title = _machine_line(result["machine"])
    k = kind(result)
    if k == "paper_table3":
        return [
            plot_rows(
                rows_of(result), png_dir / f"{stem}.png", title=title, panel_keys=("head_dim",)
            )
        ]
    if k == "long_context":
        rows = [r for r in rows_of(result) if r.extra.get("part") == "lengths"]
        if not any(r.timed for r in rows):  # nothing timed: no empty axes
            return []
        return [
            plot_rows(
                rows,
                png_dir / f"{stem}.png",
                title=title,
                panel_keys=("mode",),
                baseline="dense_MHA",
            )
        ]
    if k != "bench":  # diagnoses: tables only
        return []
    rows = rows_of(result)
    if not any(r.timed for r in rows):
        return []
    return [plot_rows(rows, png_dir / f"{stem}.png", title=title)]


# ------------------------------------------------------------------------------ the page
def body(
    results: list[dict], pngs: dict[str, list[Path]], relative_to: Path, level: int = 2
) -> str:
    """The Performance section's content, headings starting at `level`."""
    h, hh = "#" * level, "#" * (level + 1)
    calibrations = [r for r in results if "entries" in r]
    results = [r for r in results if "rows" in r]
    parts = []
    machines = sorted({_machine_line(r["machine"]) for r in results})
    parts.append(
        f"{h} Where and how\n\n"
        + "\n".join(f"- {m}" for m in machines)
        + "\n- every number below comes from a committed JSON file under "
        "`experiments/results/` (file names in each subsection); rerun the command "
        "recorded in the file to reproduce it"
    )
    parts.append(f"{h} Targets\n\n" + targets_markdown(targets(results)))
    order = {"paper_table3": 0, "bench": 1, "long_context": 2, "host_time": 3, "clocks": 4}
    for res in sorted(results, key=lambda r: (order.get(kind(r), 9), r["_path"])):
        k = kind(res)
        path = Path(res["_path"])
        rel = os.path.relpath(path, relative_to)
        title = {
            "paper_table3": "Paper Table 3 (whole model, forward)",
            "long_context": "Long context: SW-SQA and Flex-SQA",
            "bench": "Attention kernels",
            "host_time": "Host time per call (diagnosis)",
            "clocks": "Clocks under sustained load (diagnosis)",
        }.get(k, k)
        command = res.get("settings", {}).get("command", "") or res.get("command", "")
        if res.get("running"):
            hung = res["running"]
            title += (
                f" (partial: stopped in {hung['variant']} @ {hung['seq_len']}, "
                f"{hung['cell']}, which did not return within "
                f"{hung.get('row_timeout_s') or '?'} s)"
            )
        elif res.get("partial"):
            title += " (partial: the run stopped before its last cell)"
        text = [
            f"{h} {title}",
            f"From [`{path.name}`]({rel})" + (f", made by `{command}`." if command else "."),
        ]
        text.append(
            {
                "paper_table3": paper_table3_markdown,
                "long_context": long_context_markdown,
                "bench": bench_markdown,
                "host_time": host_time_markdown,
                "clocks": clocks_markdown,
            }[k](res, hh)
            if k in order
            else ""
        )
        for png in pngs.get(res["_path"], []):
            text.append(f"![{png.stem}]({os.path.relpath(png, relative_to)})")
        parts.append("\n\n".join(text))
    for cal in calibrations:
        path = Path(cal["_path"])
        parts.append(
            f"{h} Measured backend order\n\nFrom [`{path.name}`]"
            f"({os.path.relpath(path, relative_to)}); `SQA_NAS_CALIBRATION="
            f'{path.name}` makes `backend="auto"` follow it where it measured '
            "every backend able to run the problem.\n\n" + calibration_markdown(cal)
        )
    return "\n\n".join(parts) + "\n"


def readme_section(results: list[dict]) -> str:
    """The README's Performance section: the machine, every target's verdict in one line
    per kind, the misses spelled out, the paper's Table 3 with its plot, and a link to the
    full page (docs/performance.md)."""
    runs = [r for r in results if "rows" in r]
    if not runs:
        return "## Performance\n\nNo results yet: see `experiments/README.md`.\n"
    items = targets(runs)
    counts = {state: sum(t["ok"] is state for t in items) for state in (True, False, None)}
    lines = [
        "## Performance",
        "",
        "Measured on "
        + "; ".join(sorted({_machine_line(r["machine"]) for r in runs}))
        + f". Targets: {counts[True]} met, {counts[False]} missed, {counts[None]} not "
        "measured. Every figure comes from a committed JSON file under "
        "`experiments/results/`; the full tables, plots and the command behind each file "
        "are in [docs/performance.md](docs/performance.md) (both generated by "
        "`python -m experiments.report`).",
    ]
    misses = [t for t in items if t["ok"] is not True]
    if misses:
        lines += ["", targets_markdown(misses)]
    for res in runs:
        if kind(res) == "paper_table3":
            path = Path(res["_path"])
            lines += [
                "",
                f"### Paper Table 3 on the H200 ([`{path.name}`]({os.path.relpath(path, ROOT)}))",
                "",
                paper_table3_markdown(res, "####"),
            ]
            png = path.with_suffix(".png")
            if png.exists():
                lines += ["", f"![{png.stem}]({os.path.relpath(png, ROOT)})"]
    return "\n".join(lines) + "\n"


HOW = """How this page is made: the GPU scripts write JSON with a machine header into
`experiments/results/`, and `python -m experiments.report` turns every JSON there into
the tables, target checks and PNGs below (the same text, one heading level down, is the
README's Performance section: `python -m experiments.report --section`). The commands
that made each file are recorded in it and listed in `experiments/README.md`."""


def page(results: list[dict], pngs: dict[str, list[Path]], out: Path) -> str:
    head = (
        "# Performance\n\n<!-- generated by python -m experiments.report from "
        "experiments/results/*.json: do not edit by hand -->\n\n" + HOW + "\n\n"
    )
    if not results:
        return head + "No results yet: run the commands in `experiments/README.md` on a GPU.\n"
    return head + body(results, pngs, out.parent, level=2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "results",
        nargs="*",
        type=Path,
        help="result JSON files (default: experiments/results/*.json)",
    )
    p.add_argument("--out", type=Path, default=DOC, help="the page to write")
    p.add_argument("--png-dir", type=Path, help="where PNGs go (default: beside each JSON)")
    p.add_argument("--no-png", action="store_true")
    p.add_argument(
        "--section",
        action="store_true",
        help="print the README's Performance section instead of writing the page",
    )
    args = p.parse_args(argv)
    results = load(args.results or sorted(RESULTS.glob("*.json")))
    pngs: dict[str, list[Path]] = {}
    if not args.no_png:
        for res in (r for r in results if "rows" in r):
            folder = args.png_dir or Path(res["_path"]).parent
            pngs[res["_path"]] = write_pngs(res, folder)
    if args.section:
        print(readme_section(results), end="")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page(results, pngs, args.out))
    print(f"wrote {args.out} from {len(results)} result file(s)")
    for t in targets([r for r in results if "rows" in r]):
        state = {True: "met", False: "MISSED", None: "not measured"}[t["ok"]]
        print(f"  {state:>12}  {t['target']}: {t['measured']} (goal {t['goal']}) {t['margin']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
