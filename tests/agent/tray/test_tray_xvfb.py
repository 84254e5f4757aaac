"""The real tray icon under Xvfb with a real system-tray host (trayer), checked by screenshot.

Needs Debian's xvfb, trayer and xdotool (the Makefile installs them as root). A click on the icon
opens the explanation window (pystray's plain-X11 backend needs agent.tray.app to ask X for button
events first); the window is driven with the keyboard.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.selfreport.server import SelfReport, SelfReportServer
from agent.tray.app import ICON_COLOUR
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("Xvfb", "trayer", "xdotool")),
    reason="needs xvfb, trayer and xdotool (installed by `make test` as root)",
)


def _grab(display: str):
    from PIL import ImageGrab

    return ImageGrab.grab(xdisplay=display)


def _count_colour(image, colour: tuple[int, int, int]) -> int:
    rgb = image.convert("RGB")
    pixels = rgb.get_flattened_data() if hasattr(rgb, "get_flattened_data") else rgb.getdata()
    return sum(1 for pixel in pixels if tuple(pixel) == colour)


@pytest.fixture
def display(tmp_path: Path) -> Iterator[str]:
    # -displayfd lets Xvfb pick a free display number and tell us which one.
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    procs = [xvfb]
    try:
        with os.fdopen(read_fd) as pipe:
            name = ":" + pipe.readline().strip()
        assert name != ":", "Xvfb did not start"
        env = {**os.environ, "DISPLAY": name}
        tray_host = subprocess.Popen(
            [
                "trayer",
                "--edge",
                "top",
                "--align",
                "right",
                "--widthtype",
                "pixel",
                "--width",
                "200",
                "--height",
                "40",
                "--transparent",
                "false",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(tray_host)
        # The icon can only dock once the tray host owns the system-tray selection: wait for that.
        deadline = time.monotonic() + 30
        while not _tray_selection_owned(name):
            assert tray_host.poll() is None, "the tray host (trayer) exited"
            assert time.monotonic() < deadline, "the tray host (trayer) never took the system tray"
            time.sleep(0.1)
        yield name
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=10)


def _tray_selection_owned(display_name: str) -> bool:
    import Xlib.display
    import Xlib.X

    display = Xlib.display.Display(display_name)
    try:
        atom = display.intern_atom(f"_NET_SYSTEM_TRAY_S{display.get_default_screen()}")
        return display.get_selection_owner(atom) != Xlib.X.NONE
    finally:
        display.close()


def _start_tray(display: str, socket_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DISPLAY": display, "TRIPKEY_TRAY_BACKEND": "xorg"}
    code = (
        "import sys; from pathlib import Path; from agent.tray.app import main; "
        f"sys.exit(main(Path({str(socket_path)!r}), show_now={'--show' in extra}))"
    )
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO_ROOT)


def test_icon_appears_in_the_system_tray(display: str, tmp_path: Path) -> None:
    tray = _start_tray(display, tmp_path / "sr.sock")
    try:
        deadline = time.monotonic() + 30
        while True:
            shot = _grab(display)
            if _count_colour(shot.crop((600, 0, 800, 40)), ICON_COLOUR) > 50:
                break
            assert tray.poll() is None, "tray exited"
            assert time.monotonic() < deadline, "the icon never appeared in the tray area"
            time.sleep(0.3)
        shot.save(tmp_path / "tray.png")
        # Only in the tray: nowhere else on the screen.
        assert _count_colour(shot.crop((0, 40, 800, 600)), ICON_COLOUR) == 0

        # A click on the icon opens the explanation.
        env = {**os.environ, "DISPLAY": display}
        icon = subprocess.run(
            ["xdotool", "search", "--name", "click for details"], env=env, capture_output=True, text=True
        ).stdout.split()[0]
        click = ["xdotool", "mousemove", "--window", icon, "12", "19", "click", "1"]
        subprocess.run(click, env=env, check=True)
        opened = subprocess.run(
            ["xdotool", "search", "--sync", "--name", "Security tripwire on this computer"],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert opened.stdout.split(), "clicking the icon did not open the explanation"
    finally:
        tray.terminate()
        tray.wait(timeout=10)


def test_explanation_window_sends_a_self_report(display: str, tmp_path: Path) -> None:
    received: list[SelfReport] = []
    got = threading.Event()
    server = SelfReportServer(tmp_path / "sr.sock", lambda r: (received.append(r), got.set()))
    server.start()
    tray = _start_tray(display, server.socket_path, "--show")
    env = {**os.environ, "DISPLAY": display}
    try:
        found = subprocess.run(
            ["xdotool", "search", "--sync", "--name", "Security tripwire on this computer"],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        )
        window = found.stdout.split()[0]
        time.sleep(0.5)
        _grab(display).save(tmp_path / "dialog.png")
        subprocess.run(["xdotool", "windowfocus", "--sync", window, "key", "Return"], env=env, timeout=10)
        assert got.wait(10), "the self-report never reached the agent socket"
        assert received[0].uid == os.getuid()
        assert received[0].note == "I opened it by mistake"
    finally:
        tray.terminate()
        tray.wait(timeout=10)
        server.stop()
