"""The multi-fidelity rung ladder as the dashboard shows it (``budget.early_stopping.scheduler:
mo_asha``, `sqa_nas.search.scheduler`): per rung, its tokens, the trials that reached it and
what the scheduler decided there; per trial, the highest rung it reached. Pure functions of
the trial records (`records.Rung`) and the study's stored search space; no rich, no Textual.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from sqa_nas.search.records import Rung, TrialRecord
from sqa_nas.search.sections import EarlyStopping

# The decisions at a rung that send a trial on to the next: a promotion, and a seed trial's
# evaluation on its way to the full budget (baselines are never stopped).
GOES_ON = ("promoted", "baseline")


@dataclass(frozen=True)
class RungRow:
    """One rung of the ladder.

    rung: its index (0: `min_tokens`; the last: the full budget); tokens: training tokens
    there; trials: numbers of the trials that reached it (were evaluated there), ascending;
    promoted: how many of them went on to the next rung (promoted, or a baseline training
    through); stopped: ended PRUNED here; paused: RUNNING, waiting here for a promotion;
    top: the full budget (the plan's last rung; without a plan, a rung where trials
    completed), whose trials are complete."""

    rung: int
    tokens: int
    trials: tuple[int, ...]
    promoted: int
    stopped: int
    paused: int
    top: bool = False

    @property
    def reached(self) -> int:
        """How many trials reached this rung."""
        return len(self.trials)

    def as_json(self) -> dict[str, Any]:
        """The rung as `--json` writes it (`rung`, `tokens`, `reached`, `promoted`,
        `stopped`, `paused`, `trials`)."""
        return {
            "rung": self.rung,
            "tokens": self.tokens,
            "reached": self.reached,
            "promoted": self.promoted,
            "stopped": self.stopped,
            "paused": self.paused,
            "trials": list(self.trials),
        }


def planned(space: Any) -> tuple[EarlyStopping, list[int]] | None:
    """The study's scheduler and its token ladder (`EarlyStopping.rungs` of
    ``budget.train.tokens``, whole training steps apart), read from the stored search space
    (the ``space`` study attr); None when the study did not use ``mo_asha`` or its space
    cannot be read (an older or newer version wrote it)."""
    budget = space.get("budget") if isinstance(space, Mapping) else None
    if not isinstance(budget, Mapping):
        return None
    tokens = (budget.get("train") or {}).get("tokens")
    try:
        stopping = EarlyStopping.model_validate(budget.get("early_stopping") or {})
    except ValidationError:
        return None
    if stopping.scheduler != "mo_asha" or not isinstance(tokens, int) or tokens <= 0:
        return None
    batch = (budget.get("train") or {}).get("batch_size")
    seq_len = (space.get("model") or {}).get("seq_len")
    step = 1  # tokens a training step takes, when the stored space says
    if isinstance(batch, int) and isinstance(seq_len, int) and batch > 0 and seq_len > 0:
        step = batch * seq_len
    return stopping, stopping.rungs(tokens, step)


def trial_rungs(r: TrialRecord) -> list[Rung]:
    """The rungs trial `r` was evaluated at; none for a repeat of another trial's layout
    (``duplicate_of``: the original's rungs stand for it, as in the scheduler)."""
    return [] if r.typed.duplicate_of is not None else r.typed.rungs


def last_rung(r: TrialRecord) -> Rung | None:
    """The highest rung trial `r` reached (its index `.rung`, and the scheduler's latest
    `.decision` about it), None when it reached none."""
    return max(trial_rungs(r), key=lambda x: x.rung, default=None)


def state_label(r: TrialRecord) -> str:
    """Trial `r`'s state for the trials table: Optuna's, with the rung where the scheduler
    stopped it ("PRUNED r1") or where it waits for a promotion ("PAUSED r0": RUNNING in
    Optuna)."""
    last = last_rung(r)
    if last is not None:
        if r.state == "PRUNED" and last.decision == "stopped":
            return f"PRUNED r{last.rung}"
        if r.state == "RUNNING" and last.decision == "paused":
            return f"PAUSED r{last.rung}"
    return r.state


def ladder(records: Sequence[TrialRecord], tokens: Sequence[int] = ()) -> list[RungRow]:
    """The ladder, first rung first: one row per rung of `tokens` (the planned ladder,
    `planned`; its rungs no trial reached yet too) and per rung index any trial recorded
    beyond it. Without `tokens` a rung's tokens are the ones its trials recorded most often
    (the top rung's are the tokens a trial trained, a little off the plan). [] when no trial
    has rungs and none are planned: the study did not use the multi-fidelity scheduler.

    Args:
        records: the study's trials (any state; repeats of a layout are left out).
        tokens: training tokens per rung, rung 0 first (`planned`), or empty.
    Returns:
        one `RungRow` per rung index, ascending.
    """
    at: dict[int, list[tuple[TrialRecord, Rung]]] = {}
    for r in records:
        for x in trial_rungs(r):
            at.setdefault(x.rung, []).append((r, x))
    rows = []
    for k in range(max([len(tokens) - 1, *at], default=-1) + 1):
        entries = sorted(at.get(k, []), key=lambda e: e[0].number)
        recorded = Counter(x.tokens for _, x in entries).most_common(1)
        if k >= len(tokens) and not recorded:
            continue  # beyond the plan and reached by none: its tokens are unknown
        decisions = Counter[str](x.decision for _, x in entries)
        rows.append(
            RungRow(
                rung=k,
                tokens=tokens[k] if k < len(tokens) else recorded[0][0],
                trials=tuple(r.number for r, _ in entries),
                promoted=sum(decisions[d] for d in GOES_ON),
                stopped=decisions["stopped"],
                # paused and still RUNNING: a trial failed or reaped since waits no more
                paused=sum(
                    1 for r, x in entries if x.decision == "paused" and r.state == "RUNNING"
                ),
                top=k == len(tokens) - 1 if tokens else decisions["complete"] > 0,
            )
        )
    return rows
