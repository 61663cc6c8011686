"""sqa_nas.search.figures: the training-step share (the union of the trials' training windows
per device, clipped to the run), a run's meter, and the reader of ``executor_stats`` entries
(old ``busy_fraction`` keys included) with the summary lines it prints."""

from __future__ import annotations

import pytest

from sqa_nas.search.figures import (
    SHOWN,
    RunMeter,
    RunStats,
    device_key,
    run_stats,
    train_step_shares,
)
from sqa_nas.search.utilisation import GpuSampler
from tests.search.test_utilisation import Clock, FakeNvml, sampled, started

H200 = {"name": "NVIDIA H200", "type": "cuda", "host": "h", "node": "h", "gpu": 0}


def test_training_windows_count_once_where_they_overlap_and_only_inside_the_run():
    shares = train_step_shares(
        {
            "gpu0": [(10.0, 30.0), (20.0, 40.0), (90.0, 130.0)],  # overlap; past the end
            "gpu1": [(0.0, 5.0), (50.0, 60.0)],  # before the start
            "gpu2": [(200.0, 210.0)],  # wholly after the run
        },
        start=10.0,
        end=110.0,
    )
    assert shares == {"gpu0": pytest.approx(0.5), "gpu1": pytest.approx(0.1), "gpu2": 0.0}
    assert train_step_shares({"gpu0": [(0.0, 1.0)]}, start=5.0, end=5.0) == {"gpu0": 0.0}


def test_device_keys_name_the_node_gpu_and_model():
    assert device_key({"device": H200}) == "h GPU 0 (NVIDIA H200)"
    ray = {"name": "NVIDIA H200", "node": "h/abcd1234", "gpu": "3"}
    assert device_key({"device": ray}) == "h/abcd1234 GPU 3 (NVIDIA H200)"
    assert device_key({"device": {"name": "Xeon", "host": "c", "type": "cpu"}}) == "c cpu (Xeon)"
    assert device_key({}) is None and device_key({"device": {"gpu": []}}) is None


def test_a_run_meter_reports_nvml_and_the_training_share_of_its_trials():
    nvml = FakeNvml(["NVIDIA H200"], [[90, 70]])
    sampler, clock = started(nvml, [0])
    wall = Clock()
    meter = RunMeter(sampler, clock=wall)
    meter.started = 1000.0  # the sampler already runs (`started`): only the wall time is set
    sampled(sampler, clock, 2)
    meter.add({"device": H200, "timings": {"train_window": [1010.0, 1050.0]}})
    meter.add({"device": H200, "timings": {"train_window": [1040.0, 1060.0]}})
    meter.add({"device": H200, "timings": {"train_s": 3.0}})  # trained before windows: skipped
    meter.add({"device": H200, "timings": {"train_window": "soon"}})  # malformed: skipped
    meter.add({"fail_reason": "interrupted"})
    wall.t = 1100.0
    meter.stop()
    stats = meter.stats()
    assert stats["wall_s"] == 100.0
    assert stats["nvml_util_mean"] == 0.8 and stats["nvml_note"] is None
    assert stats["nvml_util_by_gpu"] == {"GPU 0 (NVIDIA H200)": 0.8}
    assert stats["nvml_trace"]["by_gpu"]["GPU 0 (NVIDIA H200)"] == [0.9, 0.7]
    assert stats["train_step_share_by_gpu"] == {"h GPU 0 (NVIDIA H200)": 0.5}
    assert stats["train_step_share"] == 0.5
    assert nvml.shutdowns == 1


def test_a_cpu_run_reports_nvml_as_na_and_a_ray_run_says_what_it_samples():
    wall = Clock()
    meter = RunMeter(GpuSampler([]), clock=wall)
    meter.start()
    wall.t += 10
    meter.stop()
    stats = meter.stats()
    assert stats["nvml_util_mean"] is None and "CPU" in stats["nvml_note"]
    assert stats["train_step_share"] is None and stats["train_step_share_by_gpu"] == {}
    lines = RunStats.read(stats).lines()
    assert lines == [
        "GPU utilisation (NVML): n/a (no GPU to sample: the trials run on the CPU)",
        "training-step share: n/a (no trial of this run trained)",
    ]

    sampler, clock = started(FakeNvml(["H200", "H200"], [[50], [100]]), None)
    ray = RunMeter(sampler, clock=wall)
    ray.started = wall.t
    sampled(sampler, clock, 1)
    stats = ray.stats()
    assert stats["nvml_util_mean"] == 0.75
    assert "this host's GPUs only" in stats["nvml_note"]


def test_old_entries_read_busy_fraction_as_the_in_trial_fraction():
    old = {
        "driver": "d1",
        "host": "h",
        "executor": "ray (local)",
        "busy_fraction": 0.998,
        "busy_fraction_to_end": 0.9,
        "busy_fraction_by_gpu": {"h GPU 0": 0.99},
        "busy_fraction_to_end_by_gpu": {"h GPU 0": 0.9},
        "retries": 0,
    }
    (run,) = run_stats([old])
    assert run.in_trial_fraction == 0.998 and run.in_trial_fraction_to_end == 0.9
    assert run.in_trial_fraction_by_gpu == {"h GPU 0": 0.99}
    assert run.in_trial_fraction_to_end_by_gpu == {"h GPU 0": 0.9}
    assert run.model_extra == {"retries": 0}  # the executor's other figures are kept
    assert run.nvml_util_mean is None and run.train_step_share is None
    assert all("n/a (not recorded by the sqa-nas" in line for line in run.lines())
    local = RunStats.read({"busy_fraction_by_worker": {"cpu worker 0": 0.5}})
    assert local.in_trial_fraction_by_worker == {"cpu worker 0": 0.5}


def test_odd_entries_read_as_no_figures_rather_than_stopping_a_reader():
    assert run_stats(None) == [] and run_stats({"busy_fraction": 1}) == []
    runs = run_stats([{"nvml_util_mean": "high"}, "junk", {"train_step_share": 0.25}])
    assert [r.nvml_util_mean for r in runs] == [None, None]
    assert runs[1].train_step_share == 0.25


def test_the_summary_lines_show_each_gpu_and_the_scope():
    run = RunStats.read(
        {
            "wall_s": 272.0,
            "nvml_util_mean": 0.87,
            "nvml_util_by_gpu": {"GPU 0 (H200)": 0.91, "GPU 1 (H200)": 0.83},
            "nvml_memory_peak_gib_by_gpu": {"GPU 0 (H200)": 12.5, "GPU 1 (H200)": 3.0},
            "nvml_note": "this host's GPUs only (h); other hosts not sampled",
            "train_step_share": 0.9,
            "train_step_share_by_gpu": {"h GPU 0 (H200)": 0.9},
        }
    )
    assert run.lines() == [
        "GPU utilisation (NVML): 87.0% over 272 s (GPU 0 (H200) 91.0%, GPU 1 (H200) 83.0%); "
        "peak memory 12.5 GiB; this host's GPUs only (h); other hosts not sampled",
        "training-step share: 90.0% of the wall time (h GPU 0 (H200) 90.0%)",
    ]
    assert "nvml_trace" in SHOWN and "in_trial_fraction" not in SHOWN
