"""The dashboard shows a study's strings, never sends them: a crafted study whose name,
allocations, device names, variants, backends, fail reasons, confirm summary and run figures
hold terminal escape sequences (clear screen, window title, OSC-8 link), BEL, CR, C1 and
bidirectional controls, and rich markup, is drawn by `--once`, the app, `--json` and `--png`
without one control character reaching the output, and with the markup shown as written."""

from __future__ import annotations

import asyncio
import io
import json
import unicodedata

import optuna
import pytest
from rich.console import Console

from sqa_nas.cli import main
from sqa_nas.dashboard.app import Dashboard
from sqa_nas.dashboard.render import detail
from sqa_nas.dashboard.table import TrialTable
from sqa_nas.dashboard.view import StorageSource, StudyView
from sqa_nas.printable import printable
from tests.fakestudy import make_study

# What a hostile study may hold. Every payload opens with a clear screen and carries rich
# markup, so each field shows both; "[/b]" closes a tag never opened (a MarkupError when
# parsed), "$\notacommand{$" is a malformed formula (matplotlib's mathtext fails on it).
CLEAR, TITLE, LINK = (
    "\x1b[2J",
    "\x1b]0;owned\x07",
    "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\",
)
MARKUP = "[red]red[/red][link=http://evil.example]x[/link][/b]"
OTHERS = "\r\x9b\u202e\x00\x7f$\\notacommand{$"
PAYLOADS = {
    "study": "evil" + CLEAR + "[bold]name[/bold]" + TITLE,
    "allocation": CLEAR + "ALLOC" + MARKUP + LINK + OTHERS,
    "device": CLEAR + "GPU" + MARKUP + TITLE,
    "variant": CLEAR + "VAR" + MARKUP + OTHERS,
    "backend": CLEAR + "BACK" + MARKUP,
    "pattern": CLEAR + "PAT" + MARKUP,
    "fail_reason": CLEAR + "FAIL" + MARKUP + "\nsecond line" + TITLE + OTHERS,
    "confirm": CLEAR + "CONFIRM" + MARKUP + TITLE,
    "host": CLEAR + "HOST" + MARKUP + TITLE,
    "nvml_note": CLEAR + "NVML" + MARKUP + OTHERS,
}
NAME = PAYLOADS["study"]
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\x00", "\r", "\x7f")  # never in what is shown
SIZE = (200, 60)


# An objective's name, which picker specs ("best:NAME") and axis labels quote.
OBJECTIVE = "val" + CLEAR + "[red]loss[/b]:x=y+1%" + TITLE


def crafted_study(
    url: str, base_url: str, name: str = NAME, objectives: list[str] | None = None
) -> optuna.Study:
    """A copy of the fake study with every string a reader shows replaced by a payload
    (and its objectives renamed to `objectives`)."""
    base = make_study(base_url, name="base", n=8, failed=1, running=1)
    study = optuna.create_study(study_name=name, storage=url, directions=base.directions)
    study.set_metric_names(objectives or base.metric_names)
    for key, value in base.user_attrs.items():
        study.set_user_attr(key, value)
    study.set_user_attr(
        "confirm",
        {"seeds": [1, 2], "summary": PAYLOADS["confirm"], "survivors": [0], "ended": TITLE},
    )
    run = {"host": PAYLOADS["host"], "nvml_note": PAYLOADS["nvml_note"], "ended": TITLE}
    study.set_user_attr("executor_stats", [run])
    for t in base.trials:
        attrs = dict(t.user_attrs)
        attrs["allocation"] = PAYLOADS["allocation"]
        attrs["device"] = {**attrs["device"], "name": PAYLOADS["device"]}
        if attrs.get("seed_variant"):
            attrs["seed_variant"] = PAYLOADS["variant"]
        attrs["layers"] = [
            {**x, "backend": PAYLOADS["backend"], "pattern": PAYLOADS["pattern"]}
            for x in attrs["layers"]
        ]
        if t.state != optuna.trial.TrialState.COMPLETE:
            attrs["fail_reason"] = PAYLOADS["fail_reason"]
        study.add_trial(
            optuna.trial.create_trial(
                state=t.state,
                values=t.values,
                params=t.params,
                distributions=t.distributions,
                user_attrs=attrs,
            )
        )
    return study


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evil")
    url = f"sqlite:///{folder / 'study.db'}"
    crafted_study(url, f"sqlite:///{folder / 'base.db'}")
    return url


@pytest.fixture(scope="module")
def odd_objective(tmp_path_factory):
    folder = tmp_path_factory.mktemp("objective")
    url = f"sqlite:///{folder / 'study.db'}"
    objectives = [OBJECTIVE, "throughput_tokens_per_s"]
    crafted_study(url, f"sqlite:///{folder / 'base.db'}", "odd", objectives)
    return url


def assert_shown_not_sent(text: str) -> None:
    for ch in RAW:
        assert ch not in text, f"{ch!r} reached the output"


