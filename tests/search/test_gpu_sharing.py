"""Several trials per GPU: `execution.trials_per_gpu` is validated with `workers` and
`ray.gpus_per_trial`, mapped to local workers per GPU and to Ray's GPU fraction, the
executors tell each job whether its GPU is shared, and a trial on a shared GPU measures its
throughput (and the MHA reference) inside exclusive windows, trains and evaluates inside a
shared hold, steps aside between steps, and records the seconds both cost. No GPU needed:
the GPU count is patched, the share's locks live in a temporary folder."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from sqa_nas.errors import UserError
from sqa_nas.gpu_share import GpuShare
from sqa_nas.search import trial
from sqa_nas.search.executors import make_executor
from sqa_nas.search.executors.local import LocalExecutor
from sqa_nas.search.space import parse_space
from sqa_nas.search.trial import TrialJob, run_trial
from sqa_nas.throughput import Throughput
from tests.search.test_search import TINY


def _execution(**execution):
    return parse_space(TINY | {"execution": execution}).execution


@pytest.mark.parametrize(
    "execution,message",
    [
        (
            {"trials_per_gpu": 2, "workers": 3},
            "execution.trials_per_gpu: 2 starts 2 local workers per GPU, but workers is also "
            "set (3); set one of execution.workers and execution.trials_per_gpu",
        ),
        (
            {"trials_per_gpu": 4, "ray": {"gpus_per_trial": 0.5}},
            "execution.trials_per_gpu: 4 means ray.gpus_per_trial 1/4, but "
            "ray.gpus_per_trial is 0.5; set one of them",
        ),
        (
            {"trials_per_gpu": 2, "ray": {"gpus_per_trial": 0.0}},
            "ray.gpus_per_trial is 0; set one of them",
        ),
        ({"trials_per_gpu": 0}, "execution.trials_per_gpu: Input should be greater than 0"),
        ({"trials_per_gpu": 1.5}, "execution.trials_per_gpu: Input should be a valid integer"),
    ],
)
def test_trials_per_gpu_beside_a_setting_that_says_otherwise_is_refused(execution, message):
    with pytest.raises(UserError) as info:
        _execution(**execution)
    assert message in str(info.value)


def test_ray_asks_for_the_fraction_that_fits_trials_per_gpu_on_a_gpu():
    assert _execution().ray_gpus_per_trial == 1.0
    assert _execution(trials_per_gpu=4).ray_gpus_per_trial == 0.25
    # Ray counts in steps of 0.0001: 1/3 rounded down, so that three fit on a GPU.
    assert _execution(trials_per_gpu=3).ray_gpus_per_trial == 0.3333
    assert _execution(trials_per_gpu=3, ray={"gpus_per_trial": 0.3}).ray_gpus_per_trial == 0.3
    assert _execution(ray={"gpus_per_trial": 0.5}).ray_gpus_per_trial == 0.5
    assert _execution(workers=3).workers == 3  # trials_per_gpu 1 goes with anything


class _Worker:
    def __init__(self, index: int, device: str) -> None:
        self.index, self.device, self.job, self.sent = index, device, None, []
        self.conn = SimpleNamespace(send=self.sent.append)
        self.where = f"worker {index}"


def _sent(executor: LocalExecutor) -> dict[str, list[bool]]:
    """Submit one job per worker; what each device's workers were told about sharing."""
    executor.workers = [_Worker(i, d) for i, d in enumerate(executor.devices)]
    for number in range(len(executor.workers)):
        executor.submit(TrialJob(number, {}, {}))
    told: dict[str, list[bool]] = {}
    for w in executor.workers:
        told.setdefault(w.device, []).extend(job.share_gpu for job in w.sent)
    return told


