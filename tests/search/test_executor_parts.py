"""Executors' bookkeeping without running trials: the in-trial fraction over overlapping and
idle intervals, the local executor's workers and threads, what its shutdown returns, and
the Ray cluster's arithmetic (workers per node, refusals, one-line errors), which needs Ray
importable but no Ray instance."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from sqa_nas.errors import UserError
from sqa_nas.search.executors.base import Usage, in_trial_fraction
from sqa_nas.search.executors.local import LocalExecutor
from sqa_nas.search.trial import TrialJob


def test_time_in_trials_is_the_union_of_intervals_over_their_span():
    u = Usage()
    for a, b in [(5.0, 6.0), (0.0, 2.0), (1.0, 3.0), (1.5, 2.5)]:  # overlaps: fractional GPUs
        u.add(a, b)
    assert u.covered() == pytest.approx(3.0 + 1.0)  # [0, 3] and [5, 6]
    assert u.span() == pytest.approx(6.0)
    idle = Usage([(10.0, 11.0)])
    assert in_trial_fraction([u, idle]) == round((4.0 + 1.0) / (6.0 + 1.0), 4)
    assert in_trial_fraction([Usage()]) == 1.0  # nothing ran: nothing was idle either


def test_local_workers_share_the_cpus_with_at_least_one_thread_each():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    many = LocalExecutor(workers=4 * cpus, device="cpu")
    assert many.devices == ["cpu"] * (4 * cpus) and many.threads == 1
    one = LocalExecutor(workers=1, device="cpu")
    assert one.devices == ["cpu"] and one.threads == cpus
    assert many.describe() == f"local: {4 * cpus} worker(s) on cpu"


class _Worker:
    def __init__(self, job):
        self.job, self.sent, self.killed = job, [], False
        self.conn = SimpleNamespace(send=self.sent.append)
        self.process = SimpleNamespace(join=lambda timeout=None: None)

    def kill(self):
        self.killed = True


@pytest.mark.parametrize("cancel", [False, True])
def test_shutdown_names_the_trials_it_cancelled_and_only_then(cancel):
    executor = LocalExecutor(workers=2, device="cpu")
    busy, idle = _Worker(TrialJob(7, {}, {})), _Worker(None)
    executor.workers = [busy, idle]
    assert executor.shutdown(cancel=cancel) == ([7] if cancel else [])
    assert busy.killed and idle.killed
    assert idle.sent == ([] if cancel else [None])  # told to finish when not cancelling


# ------------------------------------------------------------------------------ Ray
def test_workers_per_node_are_the_fewest_its_cpus_or_gpus_hold():
    pytest.importorskip("ray")
    from sqa_nas.search.executors.ray_cluster import RayCluster

    def cluster(gpus, cpus):
        return RayCluster(
            address=None, gpus=gpus, cpus=cpus, max_concurrent=None, include_dashboard=False
        )

    assert cluster(1, 2).fits({"GPU": 4, "CPU": 5}) == 2
    assert cluster(1, 2).fits({"GPU": 1, "CPU": 16}) == 1
    assert cluster(0.1, 1).fits({"GPU": 0.3, "CPU": 64}) == 3  # 0.3 / 0.1 in floats: 2.999...
    assert cluster(0, 3).fits({"GPU": 0, "CPU": 7}) == 2
    node = {"host": "a", "GPU": 2, "CPU": 8}
    with pytest.raises(UserError, match="execution.ray.cpus_per_trial: no node of this machine"):
        cluster(2, 64).check_fits([node])
    with pytest.raises(UserError, match="gpus_per_trial: 4 GPUs per trial, but the largest"):
        cluster(4, 1).check_fits([node])
    cluster(2, 8).check_fits([node])


def test_a_ray_error_becomes_its_cause_in_one_line():
    pytest.importorskip("ray")
    from sqa_nas.search.executors.ray_worker import error_reason

    exc = RuntimeError(
        "ray::TrialWorker.run()\nTraceback (most recent call last):\n"
        '  File "x.py", line 3, in run\nValueError: boom'
    )
    assert error_reason(exc) == "ValueError: boom"
    assert (
        error_reason(RuntimeError('boom\n  File "x.py", line 3, in run\nray::W.run()')) == "boom"
    )  # the last line that is not a traceback frame
    assert (
        error_reason(RuntimeError("lost\nThe actor died because its node  died.\nmore"))
        == "The actor died because its node died. more"
    )
    assert error_reason(RuntimeError("")) == "RuntimeError"
