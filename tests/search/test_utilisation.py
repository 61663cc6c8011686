"""sqa_nas.search.utilisation: the NVML sampler against a fake NVML module (which GPUs it
finds through CUDA_VISIBLE_DEVICES, its means, its capped trace, and n/a with the reason
wherever NVML cannot answer), and on a real GPU while a matmul loop runs."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from sqa_nas.search.utilisation import GpuSampler, nvml_index, visible_entries

GIB = 2**30


class FakeNvml:
    """NVML with devices named, UUID'd and loaded as told: `util[i]` is a list of percentages
    read in turn (the last repeats), `None` for a device that does not support the query."""

    class NVMLError(Exception):
        pass

    def __init__(self, names, util, mem_gib=None, *, init_error=None):
        self.names, self.util = names, util
        self.mem = mem_gib or [1.0] * len(names)
        self.uuids = [f"GPU-{i:08x}-aaaa-bbbb-cccc-{i:012x}" for i in range(len(names))]
        self.init_error = init_error
        self.reads = [0] * len(names)
        self.inits = self.shutdowns = 0

    def nvmlInit(self):
        if self.init_error:
            raise self.NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, h):
        return self.uuids[h]

    def nvmlDeviceGetName(self, h):
        return self.names[h].encode()  # older pynvml returns bytes

    def nvmlDeviceGetUtilizationRates(self, h):
        if self.util[h] is None:
            raise self.NVMLError("Not Supported")
        series = self.util[h]
        value = series[min(self.reads[h], len(series) - 1)]
        self.reads[h] += 1
        return SimpleNamespace(gpu=value, memory=0)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=int(self.mem[h] * GIB), total=int(141 * GIB))


class Clock:
    """A clock that moves only when told: sample times are exact."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def sampled(sampler: GpuSampler, clock: Clock, rounds: int, dt: float = 0.25) -> None:
    """Take `rounds` samples by hand, `dt` seconds apart (no thread, no sleeping)."""
    for _ in range(rounds):
        sampler._sample()
        clock.t += dt


def started(nvml, gpus=None, env=None, **kw) -> tuple[GpuSampler, Clock]:
    clock = Clock()
    sampler = GpuSampler(gpus, nvml=nvml, environ=env or {}, clock=clock, **kw)
    sampler.start()
    sampler._stop.set()  # the thread's first sample is its last: tests sample by hand
    assert sampler._thread is not None
    sampler._thread.join(timeout=10)
    sampler._buckets.clear()
    nvml.reads = [0] * len(nvml.names)
    return sampler, clock


def test_cuda_visible_devices_entries_map_to_nvml_indices():
    uuids = ["GPU-1111aaaa-0000", "GPU-2222bbbb-0000", "GPU-2222cccc-0000"]
    assert visible_entries(None) is None
    assert visible_entries("2, 0,,1") == ["2", "0"]  # CUDA stops at the first empty entry
    assert visible_entries("1,-1,0") == ["1"]
    assert visible_entries("") == []
    assert nvml_index("2", uuids) == 2 and nvml_index("3", uuids) is None
    assert nvml_index("GPU-2222b", uuids) == 1 and nvml_index("GPU-1111aaaa-0000", uuids) == 0
    assert nvml_index("GPU-2222", uuids) is None  # ambiguous prefix
    assert nvml_index("MIG-2222bbbb-0000", uuids) is None  # a MIG slice: no GPU of its own


