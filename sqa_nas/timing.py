"""The one timer: seconds per call of a function on CPU or CUDA, as the benchmark, the search's
throughput measurement and the experiments all take it; a watchdog for calls that hang; and a
profile of one call for "where does the time go?".

On CUDA a call is bracketed by a pair of events; warm-up calls run one at a time
(synchronised) and repeats are queued back to back with one synchronisation at the end
(triton's ``do_bench`` does the same).
"""

from __future__ import annotations

import contextlib
import faulthandler
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def time_call(
    fn: Callable[[object], object],
    *,
    device: torch.device,
    warmup: int = 3,
    repeats: int = 10,
    setup: Callable[[], object] | None = None,
    budget_s: float | None = None,
    min_repeats: int = 2,
) -> list[float]:
    """Seconds per call of ``fn(setup())``, `repeats` samples after `warmup` calls. Only
    `fn` is timed: `perf_counter` on CPU; on CUDA, a pair of events around it.

    On CUDA the warm-up calls run one at a time (synchronised), and the repeats are queued
    back to back with one synchronisation at the end, as triton's ``do_bench`` does: the
    host's time to launch a call overlaps the kernels of the calls before it, as in a
    model's steady state, and shows in the samples only where it is longer than they are.
    (Synchronising before each repeat adds it to every sample: FlexAttention's FLASH
    backend, for one, defines its CuTe mask function in Python on every call.) At least two
    calls run synchronised, warm-up or not.

    With `budget_s`, long calls shorten the run: while the fastest call so far says the plan
    would not fit in `budget_s`, one warm-up call is kept and the repeats are cut to what
    fits, never below `min_repeats` (a 6 s call is timed twice, not ten times). Judging by
    the fastest call, re-judged after every synchronised call, keeps a first call that paid
    a compile from cutting the warm-up or the repeats of a fast kernel.
    """
    cuda = device.type == "cuda"
    seen: list[float] = []  # every call; the first `warm` are the warm-up
    warm, reps = warmup, repeats

    def queued(k: int) -> list[float]:  # k calls back to back, one synchronisation after
        return time_queued(fn, device=device, repeats=k, setup=setup, synchronise_first=False)

    def one() -> float:  # one call, alone on the device
        if cuda:
            torch.cuda.synchronize(device)
            return queued(1)[0]
        arg = setup() if setup else None
        t0 = time.perf_counter()
        fn(arg)
        return time.perf_counter() - t0

    def judge() -> None:
        nonlocal warm, reps
        if budget_s is None:
            return
        per = min(seen)
        over = per * (warmup + repeats) > budget_s
        warm = min(warmup, 1) if over else warmup
        reps = (
            max(min(repeats, int(budget_s // per)), min(min_repeats, repeats)) if over else repeats
        )

    def synchronised() -> bool:
        # On CPU every call; on CUDA the warm-up and at least two calls (when the first one
        # paid a compile, the second one judges the plan).
        wanted = warm + reps if not cuda else max(warm, min(2, warm + reps))
        return len(seen) < wanted

    while synchronised():
        seen.append(one())
        judge()
    left = warm + reps - len(seen)  # on CUDA: the repeats
    if left > 0:
        seen += queued(left)
    return seen[warm : warm + reps]


def time_queued(
    fn: Callable[[object], object],
    *,
    device: torch.device,
    repeats: int,
    setup: Callable[[], object] | None = None,
    synchronise_first: bool = True,
) -> list[float]:
    """Seconds per call of ``fn(setup())``, `repeats` calls queued back to back: on CUDA a
    pair of events around each call and one synchronisation after them all (and one before,
    with `synchronise_first`), so every call but the first overlaps its launch with the
    calls before it, as in training; on the CPU, `perf_counter` around each call. For an
    already warm `fn` (`time_call` adds the warm-up and the budget)."""
    if device.type != "cuda":
        out = []
        for _ in range(repeats):
            arg = setup() if setup else None
            t0 = time.perf_counter()
            fn(arg)
            out.append(time.perf_counter() - t0)
        return out
    if synchronise_first:
        torch.cuda.synchronize(device)
    events = []
    for _ in range(repeats):
        arg = setup() if setup else None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(arg)
        end.record()
        events.append((start, end))
        del arg
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / 1e3 for start, end in events]


@contextlib.contextmanager
def row_watchdog(seconds: float | None) -> Iterator[None]:
    """Past `seconds`, print every thread's stack to stderr and exit with status 1.
    faulthandler's timer runs in C, so it fires even when a hung call holds the GIL."""
    stream = next((f for f in (sys.stderr, sys.__stderr__) if _has_fileno(f)), None)
    if not seconds or stream is None:
        yield
        return
    faulthandler.dump_traceback_later(seconds, exit=True, file=stream)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _has_fileno(f: Any) -> bool:
    try:
        return f is not None and f.fileno() >= 0
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False


_ATTENTION_KERNEL = re.compile(r"flash|fmha|attention|attn|cudnn|sdpa|flex|tem_fused", re.I)


def profile_call(fn: Callable[[object], object], device: torch.device, top: int = 8) -> dict:
    """One call of ``fn(None)`` under torch.profiler: total device (CPU: self CPU) time, the
    `top` kernels by self time, and the share of kernels whose names look like attention
    (flash / fmha / cuDNN / flex / sdpa). Answers "where does the step go?" for a miss."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn(None)
        if cuda:
            torch.cuda.synchronize(device)
    events = list(prof.key_averages())
    if cuda:  # the kernels themselves, not the CPU ops that launched them (no double count)
        kernels = [e for e in events if "CUDA" in str(getattr(e, "device_type", "")).upper()]
        events = kernels or events
    times = [(e.key, _self_time(e, cuda) / 1e3) for e in events]  # ms
    times = [(k, t) for k, t in times if t > 0]
    total = sum(t for _, t in times) or 1e-12
    ranked = sorted(times, key=lambda kt: -kt[1])[:top]
    attention = sum(t for k, t in times if _ATTENTION_KERNEL.search(k))
    return {
        "total_ms": total,
        "attention_share": attention / total,
        "top": [{"name": k[:120], "ms": t, "share": t / total} for k, t in ranked],
    }


def _self_time(event: Any, cuda: bool) -> float:
    if not cuda:
        return event.self_cpu_time_total
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, attr):
            return getattr(event, attr)
    return 0.0
