"""Self-report channel between the per-user tray and the root agent (headless: no pystray)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.selfreport.server import (
    MAX_REQUEST_BYTES,
    REQUEST_SECONDS,
    SelfReport,
    SelfReportError,
    SelfReportServer,
    parse_request,
    send_self_report,
)


@pytest.fixture
def server(tmp_path: Path):
    received: list[SelfReport] = []
    got = threading.Event()

    def on_report(report: SelfReport) -> None:
        received.append(report)
        got.set()

    srv = SelfReportServer(tmp_path / "run" / "sr.sock", on_report)
    srv.start()
    yield srv, received, got
    srv.stop()


def test_report_carries_kernel_identity_of_the_sender(server) -> None:
    srv, received, got = server
    send_self_report(srv.socket_path, note="oops", path="/home/a/.aws/credentials")
    assert got.wait(5)
    report = received[0]
    assert report.uid == os.getuid()
    assert report.pid == os.getpid()
    assert report.note == "oops"
    assert report.path == "/home/a/.aws/credentials"


def test_socket_is_reachable_by_every_local_user(server) -> None:
    srv, _, _ = server
    assert (os.stat(srv.socket_path).st_mode & 0o777) == 0o666


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1,2]", b'{"note": 5}', b'{"note": "x", "uid": 0}', b'{"note": "' + b"a" * 600 + b'"}'],
)
def test_malformed_requests_are_refused_with_a_reason(server, payload: bytes) -> None:
    srv, received, _ = server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(srv.socket_path))
        sock.sendall(payload + b"\n")
        answer = sock.recv(4096)
    assert b'"ok": false' in answer
    assert received == []


def test_a_request_cannot_claim_another_user() -> None:
    with pytest.raises(ValueError, match="only"):
        parse_request(b'{"note": "hi", "user": "root"}')


def test_oversized_request_is_refused() -> None:
    with pytest.raises(ValueError, match="larger"):
        parse_request(b"{" + b" " * MAX_REQUEST_BYTES + b"}")


def test_unreachable_agent_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SelfReportError, match="not reachable"):
        send_self_report(tmp_path / "missing.sock", note="x", timeout=1)


def test_tray_modules_never_load_pystray_in_headless_use() -> None:
    modules = "agent.tray.app, agent.tray.backend, agent.selfreport.server"
    code = f"import sys, {modules}; print('pystray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_a_slow_sender_cannot_hold_the_socket_past_the_request_budget(server) -> None:
    """One byte at a time, each within the per-recv timeout: the whole request still has a budget."""
    srv, received, got = server
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(str(srv.socket_path))
    stop = threading.Event()

    def drip() -> None:
        with contextlib.suppress(OSError):
            while not stop.wait(0.3):
                slow.sendall(b" ")

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        started = time.monotonic()
        send_self_report(srv.socket_path, note="honest mistake", timeout=REQUEST_SECONDS + 3)
        assert got.wait(5)
        waited = time.monotonic() - started
    finally:
        stop.set()
        dripper.join(5)
        slow.close()
    assert [r.note for r in received] == ["honest mistake"]
    assert waited < REQUEST_SECONDS + 1.5  # not held for as long as the dripper keeps going
