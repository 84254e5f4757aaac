"""The macOS/Windows tray dialogs (agent/tray/native.py) and the flow around them, headless.

osascript and MessageBoxW cannot run here: the tests pin the AppleScript that is run (its string
escaping, buttons and default) and parse osascript's documented answer ("button returned:..,
gave up:.."); the flow runs with a fake runner / message box. pystray is never imported.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from agent.selfreport.server import SelfReportError
from agent.tray import native, text
from agent.tray.app import NativeTrayApp


def test_applescript_strings_escape_quotes_and_backslashes() -> None:
    assert native.applescript_string('say "hi" \\ bye') == '"say \\"hi\\" \\\\ bye"'
    [tool, flag, script] = native.explanation_command()
    assert (tool, flag) == ("/usr/bin/osascript", "-e")
    assert script.startswith("display dialog ")
    assert f'buttons {{"{text.CLOSE_BUTTON}", "{text.MISTAKE_BUTTON}"}}' in script
    assert f'default button "{text.CLOSE_BUTTON}"' in script  # Return never reports by accident
    assert "giving up after 600" in script


def test_osascript_answers_are_parsed() -> None:
    assert native.chose_mistake(f"button returned:{text.MISTAKE_BUTTON}, gave up:false\n")
    assert native.chose_mistake(f"button returned:{text.MISTAKE_BUTTON}")
    assert not native.chose_mistake("button returned:Close, gave up:false")
    assert not native.chose_mistake("button returned:, gave up:true")  # nobody answered
    assert not native.chose_mistake("")


class FakeOsascript:
    def __init__(self, *answers: tuple[int, str]) -> None:
        self.answers = list(answers)
        self.commands: list[list[str]] = []

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(command))
        code, out = self.answers.pop(0) if self.answers else (0, "button returned:OK")
        return subprocess.CompletedProcess(list(command), code, out, "")


def test_mac_choosing_the_mistake_button_sends_the_report_and_says_so() -> None:
    runner = FakeOsascript((0, f"button returned:{text.MISTAKE_BUTTON}, gave up:false"))
    sent: list[tuple[Path, str]] = []
    app = NativeTrayApp(
        Path("/var/run/tripkey/selfreport.sock"),
        native.MacDialogs(runner),
        report=lambda p, note: sent.append((p, note)),
    )
    app.explain()
    assert sent == [(Path("/var/run/tripkey/selfreport.sock"), text.MISTAKE_BUTTON)]
    assert text.REPORT_SENT.replace('"', '\\"') in runner.commands[-1][2]


def test_mac_escape_or_close_sends_nothing() -> None:
    runner = FakeOsascript((1, ""))  # Escape: osascript exits 1 ("User canceled.")
    app = NativeTrayApp(
        Path("/s"), native.MacDialogs(runner), report=lambda *a, **k: (_ for _ in ()).throw(AssertionError)
    )
    app.explain()
    assert len(runner.commands) == 1


def test_windows_yes_sends_and_a_failure_is_shown_not_swallowed() -> None:
    shown: list[tuple[str, int]] = []

    def message_box(owner: object, body: str, title: str, flags: int) -> int:
        shown.append((body, flags))
        return native.IDYES if flags & native.MB_YESNO else 1

    def unreachable(path: Path, note: str) -> None:
        raise SelfReportError("the Tripkey agent is not reachable")

    app = NativeTrayApp(
        Path(r"\\.\pipe\tripkey-selfreport"), native.WindowsDialogs(message_box), report=unreachable
    )
    app.explain()
    (question, flags), (answer, _) = shown
    assert question.startswith(text.WHAT_IS_THIS) and "Choose Yes" in question and flags & native.MB_YESNO
    assert answer == text.REPORT_FAILED.format(error="the Tripkey agent is not reachable")


def test_only_one_dialog_at_a_time() -> None:
    app = NativeTrayApp(Path("/s"), native.MacDialogs(FakeOsascript()), report=lambda *a, **k: None)
    assert app._dialog_open.acquire()  # a dialog is on screen
    runner = app.dialogs.run  # type: ignore[attr-defined]
    app.explain()
    assert runner.commands == []