def test_printable_shows_every_control_character():
    assert printable(CLEAR + TITLE) == "^[[2J^[]0;owned^G"
    assert printable("a\nb") == "a^Jb" and printable("a\nb", newlines=True) == "a\nb"
    assert printable("\r\x9b\u202e\x00\x7f\ud800") == "^M\ufffd\ufffd^@^?\ufffd"
    assert printable(17) == "17" and printable("NVIDIA H200 · é") == "NVIDIA H200 · é"
    every = "".join(map(chr, range(0x250))) + "\u2028\u2029\u200e\u2066\u2069\u061c"
    shown = printable(every)
    assert not [c for c in shown if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")]
    assert not set(shown) & set("\u200e\u2066\u2069\u061c")


def test_once_shows_the_payloads_as_text(storage, capsys):
    assert main(["dashboard", NAME, "--storage", storage, "--once", "--pick", "knee"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert_shown_not_sent(out + captured.err)
    flat = out.replace("\n", "")  # table cells fold long text
    for marker in ("ALLOC", "GPU", "VAR", "BACK", "CONFIRM", "HOST", "NVML", "[bold]name"):
        assert marker in flat, marker
    assert "[red]red[/red]" in flat and "[link=http://evil.example]x[/link][/b]" in flat
    assert "^[[2J" in flat and "^[]0;owned^G" in flat  # the escapes, visibly


def test_the_detail_pane_shows_a_failed_trials_reason_as_text(storage):
    study = optuna.load_study(study_name=NAME, storage=storage)
    failed = next(t.number for t in study.trials if t.state.name == "FAIL")
    source = StorageSource(NAME, storage)
    records = source.records()
    view = StudyView(records, source.objectives, source.directions)
    console = Console(width=200, file=io.StringIO(), color_system=None)
    console.print(detail(view, view.by_number[failed]))
    text = console.file.getvalue()
    assert_shown_not_sent(text)
    assert "failed: ^[[2JFAIL[red]red[/red]" in text and "second line" in text


def test_json_escapes_the_payloads_and_keeps_them_exact(storage, capsys):
    assert main(["dashboard", NAME, "--storage", storage, "--json", "-"]) == 0
    out = capsys.readouterr().out
    assert_shown_not_sent(out)
    front = json.loads(out)["front"]
    assert front and all(item["allocation"] == PAYLOADS["allocation"] for item in front)


def test_png_draws_the_payloads_as_text(storage, tmp_path, capsys):
    out = tmp_path / "front.png"
    assert main(["dashboard", NAME, "--storage", storage, "--png", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_shown_not_sent(capsys.readouterr().err)


def test_errors_quoting_the_study_show_its_text(storage, capsys):
    """An error message that names the study's objectives or GPU types: one line, exit 2,
    nothing sent to the terminal."""
    for argv in (["--gpu-type", "TPU"], ["--x", "nope"], ["--pick", "best:nope"]):
        assert main(["dashboard", NAME, "--storage", storage, "--once", *argv]) == 2
        err = capsys.readouterr().err
        assert_shown_not_sent(err)
        assert err.startswith("error:") and "Traceback" not in err
    assert main(["dashboard", NAME + "x", "--storage", storage, "--once"]) == 2
    err = capsys.readouterr().err
    assert_shown_not_sent(err)  # "studies there:" lists the crafted name


def test_an_objectives_name_is_shown_as_text(odd_objective, tmp_path, capsys):
    """The name reaches labels, the hypervolume's axes, picker specs and error messages."""
    assert main(["dashboard", "odd", "--storage", odd_objective, "--once"]) == 0
    out = capsys.readouterr().out
    assert_shown_not_sent(out)
    assert "val^[[2J[red]loss[/b]:x=y+1%^[]0;owned^G ↓" in out  # the objectives row
    png = tmp_path / "front.png"
    assert main(["dashboard", "odd", "--storage", odd_objective, "--png", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["dashboard", "odd", "--storage", odd_objective, "--once", "--x", "nope"]) == 2
    err = capsys.readouterr().err
    assert_shown_not_sent(err)
    assert "choose from val^[[2J[red]loss[/b]" in err


def screen_text(app) -> str:
    """The whole screen as the terminal would get it, without colours."""
    console = Console(width=app.size.width, file=io.StringIO(), record=True, color_system=None)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


def test_the_app_draws_the_payloads_as_text(storage):
    async def go():
        app = Dashboard(StorageSource(NAME, storage), refresh_s=3600, pick="knee")
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await pilot.pause()
            screens = [screen_text(app)]
            table = app.query_one(TrialTable)
            failed = next(i for i, r in enumerate(table.records) if r.state == "FAIL")
            table.cursor = failed
            await pilot.press("g", "b")  # the GPU filter's and a picker's notices
            await pilot.pause()
            screens.append(screen_text(app))
            rows = [table.row_text(i) for i in range(len(table.records))]
            titles = [app.title, app.sub_title, app.query_one("#scatter").border_title]
            return screens, rows, titles

    screens, rows, titles = asyncio.run(go())
    for text in [*screens, *rows, *titles]:
        assert_shown_not_sent(text)
    shown = "\n".join(screens)
    assert "ALLOC" in shown and "[red]red[/red]" in shown and "^[[2J" in shown
    assert "GPU type:" in shown and "(GPU ^[[2JGPU[red]red[/red]" in shown  # the filter
    assert "FAIL" in shown and "[bold]name" in titles[0]
    assert any("ALLOC[red]red[/red]" in row for row in rows)