def test_the_sampler_labels_gpus_in_cuda_order_through_uuids():
    nvml = FakeNvml(["A100", "H200", "H100"], [[10], [20], [30]])
    env = {"CUDA_VISIBLE_DEVICES": f"{nvml.uuids[2][:12]},1"}  # cuda:0 is NVML's 2
    sampler, clock = started(nvml, [0, 1], env)
    sampled(sampler, clock, 3)
    sampler.stop()
    u = sampler.summary()
    assert u.by_gpu == {"GPU 0 (H100)": 0.3, "GPU 1 (H200)": 0.2}
    assert u.mean == pytest.approx(0.25) and u.samples == 3
    assert u.note == "mixed GPU models: set CUDA_DEVICE_ORDER=PCI_BUS_ID for sure labels"
    assert nvml.shutdowns == 1
    env = {"CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    sampler, clock = started(nvml, [0], env)
    sampled(sampler, clock, 1)
    sampler.stop()
    assert list(sampler.summary().by_gpu) == ["GPU 0 (H100)"] and sampler.note is None


def test_means_are_over_every_sample_and_the_trace_follows_the_load():
    nvml = FakeNvml(["H200", "H200"], [[0, 0, 100, 100], [50]], mem_gib=[2.5, 7.0])
    sampler, clock = started(nvml)  # None: every GPU this process sees
    sampled(sampler, clock, 4)
    sampler.stop()
    u = sampler.summary()
    assert u.by_gpu == {"GPU 0 (H200)": 0.5, "GPU 1 (H200)": 0.5}
    assert u.memory_peak_gib == {"GPU 0 (H200)": 2.5, "GPU 1 (H200)": 7.0}
    assert u.trace["t_s"] == [0.0, 0.25, 0.5, 0.75]
    assert u.trace["by_gpu"]["GPU 0 (H200)"] == [0.0, 0.0, 1.0, 1.0]
    assert u.trace["by_gpu"]["GPU 1 (H200)"] == [0.5] * 4


def test_the_trace_is_capped_by_merging_neighbours_and_keeps_the_exact_mean():
    series = [(i * 7) % 101 for i in range(1000)]  # a varying load, 0-100%
    nvml = FakeNvml(["H200"], [series])
    sampler, clock = started(nvml, max_points=64)
    sampled(sampler, clock, 1000, dt=0.2)
    sampler.stop()
    assert len(sampler._buckets) < 64  # never more than the cap in memory
    # Halved at rounds 64, 128, 256 and 512: 32 buckets of 16, then 30 more and a partial.
    assert [b.rounds for b in sampler._buckets] == [16] * 62 + [8]
    u = sampler.summary(trace_points=10)
    assert u.samples == 1000
    assert u.by_gpu["GPU 0 (H200)"] == pytest.approx(sum(series) / 100 / 1000, abs=1e-4)
    assert 5 <= len(u.trace["t_s"]) <= 10
    assert u.trace["t_s"] == sorted(u.trace["t_s"]) and u.trace["t_s"][-1] < 200
    points = u.trace["by_gpu"]["GPU 0 (H200)"]
    assert points[0] == pytest.approx(sum(series[:128]) / 100 / 128, abs=1e-3)  # 8 x 16


def test_a_gpu_nvml_cannot_read_is_na_while_the_others_count():
    nvml = FakeNvml(["H200", "H200"], [[80], None])
    sampler, clock = started(nvml)
    sampled(sampler, clock, 2)
    sampler.stop()
    u = sampler.summary()
    assert u.by_gpu == {"GPU 0 (H200)": 0.8, "GPU 1 (H200)": None}
    assert u.mean == 0.8
    assert u.trace["by_gpu"]["GPU 1 (H200)"] == [None, None]


@pytest.mark.parametrize(
    "kw,reason",
    [
        (dict(gpus=[]), "the trials run on the CPU"),
        (dict(nvml=FakeNvml(["H200"], [[1]], init_error="Driver Not Loaded")), "Driver Not"),
        (dict(nvml=FakeNvml(["H200"], [None])), "NVML gave no utilisation for GPU 0"),
        (
            dict(nvml=FakeNvml(["H200"], [[1]]), environ={"CUDA_VISIBLE_DEVICES": "MIG-1"}),
            "NVML has no device for cuda:0",
        ),
    ],
)
def test_where_nvml_cannot_answer_the_summary_says_why_and_never_raises(kw, reason):
    clock = Clock()
    kw = {"environ": {}, **kw}
    sampler = GpuSampler(kw.pop("gpus", None), clock=clock, **kw)
    with sampler:
        clock.t += 1.0
        if sampler._thread is not None:
            sampler._stop.wait(0)  # let the thread take its samples as it will
    u = sampler.summary()
    assert u.mean is None and reason in (u.note or "")
    assert u.duration_s == pytest.approx(1.0)


def test_without_the_package_the_summary_says_so(monkeypatch):
    def missing():
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr("sqa_nas.search.utilisation.load_nvml", missing)
    with GpuSampler([0]) as sampler:
        pass
    u = sampler.summary()
    assert u.mean is None and "nvidia-ml-py (pynvml) is not installed" in (u.note or "")


def test_a_sampler_started_again_forgets_its_last_run():
    nvml = FakeNvml(["H200"], [[100]])
    sampler = GpuSampler(nvml=nvml, environ={}, clock=Clock(), period_s=60)
    with sampler:  # its thread samples once on starting, then waits a minute: stopped first
        pass
    assert sampler.summary().mean == 1.0
    nvml.util, nvml.reads = [[0]], [0]
    with sampler:
        pass
    u = sampler.summary()
    assert u.mean == 0.0 and u.samples == 1 and nvml.inits == nvml.shutdowns == 2


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="period_s"):
        GpuSampler(period_s=0)
    with pytest.raises(ValueError, match="max_points"):
        GpuSampler(max_points=1)


@pytest.mark.gpu
def test_a_real_gpu_running_matmuls_reads_busy():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device("cuda", 0)
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    (a @ b).sum().item()  # the kernels loaded before sampling starts
    with GpuSampler([0], period_s=0.1) as sampler:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for _ in range(20):
                a @ b
            torch.cuda.synchronize()
    u = sampler.summary()
    assert u.note is None, u.note
    assert u.samples >= 20  # 3 s at 10 Hz
    assert u.mean is not None and u.mean > 0.5, u
    assert list(u.by_gpu) == [f"GPU 0 ({torch.cuda.get_device_name(0)})"]
    assert max(u.memory_peak_gib.values()) > 0.3  # two 128 MiB operands and the context
