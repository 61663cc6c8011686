"""The docs/results.md section of inference with the exported model (issue 18): decode
tokens/s and KV-cache bytes per variant (`experiments.decode`), and what they show. Every
figure and every sentence's numbers come from the result file; `results_report` puts the
section on the page and its digest in the README.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from experiments.report_science import machine_text
from sqa_nas.stats import t_quantile_975


def binary_bytes(n: float) -> str:
    """`n` bytes in binary units: 64 KiB, 264.0 MiB, 8.25 GiB."""
    if n < 2**20:
        return f"{n / 2**10:g} KiB"
    if n < 2**30:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**30:.2f} GiB"


def held(d: dict, row: dict) -> int:
    """Tokens each layer of `row` holds after the prompt and the decoded tokens: all of
    them, or a window's window + 1 and its global tokens (experiments.decode.held_tokens)."""
    seen, layers = d["prompt"] + d["new"], row["layers"]
    if layers.get("window") is None:
        return seen
    return min(seen, layers["window"] + 1 + layers.get("global_tokens", 0))


def per_token(d: dict, row: dict) -> float:
    """KV-cache bytes per held token of one sequence, all layers."""
    first = d["batch"][0]
    return row[f"batch_{first}"]["kv_cache_bytes"] / (first * held(d, row))


def _heads(row: dict) -> str:
    return f"{row['layers']['n_q_heads']}/{row['layers']['n_kv_heads']}"


def _span(values: list[float], fmt: str) -> str:
    low, high = min(values), max(values)
    return format(low, fmt) if low == high else f"{format(low, fmt)}-{format(high, fmt)}"


def cache_trend(rows: list[dict], batch: int) -> dict | None:
    """How a decoding step's time at `batch` follows the KV cache across `rows`: n, Pearson's
    r, whether it differs from 0 (two-sided t-test, 5%), the least-squares line (ms = fixed
    + per_gib x GiB), and, when resolved, the row without which it would not be (`rests_on`,
    with r then; None when no single row carries it); None below 3 rows or 2 cache sizes."""
    x = [r[f"batch_{batch}"]["kv_cache_bytes"] / 2**30 for r in rows]
    y = [r[f"batch_{batch}"]["ms_per_step"] for r in rows]
    if len(rows) < 3 or len(set(x)) == 1 or len(set(y)) == 1:
        return None

    def test(xs: list[float], ys: list[float]) -> tuple[float, bool]:
        if len(set(xs)) == 1 or len(set(ys)) == 1:
            return 0.0, False
        r = statistics.correlation(xs, ys)
        t = abs(r) * math.sqrt((len(xs) - 2) / max(1 - r * r, 1e-12))
        return r, t > t_quantile_975(len(xs) - 2)

    r, resolved = test(x, y)
    slope, fixed = statistics.linear_regression(x, y)
    rests_on = None
    if resolved and len(rows) > 3:
        without = [(test(x[:i] + x[i + 1 :], y[:i] + y[i + 1 :]), rows[i]) for i in range(len(x))]
        lost = [(abs(r_i), row["variant"], r_i) for (r_i, kept), row in without if not kept]
        rests_on = min(lost)[1:] if lost else None
    return {
        "n": len(rows),
        "r": r,
        "resolved": resolved,
        "fixed_ms": fixed,
        "per_gib_ms": slope,
        "gb_per_s": 2**30 / 1e9 / (slope / 1e3) if slope > 0 else None,
        "rests_on": rests_on,
    }


