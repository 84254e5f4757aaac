"""The per-user tray icon: explains the canary and lets the user say "I opened it by mistake".

Runs as the logged-in user (never as the service). Clicking the icon (the default action on every
pystray backend, including plain X11 where menus are unavailable) opens the explanation with the
self-report button; backends with menus also get the same actions there.

Two shapes, by platform:
* Linux (X11, AppIndicator, GTK): a Tk window on the main thread, pystray on its own thread.
* macOS and Windows (NativeTrayApp): pystray's darwin / win32 backend owns the main thread, as
  AppKit and the Win32 message loop require, and the explanation is the system's own dialog shown
  from a worker thread (agent.tray.native: osascript on macOS, MessageBoxW on Windows). No Tk is
  loaded in that process.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent import osflags
from agent.selfreport.server import DEFAULT_SOCKET, SelfReportError, send_self_report
from agent.tray import text
from agent.tray.backend import select_backend

ICON_COLOUR = (232, 89, 12)  # a distinctive orange; the Xvfb test looks for it on screen


def make_image(size: int = 64) -> Any:
    """A simple key glyph on an orange disc, drawn with Pillow (no image files to ship)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((0, 0, size - 1, size - 1), fill=(*ICON_COLOUR, 255))
    unit = size / 16
    draw.ellipse((3 * unit, 5 * unit, 9 * unit, 11 * unit), outline="white", width=max(1, int(unit * 1.5)))
    draw.rectangle((8.5 * unit, 7.4 * unit, 13.5 * unit, 8.6 * unit), fill="white")
    draw.rectangle((11.5 * unit, 8.6 * unit, 12.7 * unit, 10.5 * unit), fill="white")
    return image


def _enable_clicks_on_plain_x11(icon: Any) -> None:
    """pystray's plain-X11 backend never asks X for button events on its icon window, so a click on
    the icon does nothing there (its own click handler is never reached). Ask for them before its
    event loop starts; other backends are left alone."""
    if not type(icon).__module__.endswith("._xorg"):
        return
    import Xlib.X

    window = getattr(icon, "_window", None)
    display = getattr(icon, "_display", None)
    if window is None or display is None:
        return  # a pystray release that changed its internals: the explanation stays reachable by --show
    window.change_attributes(
        event_mask=Xlib.X.ExposureMask | Xlib.X.StructureNotifyMask | Xlib.X.ButtonPressMask
    )
    display.flush()


class TrayApp:
    """Owns the Tk window (main thread) and the pystray icon (its own thread)."""

    def __init__(self, socket_path: Path = DEFAULT_SOCKET, *, show_now: bool = False) -> None:
        self.socket_path = socket_path
        self.show_now = show_now
        self.actions: queue.Queue[str] = queue.Queue()
        self.icon: Any = None
        self.root: Any = None
        self.dialog: Any = None

    def run(self) -> None:
        select_backend()
        import tkinter as tk

        import pystray

        self.root = tk.Tk()
        self.root.withdraw()
        menu = pystray.Menu(
            pystray.MenuItem("What is this?", lambda: self.actions.put("show"), default=True),
            pystray.MenuItem(text.MISTAKE_BUTTON, lambda: self.actions.put("report")),
            pystray.MenuItem("Quit", lambda: self.actions.put("quit")),
        )
        self.icon = pystray.Icon("security-tripwire", make_image(), text.TOOLTIP, menu=menu)
        _enable_clicks_on_plain_x11(self.icon)
        self.icon.run_detached()
        if self.show_now:
            self.actions.put("show")
        self.root.after(100, self._poll)
        self.root.mainloop()

    def _poll(self) -> None:
        try:
            while True:
                action = self.actions.get_nowait()
                if action == "show":
                    self._show_dialog()
                elif action == "report":
                    self._report(None)
                elif action == "quit":
                    self.icon.stop()
                    self.root.quit()
                    return
        except queue.Empty:
            pass
        self.root.after(100, self._poll)

    def _show_dialog(self) -> None:
        import tkinter as tk

        if self.dialog is not None and self.dialog.winfo_exists():
            self.dialog.lift()
            return
        dialog = tk.Toplevel(self.root)
        dialog.title(text.TITLE)
        tk.Label(dialog, text=text.TITLE, font=("TkDefaultFont", 12, "bold")).pack(padx=16, pady=(16, 8))
        tk.Label(dialog, text=text.WHAT_IS_THIS, wraplength=420, justify="left").pack(padx=16)
        status = tk.Label(dialog, text="", wraplength=420, justify="left")
        status.pack(padx=16, pady=8)
        buttons = tk.Frame(dialog)
        buttons.pack(pady=(0, 16))
        mistake = tk.Button(buttons, text=text.MISTAKE_BUTTON, command=lambda: self._report(status))
        mistake.pack(side="left", padx=8)
        tk.Button(buttons, text=text.CLOSE_BUTTON, command=dialog.destroy).pack(side="left", padx=8)
        # Enter sends the report: keyboard users (and the Xvfb test) need no pointer.
        dialog.bind("<Return>", lambda _event: self._report(status))
        mistake.focus_set()
        self.dialog = dialog

    def _report(self, status: Any) -> None:
        try:
            send_self_report(self.socket_path, note=text.MISTAKE_BUTTON)
            message = text.REPORT_SENT
        except SelfReportError as exc:
            message = text.REPORT_FAILED.format(error=exc)
        if status is not None:
            status.configure(text=message)
        elif self.icon is not None and getattr(self.icon, "HAS_NOTIFICATION", False):
            self.icon.notify(message, text.TITLE)


