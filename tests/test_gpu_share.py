"""The GPU share's lock protocol across real processes (spawned, lock files in a temporary
folder, no GPU): a measurer's window opens only once every trainer has waited for its queued
work and stepped aside, no trainer step falls inside it, trainers resume after, a trainer
arriving while a measurer waits does not slip in first, a measurer that trains too does not
block itself, and a disabled share touches nothing. Every wait is bounded, so a deadlock
fails the test; no test asserts a duration, only the order of events."""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import time
from types import SimpleNamespace

import pytest
import torch

from sqa_nas import gpu_share
from sqa_nas.gpu_share import GpuShare, gpu_key

BOUND_S = 60.0  # no wait in these tests is meant to come near it


def _log(log, seq, who: str, what: str) -> None:
    """One event with a global sequence number (the order across processes), appended to
    `who`'s file in the folder `log`. Files, not a queue: a process that put more than a
    pipe holds on a queue nobody reads yet cannot exit (multiprocessing's docs)."""
    with seq.get_lock():
        seq.value += 1
        with open(log / f"{who}.events", "a") as f:
            f.write(f"{seq.value} {what}\n")


def _report(log, who: str, share: GpuShare) -> None:
    (log / f"{who}.figures").write_text(f"{share.stepped_aside_s!r} {share.waited_s!r}")


def _trainer(directory, name, log, seq, steps, stop) -> None:
    """Trains until `stop`: a step (logged, counted in `steps`), then `yield_if_wanted`."""
    share = GpuShare(directory, synchronize=lambda: _log(log, seq, name, "sync"))
    with share.training():
        _log(log, seq, name, "enter")
        while not stop.is_set():
            _log(log, seq, name, "step")
            with steps.get_lock():
                steps.value += 1
            time.sleep(0.002)  # the step's device work
            share.yield_if_wanted()
    _report(log, name, share)


def _measurer(directory, name, log, seq) -> None:
    """Takes one exclusive window, holding it long enough for 2 ms steps to show up in it."""
    share = GpuShare(directory)
    with share.exclusive():
        _log(log, seq, name, "open")
        time.sleep(0.1)
        _log(log, seq, name, "close")
    _report(log, name, share)


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _events(log) -> tuple[list[tuple[int, str, str]], dict[str, tuple[float, ...]]]:
    """Every logged event in order, and each process's (stepped_aside_s, waited_s)."""
    events = []
    for path in log.glob("*.events"):
        for line in path.read_text().splitlines():
            n, what = line.split(" ", 1)
            events.append((int(n), path.stem, what))
    figures = {
        path.stem: tuple(float(x) for x in path.read_text().split())
        for path in log.glob("*.figures")
    }
    return sorted(events), figures


def _join(processes) -> None:
    for p in processes:
        p.join(timeout=BOUND_S)
    alive = [p.name for p in processes if p.is_alive()]
    for p in processes:
        if p.is_alive():
            p.kill()
    assert not alive, f"deadlock: {alive} still running"
    assert [p.exitcode for p in processes] == [0] * len(processes)


def _seq_of(events, who: str, what: str) -> list[int]:
    return [s for s, w, e in events if w == who and e == what]


def test_a_measurer_times_alone_once_trainers_stepped_aside_and_they_resume_after(tmp_path):
    ctx = mp.get_context("spawn")
    gpu, log, seq, stop = tmp_path / "gpu", tmp_path, ctx.Value("i", 0), ctx.Event()
    steps = {name: ctx.Value("i", 0) for name in ("t1", "t2")}
    trainers = [
        ctx.Process(target=_trainer, args=(gpu, name, log, seq, steps[name], stop))
        for name in steps
    ]
    measurer = ctx.Process(target=_measurer, args=(gpu, "m", log, seq))
    try:
        for p in trainers:
            p.start()
        _wait_until(lambda: all(s.value >= 3 for s in steps.values()), "trainers training")
        measurer.start()
        measurer.join(timeout=BOUND_S)
        after = {name: s.value for name, s in steps.items()}
        _wait_until(
            lambda: all(s.value >= after[n] + 3 for n, s in steps.items()), "trainers resuming"
        )
    finally:
        stop.set()
        _join([*trainers, measurer])
    events, figures = _events(log)

    (opened,), (closed,) = _seq_of(events, "m", "open"), _seq_of(events, "m", "close")
    inside = [(s, w, e) for s, w, e in events if opened < s < closed]
    assert inside == []  # nobody stepped during the window
    for name in steps:
        syncs = _seq_of(events, name, "sync")
        assert syncs and syncs[0] < opened  # waited for its queued work, then stood aside
        assert any(s > closed for s in _seq_of(events, name, "step"))  # and came back
        assert figures[name][0] > 0  # stepped-aside time was counted
    assert figures["m"][1] > 0 and figures["m"][0] == 0  # waited for its window, never aside