def test_local_workers_per_gpu_and_whom_they_tell_their_gpu_is_shared(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    three = LocalExecutor(trials_per_gpu=3)
    assert three.devices == ["cuda:0", "cuda:1"] * 3
    assert three.describe() == (
        "local: 6 worker(s) on cuda:0, cuda:1 (up to 3 per GPU, each timed alone)"
    )
    assert _sent(three) == {"cuda:0": [True] * 3, "cuda:1": [True] * 3}
    odd = LocalExecutor(workers=3)  # more workers than GPUs: cuda:0 takes two
    assert _sent(odd) == {"cuda:0": [True, True], "cuda:1": [False]}
    one = LocalExecutor()
    assert one.devices == ["cuda:0", "cuda:1"] and one.describe().endswith("cuda:0, cuda:1")
    assert _sent(one) == {"cuda:0": [False], "cuda:1": [False]}
    spec = parse_space(TINY | {"execution": {"trials_per_gpu": 2}})
    executor = make_executor(spec)
    assert isinstance(executor, LocalExecutor) and len(executor.devices) == 4
    cpu = LocalExecutor(trials_per_gpu=4, device="cpu")  # no GPU to share: as before
    assert cpu.devices == ["cpu"] and _sent(cpu) == {"cpu": [False]}


@pytest.mark.parametrize(
    "execution,gpus,shared",
    [
        ({}, 1.0, False),
        ({"trials_per_gpu": 4}, 0.25, True),
        ({"ray": {"gpus_per_trial": 0.5}}, 0.5, True),
        ({"ray": {"gpus_per_trial": 0.6}}, 0.6, False),  # one fits on a GPU
        ({"trials_per_gpu": 4, "device": "cpu"}, 0.0, False),
    ],
)
def test_ray_workers_ask_for_their_fraction_and_tell_jobs_when_it_is_shared(
    execution, gpus, shared
):
    pytest.importorskip("ray")
    from sqa_nas.search.executors.ray import RayExecutor

    executor = RayExecutor(parse_space(TINY | {"execution": {"executor": "ray", **execution}}))
    assert (executor.gpus, executor.cluster.gpus) == (gpus, gpus)
    placed = []
    executor._place = placed.append  # no cluster: catch the attempt it would place
    executor.submit(TrialJob(5, {}, {}))
    assert [(a.job.number, a.job.share_gpu) for a in placed] == [(5, shared)]


class _RecordingShare(GpuShare):
    """A real share on a temporary folder that logs what the trial asks of it."""

    def __init__(self, directory, log: list[str]) -> None:
        super().__init__(directory)
        self.log = log

    @contextlib.contextmanager
    def training(self):
        with super().training() as held:
            self.log.append("shared")
            yield held
            self.log.append("/shared")

    @contextlib.contextmanager
    def exclusive(self):
        with super().exclusive():
            self.log.append("alone")
            yield
            self.log.append("/alone")

    def yield_if_wanted(self) -> None:
        self.log.append("step")
        super().yield_if_wanted()


@pytest.mark.parametrize("share_gpu", [True, False])
def test_a_trial_on_a_shared_gpu_times_alone_and_records_the_cost(
    monkeypatch, tmp_path, share_gpu
):
    log: list[str] = []
    asked = []

    def for_device(device, *, enabled):
        asked.append(enabled)
        return _RecordingShare(tmp_path if enabled else None, log)

    def measure(step, cfg, device, reference=None, watch=()):
        log.append("measure paired" if reference is not None else "measure")
        return Throughput(1000.0, 0.01, 3, 0.1, 0.03, 500.0, 2.0, (1.99, 2.01))

    evaluate = trial.evaluate
    monkeypatch.setattr(trial.GpuShare, "for_device", for_device)
    monkeypatch.setattr(trial, "measure", measure)
    monkeypatch.setattr(trial, "evaluate", lambda *a: log.append("evaluate") or evaluate(*a))
    spec = parse_space(TINY)
    job = TrialJob(0, dict(spec.seed_params())["SQA"], spec.model_dump(mode="json"))
    job.share_gpu = share_gpu
    out = run_trial(job)
    assert out.state == "COMPLETE", out.attrs.get("fail_reason")
    assert asked == [share_gpu]
    # Preparing (and compiling) the step inside the shared hold, the trial's window (timed
    # paired with the MHA reference), then 4 steps and the eval, inside the shared hold.
    assert log == [
        *["shared", "/shared"],
        *["alone", "measure paired", "/alone"],
        *["shared", *["step"] * 4, "evaluate", "/shared"],
    ]
    timings = out.attrs["timings"]
    if share_gpu:
        assert isinstance(timings["window_wait_s"], float)
        assert isinstance(timings["stepped_aside_s"], float)
    else:
        assert "window_wait_s" not in timings and "stepped_aside_s" not in timings  # unset
