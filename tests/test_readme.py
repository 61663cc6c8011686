"""The README's examples run, and its two commands are the ones CI uses."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_python_examples_run_in_order():
    namespace: dict = {}  # one session, like a reader pasting the blocks in order
    blocks = _blocks("python")
    assert blocks
    for index, code in enumerate(blocks):
        exec(compile(code, f"README.md:python[{index}]", "exec"), namespace)


def command(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)```", README, flags=re.S)
    assert match, f"README lacks the {marker} block"
    return match.group(1).strip()


def test_readme_has_both_commands_and_ci_runs_the_test_command():
    assert "cli.py" in command("main-command")
    assert "pytest" in command("test-command")
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "test-command" in ci, ".ci/run must take its command from the README"


def test_yaml_examples_are_valid_search_spaces():
    import yaml

    from sqa_nas.search.space import parse_space

    blocks = _blocks("yaml")
    assert blocks
    for code in blocks:
        parse_space(yaml.safe_load(code), "README.md")


def test_performance_section_is_generated_from_the_result_files():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    generated = subprocess.run(
        [sys.executable, "-m", "experiments.report", "--section", "--no-png"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    block = re.search(
        r"<!-- performance:begin[^\n]*-->\n(.*?)<!-- performance:end -->", README, flags=re.S
    )
    assert block, "README lacks the generated Performance section"
    assert block.group(1) == generated, "rerun: python -m experiments.report --section"


def test_results_section_is_generated_from_the_result_files():
    from experiments.common import RESULTS
    from experiments.results_report import readme_section

    block = re.search(
        r"<!-- results:begin[^\n]*-->\n(.*?)<!-- results:end -->", README, flags=re.S
    )
    assert block, "README lacks the generated Results section"
    assert block.group(1) == readme_section(RESULTS), (
        "rerun: python -m experiments.results_report --section"
    )


def _cli_lines() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `python cli.py ...` / `sqa-nas ...` line in the bash blocks of
    the README and docs/, continuation lines joined and leading VAR=value settings dropped."""
    import shlex

    root = Path(__file__).resolve().parents[1]
    out = []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                while words and re.match(r"^[A-Z_]+=", words[0]):
                    words = words[1:]
                if words[:2] == ["python", "cli.py"]:
                    out.append((f"{path.name}: {line.strip()}", words[2:]))
                elif words[:1] == ["sqa-nas"]:
                    out.append((f"{path.name}: {line.strip()}", words[1:]))
    return out


def test_every_cli_example_in_the_docs_parses_and_names_files_that_exist(capsys):
    from sqa_nas.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    lines = _cli_lines()
    assert len(lines) >= 10
    for where, argv in lines:
        try:
            build_parser(argv).parse_args(argv)
        except SystemExit:
            raise AssertionError(f"{where}\n{capsys.readouterr().err}") from None
        for word in argv:
            if word.startswith(("search_spaces/", "experiments/")):
                assert (root / word).exists(), f"{where}: {word} does not exist"