def _trend_text(b: int, band: str, trend: dict | None) -> str:
    """One sentence on how the step time at batch `b` follows the cache (`cache_trend`)."""
    if trend is None:
        return f"At batch {b}: {band}; too few rows or cache sizes to relate the two."
    stat = f"r = {trend['r']:.2f}, n = {trend['n']}"
    if not trend["resolved"]:
        return (
            f"At batch {b} ({band}) whether the step time follows the cache cannot be told "
            f"({stat}, not different from 0 at 5%)."
        )
    if trend["per_gib_ms"] < 0:
        return f"At batch {b} the step time falls as the cache grows ({band}; {stat})."
    text = (
        f"At batch {b} the step time rises with the cache ({band}; {stat}): a least-squares "
        f"line gives {trend['fixed_ms']:.1f} ms plus {trend['per_gib_ms']:.3f} ms per GiB, as "
        f"if the cache were read at {trend['gb_per_s'] / 1e3:.1f} TB/s on top of a fixed cost"
    )
    if trend["rests_on"]:
        variant, r_without = trend["rests_on"]
        text += (
            f"; the line rests on {variant}: without it r = {r_without:.2f}, not different from 0"
        )
    return text + "."


def _runs_spread(d: dict, rows: list[dict]) -> str:
    """The spread of the timed runs behind each median, or that the file has none."""
    runs = [r[f"batch_{b}"].get("ms_per_step_runs") for r in rows for b in d["batch"]]
    if any(not x or len(x) < 2 for x in runs):
        kept = "one run each" if d["repeats"] == 1 else f"only the median of {d['repeats']} runs"
        return (
            f"the file keeps {kept}, not their spread, so no difference between two rows "
            "is resolved"
        )
    worst = max((max(x) - min(x)) / statistics.median(x) for x in runs)
    return f"the runs behind each median differ by up to {worst:.0%} of it"


def findings(d: dict, brief: bool = False) -> list[str]:
    """What the numbers show, as sentences: how the step time follows the KV cache at each
    batch (and, unless `brief`, how much the runs behind the medians spread), the KV cache
    against H_kv, the windowed variant; each figure computed from the file."""
    rows, batches = d["variants"], d["batch"]
    full = [r for r in rows if r["layers"].get("window") is None]
    windowed = [r for r in rows if r["layers"].get("window") is not None]
    large = batches[-1]
    out = []
    if len(full) > 1:
        kv = [per_token(d, r) for r in full]
        out.append(
            f"The {len(full)} variants that keep every token "
            f"({', '.join(r['variant'] for r in full)}) "
            f"hold KV caches that differ {max(kv) / min(kv):g}-fold ({binary_bytes(min(kv))} to "
            f"{binary_bytes(max(kv))} per token)."
        )
        for b in batches:
            ms = [r[f"batch_{b}"]["ms_per_step"] for r in full]
            caches = [r[f"batch_{b}"]["kv_cache_bytes"] for r in full]
            band = (
                f"{_span(ms, '.1f')} ms a step for {binary_bytes(min(caches))} to "
                f"{binary_bytes(max(caches))} of cache"
            )
            out.append(_trend_text(b, band, cache_trend(full, b)))
        if not brief:
            out.append(f"Between rows, {_runs_spread(d, full)}.")
    groups: dict[int, list[dict]] = {}
    for r in full:
        groups.setdefault(r["layers"]["n_kv_heads"], []).append(r)
    same = [
        f"H_kv {h}: {', '.join(r['variant'] + ' (' + _heads(r) + ')' for r in g)} hold "
        f"{binary_bytes(per_token(d, g[0]))} per token"
        for h, g in sorted(groups.items(), reverse=True)
        if len(g) > 1 and len({per_token(d, r) for r in g}) == 1
    ]
    if same:
        out.append(
            "The KV cache is set by H_kv alone, whatever H_q: "
            + "; ".join(same)
            + ". Fewer query heads speed SQA's prefill and training (Table 3; Table 1's "
            "train tokens/s) and leave its KV cache, which decoding reads, at its H_kv's size."
        )
    for w in windowed:
        twin = next((r for r in full if _heads(r) == _heads(w)), None)
        text = (
            f"{w['variant']} ({_heads(w)}, window {w['layers']['window']}) holds "
            f"{held(d, w):,} tokens per layer instead of {d['prompt'] + d['new']:,} "
            f"({binary_bytes(w[f'batch_{large}']['kv_cache_bytes'])} at batch {large}) and "
            "steps in "
            + " / ".join(f"{w[f'batch_{b}']['ms_per_step']:.1f}" for b in batches)
            + f" ms at batch {' / '.join(map(str, batches))}"
        )
        if twin:
            faster = [
                twin[f"batch_{b}"]["ms_per_step"] / w[f"batch_{b}"]["ms_per_step"] for b in batches
            ]
            text += (
                f"; {twin['variant']}, which has the same heads and no window, takes "
                f"{_span(faster, '.2f')} times as long a step"
            )
        out.append(text + ".")
    return out


