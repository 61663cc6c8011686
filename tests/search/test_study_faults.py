"""Faults around a study and its storage: a study left half-created by a driver killed while
creating it is finished by the rerun; a baseline (seed) trial that failed is run again and,
when its executor lost it, not counted; malformed study names and storages, damaged
databases and journals, read-only folders (storage, lock, data cache) end in one line and
exit code 2 from every command that takes them, with nothing created."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState, create_trial
from rich.console import Console

from sqa_nas.cli import main
from sqa_nas.data import load_dataset
from sqa_nas.errors import UserError
from sqa_nas.search import storage as storage_module
from sqa_nas.search.driver import Driver
from sqa_nas.search.locks import study_lock
from sqa_nas.search.records import FORMAT
from sqa_nas.search.space import parse_space
from sqa_nas.search.storage import MAX_NAME, check_storage, check_study_name, open_storage
from sqa_nas.search.study import trial_counts
from sqa_nas.search.study_attrs import read_study_attrs
from sqa_nas.search.trial import TrialOutcome
from tests.search.test_driver import InProcess, _driver
from tests.search.test_search import TINY

ROOT = Path(__file__).resolve().parents[2]
WORKER_DIED = "worker process died (exit code -9) during the trial"


def tree(root: Path) -> list[str]:
    """Every path under `root`, relative: what a command created shows as a difference."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@contextlib.contextmanager
def read_only(path: Path):
    """`path` (a folder or a file) read-only while the block runs, for root too: root
    ignores modes, so it also gets the immutable flag (``chattr +i``)."""
    mode = path.stat().st_mode
    path.chmod(mode & ~0o222)
    root = os.geteuid() == 0
    if root and (
        not shutil.which("chattr")
        or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode
    ):
        path.chmod(mode)
        pytest.skip("running as root without chattr +i: nothing is read-only to root")
    try:
        yield path
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


def ok(job) -> TrialOutcome:
    """A completed trial (loss rising with the number, so every one is on the front)."""
    values = {"val_loss": 1.0 + job.number, "throughput_tokens_per_s": 10.0 * (job.number + 1)}
    return TrialOutcome(job.number, "COMPLETE", values, {"allocation": f"a{job.number}"})


def _study(tmp_path: Path, n: int = 3) -> str:
    """A study "drv" of `n` completed trials in ``tmp_path/s.db``; returns its URL."""
    driver = _driver(tmp_path, InProcess(ok))
    assert driver.run(n).finished == n
    return driver.url


def _space(folder: Path, **space) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({**TINY, "study": "drv", **space}))
    return path


def _one_error(capsys) -> str:
    """The command's stderr, which must be one line starting with "error:"."""
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    return err


def _baseline_trials(study, name: str = "MHA") -> list:
    return [t for t in study.get_trials() if t.user_attrs.get("seed_variant") == name]


