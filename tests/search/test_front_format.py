"""`sqa-nas search --format table|plain|csv|json`: the final Pareto front never cut with an
ellipsis at 40, 80 or 120 columns nor when piped (plain); csv and json parse and hold the
values at full precision; a bad --format is one line and exit code 2, before anything is
made."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from rich.console import Console

from sqa_nas.cli import main
from sqa_nas.cli.search import print_front
from sqa_nas.search.driver import Driver
from sqa_nas.search.space import parse_space
from sqa_nas.search.trial import TrialOutcome
from tests.search.test_driver import InProcess
from tests.search.test_search import TINY

ELLIPSIS = re.compile(r"…|\.\.\.")
ALLOCATION = "8/4 w1024 x2, 4/2 flex:512+16 x3, 16/16 x1, 2/1 w128 x2"
OBJECTIVES = ["val_loss", "throughput_tokens_per_s"]


def outcome(job):
    """Trial N: loss 2.0 + 0.1 N and throughput 100,000 + 12,345.678 N (every trial on the
    front), a long allocation and spreads of full precision."""
    n = job.number
    loss, speed = 2.0 + 0.1 * n + 1e-9, 100_000.0 + 12_345.678901 * n
    metrics = {
        "val_loss": loss,
        "val_loss_std": 0.0123456789,
        "throughput_tokens_per_s": speed,
        "throughput_rel_ci95": 0.0312345,
        "speedup_vs_mha": 1.0 + 0.123456789 * n,
    }
    analytics = {"params": 123_456_789 + n, "kv_cache_bytes_per_token": 1_048_576}
    attrs = {"allocation": ALLOCATION, "metrics": metrics, "analytics": analytics}
    return TrialOutcome(n, "COMPLETE", {"val_loss": loss, "throughput_tokens_per_s": speed}, attrs)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("front")
    spec = parse_space({**TINY, "study": "wide"})
    driver = Driver(spec, InProcess(outcome), storage_url=f"sqlite:///{folder}/s.db")
    driver.console = Console(file=io.StringIO())
    return driver.run(4).study


def printed(study, fmt: str, width: int = 120) -> str:
    out = io.StringIO()
    print_front(study, OBJECTIVES, Console(file=out, width=width), fmt=fmt)
    return out.getvalue()


@pytest.mark.parametrize("width", [40, 80, 120])
def test_the_front_fits_the_terminal_without_cutting_a_value(study, width):
    text = printed(study, "table", width)
    assert not ELLIPSIS.search(text), text
    assert all(len(line) <= width for line in text.splitlines())
    assert "Pareto front of wide: 4 of 4 completed trials" in " ".join(text.split())
    if width >= 80:  # the objectives stay whole on one line; the allocation wraps
        assert "2.2 +- 0.012" in text and "1.247e+05 +-3%" in text
        assert "flex:512+16" in text
    if width == 120:
        assert "123,456,790" in text and "1,048,576" in text  # nothing dropped


def test_piped_the_front_is_plain_with_full_rows(study):
    text = printed(study, "plain", width=80)
    assert not ELLIPSIS.search(text) and "\x1b" not in text
    rows = [line for line in text.splitlines() if ALLOCATION in line]
    assert len(rows) == 4 and all("123,456,7" in row and "1,048,576" in row for row in rows)
    assert any(len(row) > 80 for row in rows)  # a pipe gets the whole row, not a wrapped one


def test_csv_and_json_hold_the_values_at_full_precision(study, capsys):
    print_front(study, OBJECTIVES, Console(file=io.StringIO()), fmt="csv")
    reader = csv.DictReader(io.StringIO(capsys.readouterr().out))
    rows = list(reader)
    assert reader.fieldnames[:6] == ["trial", "gpu_type", "baseline", "allocation", *OBJECTIVES]
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3]  # best val_loss first
    assert float(rows[3]["val_loss"]) == 2.0 + 0.1 * 3 + 1e-9
    assert float(rows[3]["throughput_tokens_per_s"]) == 100_000.0 + 12_345.678901 * 3
    assert rows[0]["allocation"] == ALLOCATION and float(rows[0]["val_loss_std"]) == 0.0123456789
    print_front(study, OBJECTIVES, Console(file=io.StringIO()), fmt="json")
    data = json.loads(capsys.readouterr().out)
    (front,) = data["fronts"]
    assert data["study"] == "wide" and data["objectives"] == OBJECTIVES
    assert front["completed"] == 4 and [t["trial"] for t in front["trials"]] == [0, 1, 2, 3]
    assert front["trials"][3]["speedup_vs_mha"] == 1.0 + 0.123456789 * 3
    assert front["resolved"] is False and "noise" in front["verdict"]
    assert list(front["trials"][0]) == reader.fieldnames  # the same fields as the csv


@pytest.mark.parametrize("value", ["xml", "", "Plain"])
def test_a_bad_format_is_one_line_and_exit_2(value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(json.dumps(TINY))
    with pytest.raises(SystemExit) as exc:
        main(["search", "s.yaml", "--format", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "argument --format: invalid choice" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # no runs/, no study