def _busy_trainer(directory, log, seq, inside, release) -> None:
    """Holds the GPU through one long step (until `release`), then yields once and leaves."""
    share = GpuShare(directory)
    with share.training():
        _log(log, seq, "a", "enter")
        inside.set()
        release.wait(BOUND_S)
        _log(log, seq, "a", "step done")
        share.yield_if_wanted()
        _log(log, seq, "a", "back")
    _report(log, "a", share)


def _late_trainer(directory, log, seq, arriving) -> None:
    share = GpuShare(directory)
    arriving.set()
    with share.training():
        _log(log, seq, "b", "enter")
    _report(log, "b", share)


def _turnstile_held(directory) -> bool:
    path = directory / "turnstile"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_trainer_arriving_while_a_measurer_waits_enters_after_its_window(tmp_path):
    ctx = mp.get_context("spawn")
    gpu, log, seq = tmp_path / "gpu", tmp_path, ctx.Value("i", 0)
    inside, arriving, release = ctx.Event(), ctx.Event(), ctx.Event()
    a = ctx.Process(target=_busy_trainer, args=(gpu, log, seq, inside, release))
    m = ctx.Process(target=_measurer, args=(gpu, "m", log, seq))
    b = ctx.Process(target=_late_trainer, args=(gpu, log, seq, arriving))
    try:
        a.start()
        _wait_until(inside.is_set, "trainer a inside")
        m.start()
        _wait_until(lambda: _turnstile_held(gpu), "the measurer at the turnstile")
        b.start()
        _wait_until(arriving.is_set, "trainer b arriving")
        # Time for b to slip in if the turnstile let it: the test then fails, never the
        # other way round (a longer pause only makes a broken protocol likelier to show).
        time.sleep(0.2)
        release.set()  # a finishes its step and sees the measurer waiting
    finally:
        release.set()
        _join([a, m, b])
    events, figures = _events(log)
    order = [(w, e) for _, w, e in events]
    assert order.index(("a", "step done")) < order.index(("m", "open"))
    assert order.index(("m", "close")) < order.index(("b", "enter"))  # b waited its turn
    assert order.index(("m", "close")) < order.index(("a", "back"))
    assert figures["a"][0] > 0 and figures["b"][0] > 0


def test_a_measurer_that_trains_steps_aside_for_itself_and_holds_the_gpu_again(tmp_path):
    share = GpuShare(tmp_path)
    synced = []
    share.synchronize = lambda: synced.append(True)
    with share.training():
        with share.exclusive():  # would wait forever on its own shared hold
            assert synced == [True]
        rw = os.open(tmp_path / "rw", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # shared again: an exclusive try fails
                fcntl.flock(rw, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(rw)
    rw = os.open(tmp_path / "rw", os.O_RDWR)
    try:
        fcntl.flock(rw, fcntl.LOCK_EX | fcntl.LOCK_NB)  # all released on leaving
    finally:
        os.close(rw)


def test_a_disabled_share_is_a_no_op(tmp_path):
    shares = [
        GpuShare(None),
        GpuShare.for_device(torch.device("cpu"), enabled=True, root=tmp_path),
        GpuShare.for_device(torch.device("cuda", 0), enabled=False, root=tmp_path),
    ]
    for share in shares:
        assert not share.enabled
        with share.training() as held:
            assert held is share
            share.yield_if_wanted()
            with share.exclusive():
                pass
        assert (share.waited_s, share.stepped_aside_s) == (0.0, 0.0)
    assert list(tmp_path.iterdir()) == []  # no lock file, no folder


def test_the_gpu_key_names_the_physical_gpu(monkeypatch):
    props = SimpleNamespace(uuid="3f2a-11/b")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    assert gpu_key(torch.device("cuda", 1)) == "gpu-3f2a-11_b"
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace())
    monkeypatch.setattr(gpu_share.socket, "gethostname", lambda: "node7")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu_key(torch.device("cuda", 1)) == "node7-gpu5"  # what Ray's actor sees as cuda:1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_key(torch.device("cuda", 1)) == "node7-gpu1"
