"""The explanation and "I opened it by mistake" as the system's own dialog (macOS, Windows).

On macOS pystray's darwin backend (AppKit) must own the main thread, and Tk wants it too, so no
Tk runs in the tray there; on Windows the win32 backend runs its message loop on the main thread.
The dialog is therefore native and shown from a worker thread in a way that is safe there:

* macOS: `osascript -e 'display dialog ...'` — a separate process that draws a standard alert
  (NSAlert under the hood) with the two buttons, so nothing in this process touches AppKit off
  the main thread. Its answer comes back on stdout ("button returned:...").
* Windows: user32's MessageBoxW, which is modal on the calling thread and documented as safe to
  call from any thread; "Yes" sends the note.

No GUI is imported here at module level (the headless unit tests build the commands and drive
the flow with a fake runner).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from agent import osflags
from agent.tray import text

OSASCRIPT = "/usr/bin/osascript"
DIALOG_SECONDS = 600  # a dialog nobody answers is closed, and so is its osascript
# MessageBoxW flags and answers.
MB_YESNO, MB_OK, MB_ICONINFORMATION, MB_TOPMOST, MB_SETFOREGROUND = 0x4, 0x0, 0x40, 0x40000, 0x10000
IDYES = 6
MISTAKE_QUESTION = "\n\nDid you open it by mistake? Choose Yes to send a note to your security team."


def applescript_string(value: str) -> str:
    """`value` as an AppleScript string literal (backslash and double quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def explanation_command(title: str = text.TITLE) -> list[str]:
    """osascript that shows the explanation with Close (default) and the mistake button."""
    buttons = (
        "{" + f"{applescript_string(text.CLOSE_BUTTON)}, {applescript_string(text.MISTAKE_BUTTON)}" + "}"
    )
    script = (
        f"display dialog {applescript_string(text.WHAT_IS_THIS)} with title {applescript_string(title)} "
        f"buttons {buttons} default button {applescript_string(text.CLOSE_BUTTON)} with icon note "
        f"giving up after {DIALOG_SECONDS}"
    )
    return [OSASCRIPT, "-e", script]


def message_command(message: str, title: str = text.TITLE) -> list[str]:
    script = (
        f"display dialog {applescript_string(message)} with title {applescript_string(title)} "
        f'buttons {{"OK"}} default button "OK" giving up after {DIALOG_SECONDS}'
    )
    return [OSASCRIPT, "-e", script]


def chose_mistake(output: str) -> bool:
    """Whether osascript's answer ("button returned:X, gave up:false") is the mistake button."""
    fields = dict(part.strip().partition(":")[::2] for part in output.strip().split(","))
    return fields.get("button returned") == text.MISTAKE_BUTTON and fields.get("gave up", "false") == "false"


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=DIALOG_SECONDS + 30, check=False
    )


class MacDialogs:
    """Dialogs through osascript (a user who presses Escape or closes it chose Close)."""

    def __init__(self, run: Runner = _run) -> None:
        self.run = run

    def ask_mistake(self) -> bool:
        result = self.run(explanation_command())
        return result.returncode == 0 and chose_mistake(result.stdout)

    def tell(self, message: str) -> None:
        self.run(message_command(message))


class WindowsDialogs:
    """Dialogs through MessageBoxW (`message_box` is user32.MessageBoxW; tests pass a fake)."""

    def __init__(self, message_box: Callable[[Any, str, str, int], int] | None = None) -> None:
        self.message_box = message_box or _user32_message_box()

    def ask_mistake(self) -> bool:
        flags = MB_YESNO | MB_ICONINFORMATION | MB_TOPMOST | MB_SETFOREGROUND
        return self.message_box(None, text.WHAT_IS_THIS + MISTAKE_QUESTION, text.TITLE, flags) == IDYES

    def tell(self, message: str) -> None:
        self.message_box(
            None, message, text.TITLE, MB_OK | MB_ICONINFORMATION | MB_TOPMOST | MB_SETFOREGROUND
        )


def _user32_message_box() -> Callable[[Any, str, str, int], int]:
    if not osflags.WINDOWS:
        raise OSError("MessageBoxW exists only on Windows")
    import ctypes

    function: Callable[[Any, str, str, int], int] = ctypes.windll.user32.MessageBoxW
    return function


__all__ = [
    "MacDialogs",
    "WindowsDialogs",
    "applescript_string",
    "chose_mistake",
    "explanation_command",
    "message_command",
]
