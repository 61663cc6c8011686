"""How sure each point of the dashboard is: the +-2 sigma error bar of a trial on one
metric, the note on a noisy timing, and the study's noise floor as read.

A bar's half-extent on each side is `K_SIGMA` standard deviations, the same distance the
study's `Verdict` uses to call a trial indistinguishable from the front, so a trial whose
bars reach the front's staircase is one the noise cannot tell apart from it. Where a trial
measured its own spread that is used, else the study's noise floor (`noise.Noise`):

- ``val_loss``: the trial's `Metrics.val_loss_std` when it trained with several seeds, else
  the noise trial's `Noise.val_loss_std`: the spread of one run, not the standard error of
  a mean (the verdict compares with it as well).
- ``throughput_tokens_per_s``: the trial's 95% interval (`Metrics.throughput_rel_ci95`, a
  relative half-width, i.e. about 2 sigma), else 2 x `Noise.throughput_rel_std`.
- ``speedup_vs_mha``: the trial's paired 95% interval (`Metrics.speedup_ci95`, asymmetric),
  else 2 x `Noise.speedup_rel_std`; none when the value shown is the analytic speedup.
- Analytic metrics (parameters, KV cache, FLOPs) have no bar.
"""

from __future__ import annotations

from sqa_nas.search.noise import K_SIGMA, Noise
from sqa_nas.search.records import TrialRecord, finite

Bar = tuple[float, float]  # (extent below the value, extent above it), in the metric's units


def error_bar(r: TrialRecord, metric: str, value: float, noise: Noise) -> Bar | None:
    """The +-`K_SIGMA` sigma bar of trial `r` at `value` on `metric` (see the module's
    docstring for where sigma comes from); None when no spread is known or it is zero."""
    m = r.metrics
    if metric == "val_loss":
        own = m.val_loss_std if len(m.val_loss_seeds or r.typed.seeds) >= 2 else None
        sigma = own if own is not None else noise.val_loss_std
        return _symmetric(None if sigma is None else K_SIGMA * sigma)
    if metric == "throughput_tokens_per_s":
        if finite(m.throughput_rel_ci95):
            return _symmetric(m.throughput_rel_ci95 * abs(value))
        sigma = noise.sigma(metric, value)
        return _symmetric(None if sigma is None else K_SIGMA * sigma)
    if metric == "speedup_vs_mha":
        if m.speedup_ci95 is not None and all(map(finite, m.speedup_ci95)):
            lo, hi = m.speedup_ci95
            return _nonzero((max(0.0, value - lo), max(0.0, hi - value)))
        if m.speedup_vs_mha is None and "speedup_vs_mha" not in (r.values or {}):
            return None  # the dashboard shows the analytic speedup: a formula has no spread
        sigma = noise.sigma(metric, value)
        return _symmetric(None if sigma is None else K_SIGMA * sigma)
    return None


def _symmetric(half: float | None) -> Bar | None:
    return None if half is None or not finite(half) else _nonzero((abs(half), abs(half)))


def _nonzero(bar: Bar) -> Bar | None:
    return bar if bar[0] > 0 or bar[1] > 0 else None


TIMED = ("throughput_tokens_per_s", "speedup_vs_mha")  # the paired timing's figures


def noisy_note(r: TrialRecord, metric: str) -> str:
    """' ±7%' (the relative half-width of its 95% interval) when `r` is flagged
    ``noisy_throughput`` and `metric` is one of its timed figures (`TIMED`), else ''."""
    m = r.metrics
    if not m.noisy_throughput or metric not in TIMED:
        return ""
    half = m.throughput_rel_ci95 if metric == "throughput_tokens_per_s" else None
    if metric == "speedup_vs_mha" and m.speedup_ci95 and finite(m.speedup_vs_mha):
        half = m.speedup_ci95[1] / m.speedup_vs_mha - 1
    return f" ±{half:.0%}" if finite(half) else " ±?"