# ------------------------------------------------------------ a study left half-created
def test_a_driver_killed_while_creating_the_study_leaves_one_the_rerun_finishes(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    code = (
        "import os, signal, sys, optuna\n"
        "from sqa_nas.search.driver import Driver\n"
        "from sqa_nas.search.space import parse_space\n"
        "from tests.search.test_driver import InProcess\n"
        "from tests.search.test_search import TINY\n"
        "real = optuna.Study.set_user_attr\n"
        "def dying(study, key, value):\n"
        "    if key == 'method':  # midway through the study's attributes\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(study, key, value)\n"
        "optuna.Study.set_user_attr = dying\n"
        "spec = parse_space({**TINY, 'study': 'drv'})\n"
        "Driver(spec, InProcess(), storage_url=sys.argv[1]).open_study()\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, url], cwd=ROOT, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    left = optuna.load_study(study_name="drv", storage=url)
    assert "space_hash" in left.user_attrs and "sqa_nas" not in left.user_attrs  # half-made
    assert main(["dashboard", "drv", "--storage", url, "--once"]) == 2  # says to rerun

    driver = _driver(tmp_path, InProcess(ok))  # the same command again
    assert driver.run(3).finished == 3
    attrs = driver.study.user_attrs
    assert attrs["sqa_nas"]["format"] == FORMAT and attrs["objectives"]
    assert read_study_attrs(driver.study, driver.url).units
    assert [t.user_attrs.get("seed_variant") for t in driver.study.get_trials()][:2] == [
        "MHA",
        "SQA",
    ]


@pytest.mark.parametrize("stop_at", ["objectives", "space_hash", "method", "sqa_nas"])
def test_a_study_creation_interrupted_at_any_attribute_is_finished_by_the_rerun(
    tmp_path, monkeypatch, stop_at
):
    real = optuna.Study.set_user_attr

    def interrupted(study, key, value):
        if key == stop_at:
            raise KeyboardInterrupt
        real(study, key, value)

    monkeypatch.setattr(optuna.Study, "set_user_attr", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _driver(tmp_path).open_study()
    monkeypatch.undo()
    study = _driver(tmp_path).open_study()
    assert study.user_attrs["sqa_nas"]["format"] == FORMAT
    assert [t.state for t in study.get_trials()] == [TrialState.WAITING] * 2  # the seeds


def test_a_half_created_study_of_other_objectives_is_created_afresh(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    left = optuna.create_study(study_name="drv", storage=url, directions=["minimize"] * 3)
    left.set_metric_names(["val_loss", "params", "kv_cache_bytes"])
    left.set_user_attr("objectives", ["val_loss", "params", "kv_cache_bytes"])
    study = _driver(tmp_path).open_study()
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert study.metric_names == ["val_loss", "throughput_tokens_per_s"]
    assert study.user_attrs["objectives"] == ["val_loss", "throughput_tokens_per_s"]


def test_a_study_with_trials_but_no_mark_is_still_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    foreign = optuna.create_study(
        study_name="drv", storage=url, directions=["minimize", "maximize"]
    )
    foreign.set_user_attr("objectives", ["val_loss", "throughput_tokens_per_s"])
    foreign.add_trial(create_trial(state=TrialState.COMPLETE, values=[1.0, 2.0]))
    with pytest.raises(UserError, match="was not written by sqa-nas"):
        _driver(tmp_path).open_study()
    assert len(optuna.load_study(study_name="drv", storage=url).trials) == 1  # untouched


# ------------------------------------------------------------ baselines that failed
def dies(times: dict[str, int], *, lost: bool = True):
    """Outcomes where baseline NAME fails its first `times[NAME]` runs: its worker died
    (`lost`, as the executors report it) or out of memory (its own failure)."""

    def outcome(job):
        if times.get(job.seed_variant, 0):
            times[job.seed_variant] -= 1
            if lost:
                return InProcess.failed(job, WORKER_DIED, lost=True)
            return TrialOutcome(job.number, "FAIL", attrs={"fail_reason": "out of memory"})
        return ok(job)

    return outcome


def test_a_baseline_whose_worker_died_runs_again_in_the_run_and_is_not_counted(tmp_path):
    driver = _driver(tmp_path, InProcess(dies({"MHA": 1})))
    assert driver.run(3).finished == 3
    first, retry = _baseline_trials(driver.study)
    assert first.state == TrialState.FAIL and first.user_attrs["lost"]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == first.number
    counts = driver.counts()
    assert counts["counted"] == 3 and counts["complete"] == 3 and counts["failed"] == 1


def test_a_baseline_lost_in_every_try_of_a_run_is_run_by_a_larger_n_trials(tmp_path):
    driver = _driver(tmp_path, InProcess(dies({"MHA": 5})))
    assert driver.run(3).finished == 3  # tried twice in the run, lost twice, not counted
    assert [t.state for t in _baseline_trials(driver.study)] == [TrialState.FAIL] * 2
    again = _driver(tmp_path, InProcess(ok))
    assert again.run(4).finished == 4
    mha = _baseline_trials(again.study)
    assert [t.state for t in mha] == [TrialState.FAIL] * 2 + [TrialState.COMPLETE]
    assert again.counts()["counted"] == 4


def test_a_baseline_that_fails_by_itself_counts_and_is_run_once_more_only(tmp_path):
    driver = _driver(tmp_path, InProcess(dies({"MHA": 5}, lost=False)))
    assert driver.run(3).finished == 3
    mha = _baseline_trials(driver.study)
    assert [t.state for t in mha] == [TrialState.FAIL] * 2  # run once more, failed again
    assert driver.counts()["counted"] == 3 and driver.counts()["failed"] == 2
    again = _driver(tmp_path, InProcess(ok))
    assert again.run(5).finished == 5
    assert len(_baseline_trials(again.study)) == 2  # not queued a third time


def test_a_baseline_interrupted_by_ctrl_c_is_queued_again_once(tmp_path):
    driver = _driver(tmp_path, InProcess(interrupt=True))
    assert driver.run(3).interrupted
    _driver(tmp_path).open_study()  # the rerun opens it: nothing queued twice
    mha = _baseline_trials(driver.study)
    assert [t.state for t in mha] == [TrialState.FAIL, TrialState.WAITING]


def test_only_a_lost_baseline_stays_out_of_the_budget(tmp_path):
    study = _driver(tmp_path, seed_trials=[]).open_study()
    lost = {"lost": True, "fail_reason": WORKER_DIED}
    for attrs in [
        {**lost, "seed_variant": "MHA"},  # run again: not counted
        lost,  # a sampled trial is not run again: counted
        {"seed_variant": "SQA", "fail_reason": "out of memory"},  # its own failure: counted
    ]:
        study.add_trial(create_trial(state=TrialState.FAIL, user_attrs=attrs))
    assert trial_counts(study)["counted"] == 2 and trial_counts(study)["failed"] == 3


# ------------------------------------------------------------ malformed names and storages
LONG = "x" * 300
BAD_NAMES = ["..", ".", "../up", "a/b", "/abs", LONG, ".hidden", "a b", "a\\b", "ünï"]
# {FILE}: a regular file; {DIR}: a folder.
BAD_STORAGES = [
    ("sqlite://", "in-memory database"),
    ("sqlite:///", "in-memory database"),
    ("sqlite:///:memory:", "in-memory database"),
    ("sqlite:///file:m?mode=memory&uri=true", "in-memory database"),
    ("journal:", "names no file"),
    ("", "the storage URL is empty"),
    ("  ", "the storage URL is empty"),
    ("not-a-url", "is not a database URL"),
    ("://nothing", "is not a database URL"),
    ("sqlite:///{FILE}/x.db", "is a file, not a folder"),
    ("sqlite:///{FILE}/deeper/x.db", "is a file, not a folder"),
    ("journal:{FILE}/j.log", "is a file, not a folder"),
    ("{FILE}/j.journal", "is a file, not a folder"),
    ("sqlite:///{DIR}", "is a folder, not a file"),
    ("journal:{DIR}", "is a folder, not a file"),
]
COMMANDS = {  # each command's arguments with study "drv"; STORAGE appended when given
    "search": lambda tmp: ["search", str(_space(tmp / "spaces"))],
    "dashboard": lambda tmp: ["dashboard", "drv", "--once"],
    "export": lambda tmp: ["export", "drv", "--trial", "0", "--out", str(tmp / "out")],
    "confirm": lambda tmp: ["confirm", "drv"],
}


def _with_name(args: list[str], name: str) -> list[str]:
    if args[0] == "search":
        return [*args, "--study", name]
    return [args[0], name, *args[2:]]


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: n if len(n) < 20 else "300 chars")
def test_a_malformed_study_name_is_one_line_and_creates_nothing(
    tmp_path, monkeypatch, capsys, command, name
):
    args = _with_name(COMMANDS[command](tmp_path), name)
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    assert main(args) == 2
    assert "is not a study name" in _one_error(capsys)
    assert tree(tmp_path) == before  # no runs/, no runs/../study.db


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("storage,message", BAD_STORAGES, ids=[s for s, _ in BAD_STORAGES])
def test_a_malformed_storage_is_one_line_and_creates_nothing(
    tmp_path, monkeypatch, capsys, command, storage, message
):
    (tmp_path / "file").write_text("a file\n")
    (tmp_path / "folder").mkdir()
    url = storage.format(FILE=tmp_path / "file", DIR=tmp_path / "folder")
    args = [*COMMANDS[command](tmp_path), "--storage", url]
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    assert main(args) == 2
    assert message in _one_error(capsys)
    assert tree(tmp_path) == before


def test_the_longest_study_name_and_a_database_server_are_accepted(tmp_path, monkeypatch):
    assert check_study_name("a" * MAX_NAME) == "a" * MAX_NAME
    with pytest.raises(UserError, match=f"at most {MAX_NAME} characters"):
        check_study_name("a" * (MAX_NAME + 1))
    monkeypatch.chdir(tmp_path)
    url = "postgresql://user@127.0.0.1:5432/studies"  # a server keeps it: no file to check
    assert check_storage(url) == url and tree(tmp_path) == []


def test_a_database_the_user_may_not_read_is_named_as_such(tmp_path, monkeypatch):
    db = tmp_path / "s.db"
    optuna.create_study(study_name="drv", storage=f"sqlite:///{db}")
    allowed = os.access

    def access(path, mode, **kwargs) -> bool:  # as a user other than root sees a mode 000 file
        return False if mode == os.R_OK and Path(path) == db else allowed(path, mode, **kwargs)

    monkeypatch.setattr(storage_module.os, "access", access)
    with pytest.raises(UserError, match=f"cannot read the storage {db}: permission denied"):
        open_storage(f"sqlite:///{db}")


# ------------------------------------------------------------ damaged storages
def _garble(path: Path, at: str) -> None:
    """Write garbage over part of a valid SQLite file: its header, a page near the start,
    the page holding the study's mark or a trial's values, or the last page; or a few bytes
    inside one stored value (the pages stay whole: the value no longer reads as JSON)."""
    data = bytearray(path.read_bytes())
    page = 4096
    where = {
        "header": 100,
        "page 3": 2 * page,
        "study page": data.find(b'"format"') // page * page,
        "trials page": data.rfind(b"a1") // page * page,
        "last page": len(data) - page,
    }
    if at == "inside a value":
        i = data.find(b'"fingerprint"')
        data[i : i + 6] = b"\x00{{{[,"
    else:
        assert where[at] > 0
        data[where[at] : where[at] + 1024] = b"\xde\xad\xbe\xef" * 256
    path.write_bytes(bytes(data))


DAMAGE = ["header", "page 3", "study page", "trials page", "last page", "inside a value"]


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("at", DAMAGE)
def test_a_damaged_database_is_one_line_naming_it_from_every_command(
    tmp_path, monkeypatch, capsys, command, at
):
    url = _study(tmp_path)
    db = tmp_path / "s.db"
    (tmp_path / "s.db.sqa-nas.lock").unlink()
    _garble(db, at)
    args = [*COMMANDS[command](tmp_path), "--storage", url]
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    before = tree(tmp_path)
    assert main(args) == 2
    err = _one_error(capsys)
    assert f"storage {db} is damaged" in err or f"storage {url} is damaged" in err
    assert tree(tmp_path) == before  # no lock file, no export folder


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_damaged_journal_is_one_line_naming_it_from_every_command(
    tmp_path, monkeypatch, capsys, command
):
    journal = tmp_path / "s.journal"
    spec = parse_space({**TINY, "study": "drv"})
    quiet = Console(file=io.StringIO())
    Driver(spec, InProcess(ok), storage_url=str(journal), console=quiet).run(2)
    (tmp_path / "s.journal.sqa-nas.lock").unlink()
    text = journal.read_bytes()
    journal.write_bytes(text[: len(text) // 2] + b"{not json}\n" + text[len(text) // 2 :])
    args = [*COMMANDS[command](tmp_path), "--storage", str(journal)]
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    before = tree(tmp_path)
    assert main(args) == 2
    assert f"the journal {journal} is damaged" in _one_error(capsys)
    assert tree(tmp_path) == before


# ------------------------------------------------------------ read-only folders
def test_a_read_only_storage_folder_is_refused_before_a_search_writes(tmp_path, capsys):
    space = _space(tmp_path / "spaces")
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        for storage in (f"sqlite:///{ro}/s.db", f"sqlite:///{ro}/new/s.db", f"journal:{ro}/j.log"):
            assert main(["search", str(space), "--storage", storage]) == 2
            err = _one_error(capsys)
            assert str(ro) in err and "Traceback" not in err
        assert tree(ro) == []


def test_a_study_in_a_folder_made_read_only_is_read_but_not_written(tmp_path, capsys):
    url = _study(tmp_path / "runs")
    space = _space(tmp_path / "spaces")
    with read_only(tmp_path / "runs"):
        before = tree(tmp_path / "runs")
        assert main(["dashboard", "drv", "--storage", url, "--once"]) == 0  # reading works
        capsys.readouterr()
        for args in (["search", str(space)], ["confirm", "drv"]):  # writing does not
            assert main([*args, "--storage", url]) == 2
            err = _one_error(capsys)
            assert f"the storage folder {tmp_path / 'runs'} is read-only" in err
        assert tree(tmp_path / "runs") == before


def test_a_read_only_study_database_is_refused_by_the_writers(tmp_path, capsys):
    url = _study(tmp_path)
    with read_only(tmp_path / "s.db"):
        assert main(["search", str(_space(tmp_path / "spaces")), "--storage", url]) == 2
        assert f"the storage {tmp_path / 's.db'} is read-only" in _one_error(capsys)


def test_the_study_lock_in_a_read_only_folder_is_a_user_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro), pytest.raises(UserError, match=f"cannot take the study lock {ro}/s.db"):
        with study_lock(None, f"sqlite:///{ro}/s.db", "drv"):
            pass
    assert tree(ro) == []
    (ro / "s.db.sqa-nas.lock").touch()  # a lock file that is there: read-only is enough
    with read_only(ro / "s.db.sqa-nas.lock"), read_only(ro):
        with study_lock(None, f"sqlite:///{ro}/s.db", "drv") as locked:
            assert locked


def test_a_read_only_data_cache_is_one_line_naming_the_folder(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    space = _space(tmp_path / "spaces", storage=f"sqlite:///{tmp_path}/runs/s.db")
    monkeypatch.setenv("SQA_NAS_CACHE", str(cache))
    with read_only(cache):
        with pytest.raises(UserError, match=f"cannot build the data cache in {cache}: "):
            load_dataset({"kind": "embedded"})
        assert main(["search", str(space)]) == 2
        assert f"cannot build the data cache in {cache}: it is not a writable" in _one_error(
            capsys
        )
        assert tree(cache) == []


def test_a_read_only_data_cache_that_holds_the_corpus_is_read(tmp_path):
    cache = tmp_path / "cache"
    built = load_dataset({"kind": "embedded"}, cache_dir=cache)
    with read_only(cache / "corpus"):
        again = load_dataset({"kind": "embedded"}, cache_dir=cache)
    assert again.fingerprint == built.fingerprint