def decode(d: dict, png: Path | None = None) -> str:
    """Decode tokens/s and KV-cache bytes per variant of the exported model."""
    m, batches = d["model"], d["batch"]
    seen = d["prompt"] + d["new"]
    prefill = [r[f"batch_{batches[0]}"]["prefill_ms"] for r in d["variants"]]
    unequal = [
        f"{r['variant']} batch {b}"
        for r in d["variants"]
        for b in batches
        if r[f"batch_{b}"]["kv_cache_bytes"] != r[f"batch_{b}"]["kv_cache_bytes_analytics"]
    ]
    counted = (
        "equals `sqa_nas.analytics`' count in every row"
        if not unequal
        else f"differs from `sqa_nas.analytics`' count in {', '.join(unequal)}"
    )
    lines = [
        f"### Decoding with the exported model: tokens/s and KV cache ({machine_text(d)})",
        "",
        f"Each variant's `model.py` (as `sqa_nas.export` writes it) at {d['model_name']} "
        f"(d_model {m['d_model']}, {m['n_layers']} layers, H {m['n_heads']}, FFN "
        f"{m['ffn_dim']}, vocabulary {m['vocab_size']:,}), {d['dtype']}, one variant on "
        "all layers: a "
        f"{d['prompt']:,}-token prompt, then {d['new']} tokens decoded one at a time (greedy) "
        f"against the KV cache; the median of {d['repeats']} runs. Before timing, cached "
        "decoding matched the full forward (float32; largest relative difference "
        f"{max(r['check_error'] for r in d['variants']):.1e}). The KV cache is measured from "
        f"its tensors after the {seen:,} tokens and {counted}. Command: `{d['command']}`."
        + (f" Git revision {d['git_revision']}." if d.get("git_revision") else ""),
        "",
        "| variant | H_q/H_kv | "
        + " | ".join(f"decode tokens/s, batch {b} (ms a step)" for b in batches)
        + f" | KV cache per token ({m['n_layers']} layers) | tokens held per layer | "
        + " | ".join(f"KV cache, batch {b}" for b in batches)
        + " |",
        "|---|---|" + "---|" * (2 * len(batches) + 2),
    ]
    for r in d["variants"]:
        cells = [r["variant"], _heads(r)]
        cells += [
            f"{r[f'batch_{b}']['decode_tokens_per_s']:,.0f} ({r[f'batch_{b}']['ms_per_step']:.1f})"
            for b in batches
        ]
        window = r["layers"].get("window")
        cells += [
            binary_bytes(per_token(d, r)),
            f"{held(d, r):,}" + (f" (window {window})" if window is not None else ""),
        ]
        cells += [binary_bytes(r[f"batch_{b}"]["kv_cache_bytes"]) for b in batches]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"- {f}" for f in findings(d)]
    lines += [
        "",
        f"Prefill times are in the file but not compared here: one prompt per run is not a "
        f"prefill benchmark (Table 3 is), and at batch {batches[0]} they range from "
        f"{min(prefill):.0f} to {max(prefill):.0f} ms in no relation to the heads.",
    ]
    if png is not None:
        lines += ["", f"![decode tokens/s and KV cache](../experiments/results/{png.name})"]
    return "\n".join(lines)


def digest(d: dict) -> str:
    """The README's line on decoding: the model, the setting and the findings."""
    return (
        f"**Decoding with the exported model** ({d['model_name']}, {d['dtype']}, "
        f"{d['prompt']:,}-token prompt, then {d['new']} tokens, {d['machine']['device']}): "
        + " ".join(f[0].lower() + f[1:] for f in findings(d, brief=True)[:1])
        + " "
        + " ".join(findings(d, brief=True)[1:])
    )
