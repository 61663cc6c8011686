"""What the project promises when things fail: each fault of the README's reliability section
is injected by a named test of the suite; this script runs those tests and records, per
fault, whether the search survived it (the test passed: its assertions include that no
completed trial was lost and nothing was left running).

    python -m experiments.faults                 # CPU, a few minutes
    python -m experiments.faults --out FILE

Writes experiments/results/faults_cpu.json: `faults[]` (`fault`, `test`, `survived`,
`seconds`), `tried`, `survived`, `completed_trials_lost` (0 when every test passed: each
asserts it), and the README's reliability table is read from it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from experiments.common import ROOT, write_result
from sqa_nas.cli import guarded

# fault -> the test that injects it (pytest node id, relative to the project root)
FAULTS = [
    (
        "a local worker process dies mid-trial",
        "tests/search/test_executors.py::"
        "test_a_search_goes_on_after_a_worker_dies_and_leaves_optuna_settings",
    ),
    (
        "a Ray worker is killed mid-trial (two-node cluster)",
        "tests/search/test_ray.py::test_trials_spread_over_both_nodes_and_survive_a_killed_worker",
    ),
    (
        "a Ray node is lost mid-search",
        "tests/search/test_ray.py::test_search_survives_losing_a_node",
    ),
    (
        "the private Ray instance's raylet dies mid-search",
        "tests/search/test_ray_faults.py::"
        "test_a_dead_raylet_fails_and_requeues_the_trials_in_flight_and_exits_2",
    ),
    (
        "a SIGKILLed driver's Ray agents are left behind, then the next start",
        "tests/search/test_ray_faults.py::"
        "test_the_next_start_kills_the_agents_a_killed_drivers_instance_left",
    ),
    (
        "the driver is SIGKILLed mid-search (local), then rerun",
        "tests/search/test_search.py::test_killed_or_interrupted_search_resumes[9]",
    ),
    (
        "Ctrl-C mid-search (local), then rerun",
        "tests/search/test_search.py::test_killed_or_interrupted_search_resumes[2]",
    ),
    (
        "the driver is SIGKILLed mid-search (Ray), then rerun",
        "tests/search/test_ray.py::test_killed_driver_resumes_with_completed_trials_intact",
    ),
    (
        "a driver dies while MO-ASHA trials wait at a rung, then rerun",
        "tests/search/test_mo_asha.py::test_a_stopped_driver_loses_no_paused_trial",
    ),
    (
        "the driver is killed while it creates the study, then rerun",
        "tests/search/test_study_faults.py::"
        "test_a_driver_killed_while_creating_the_study_leaves_one_the_rerun_finishes",
    ),
    (
        "a baseline's worker dies (the study keeps its baselines)",
        "tests/search/test_study_faults.py::"
        "test_a_baseline_whose_worker_died_runs_again_in_the_run_and_is_not_counted",
    ),
    (
        "a damaged study database (every command)",
        "tests/search/test_study_faults.py::"
        "test_a_damaged_database_is_one_line_naming_it_from_every_command",
    ),
    (
        "a read-only storage folder",
        "tests/search/test_study_faults.py::"
        "test_a_read_only_storage_folder_is_refused_before_a_search_writes",
    ),
    (
        "a read-only folder for the study lock",
        "tests/search/test_study_faults.py::"
        "test_the_study_lock_in_a_read_only_folder_is_a_user_error",
    ),
    (
        "Ctrl-C while a MO-ASHA promotion trains",
        "tests/search/test_mo_asha.py::test_ctrl_c_pauses_a_promotion_in_flight_again",
    ),
]


def run(faults: list[tuple[str, str]]) -> dict:
    """Run the tests behind `faults` in one pytest session; per fault its outcome."""
    with tempfile.TemporaryDirectory(prefix="sqa-nas-faults-") as tmp:
        report = Path(tmp) / "junit.xml"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--junitxml",
                str(report),
                *[test for _, test in faults],
            ],
            cwd=ROOT,
            check=False,
        )
        cases = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            failed = any(c.tag in ("failure", "error", "skipped") for c in case)
            cases[name] = (not failed, float(case.get("time", 0.0)))
    rows = []
    for fault, test in faults:
        # A test function stands for all its parametrised cases: each must pass.
        mine = [v for k, v in cases.items() if k == test or k.startswith(test + "[")]
        survived = bool(mine) and all(ok for ok, _ in mine)
        seconds = sum(s for _, s in mine)
        rows.append(
            {"fault": fault, "test": test, "survived": survived, "seconds": round(seconds, 1)}
        )
    ok = sum(r["survived"] for r in rows)
    return {
        "experiment": "faults",
        "faults": rows,
        "tried": len(rows),
        "survived": ok,
        # Every test asserts that the trials completed before the fault are intact.
        "completed_trials_lost": 0 if ok == len(rows) else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="result file (default experiments/results/...)")
    args = p.parse_args(argv)
    result = run(FAULTS)
    for r in result["faults"]:
        print(f"{'survived' if r['survived'] else 'NOT SURVIVED':>13}  {r['fault']}")
    write_result("faults", result, args.out, machine=None)
    return 0 if result["survived"] == result["tried"] else 1


if __name__ == "__main__":
    sys.exit(guarded(main))
