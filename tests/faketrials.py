"""Trial functions that stand in for `run_trial` in executor tests: tests monkeypatch the
executor module's `run_trial` with one of these, and the executor hands it to its worker
processes (by reference), which import this module. Each takes a `TrialJob` and returns a
`TrialOutcome`, or never returns, or ends its own process."""

from __future__ import annotations

import os
import signal
import threading

from sqa_nas.search.trial import TrialJob, TrialOutcome


def scripted_trial(job: TrialJob, *, device=None, progress=None) -> TrialOutcome:
    """Does what ``job.params["fate"]`` says: "ok" reports one progress step and completes,
    "hang" never returns, "exit" ends the process with status 3, "sigkill" SIGKILLs it."""
    fate = job.params["fate"]
    if fate == "hang":
        threading.Event().wait()
    if fate == "exit":
        os._exit(3)
    if fate == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if progress is not None:
        progress({"step": 1, "of": 2, "loss": 0.5})
    return TrialOutcome(
        job.number,
        "COMPLETE",
        {"val_loss": 1.0 + job.number / 10, "throughput_tokens_per_s": 100.0 - job.number},
    )


def dies_on_trial_0(job: TrialJob, *, device=None, progress=None) -> TrialOutcome:
    """Trial 0's worker is SIGKILLed mid-trial (as by the OOM killer); others complete."""
    fate = "sigkill" if job.number == 0 else "ok"
    return scripted_trial(TrialJob(job.number, {"fate": fate}, {}), progress=progress)


def dies_every_time(job: TrialJob, *, device=None, progress=None) -> TrialOutcome:
    """Every attempt ends its worker process."""
    os._exit(1)