class Dialogs(Protocol):
    def ask_mistake(self) -> bool: ...

    def tell(self, message: str) -> None: ...


class NativeTrayApp:
    """pystray on the main thread, native dialogs on worker threads (macOS, Windows)."""

    def __init__(
        self,
        socket_path: Path,
        dialogs: Dialogs,
        *,
        show_now: bool = False,
        report: Callable[..., None] = send_self_report,
    ) -> None:
        self.socket_path = socket_path
        self.dialogs = dialogs
        self.show_now = show_now
        self.send = report
        self.icon: Any = None
        self._dialog_open = threading.Lock()  # one dialog at a time, however often the icon is clicked
        self.workers: list[threading.Thread] = []

    def run(self) -> None:
        select_backend()
        import pystray

        menu = pystray.Menu(
            pystray.MenuItem("What is this?", lambda: self.spawn(self.explain), default=True),
            pystray.MenuItem(text.MISTAKE_BUTTON, lambda: self.spawn(self.report)),
            pystray.MenuItem("Quit", lambda: self.icon.stop()),
        )
        self.icon = pystray.Icon("security-tripwire", make_image(), text.TOOLTIP, menu=menu)
        if self.show_now:
            self.spawn(self.explain)
        self.icon.run()  # the main thread, until Quit

    def spawn(self, action: Callable[[], None]) -> None:
        worker = threading.Thread(target=action, name="tray-dialog", daemon=True)
        self.workers.append(worker)
        worker.start()

    def explain(self) -> None:
        if not self._dialog_open.acquire(blocking=False):
            return  # already on screen
        try:
            mistake = self.dialogs.ask_mistake()
        finally:
            self._dialog_open.release()
        if mistake:
            self.report()

    def report(self) -> None:
        try:
            self.send(self.socket_path, note=text.MISTAKE_BUTTON)
            message = text.REPORT_SENT
        except SelfReportError as exc:
            message = text.REPORT_FAILED.format(error=exc)
        self.dialogs.tell(message)


def native_dialogs() -> Dialogs | None:
    """This platform's native dialogs, or None where the Tk window is used (Linux)."""
    from agent.tray import native

    if osflags.MACOS:
        return native.MacDialogs()
    if osflags.WINDOWS:
        return native.WindowsDialogs()
    return None


def main(socket_path: Path = DEFAULT_SOCKET, *, show_now: bool = False) -> int:
    """Run the tray until Quit. `show_now` opens the explanation at once (e.g. a first-login notice)."""
    dialogs = native_dialogs()
    if dialogs is not None:
        NativeTrayApp(socket_path, dialogs, show_now=show_now).run()
    else:
        TrayApp(socket_path, show_now=show_now).run()
    return 0
