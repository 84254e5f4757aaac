"""Self-reports from the device's users ("I opened it by mistake"), over a local Unix socket.

The tray app runs as the user; the agent runs as root and holds the device token. The tray never
talks to the issuer: it writes one JSON line to the agent's socket, and the agent reads the caller's
uid from the kernel (SO_PEERCRED), so a self-report cannot claim to come from another user.
Windows has no SO_PEERCRED: there the transport is a named pipe and the caller is identified by
impersonating it (agent.winpipe); the server loop below is the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import osflags
from agent.clock import utcnow
from agent.events.bounds import printable

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/tripkey/selfreport.sock")
MAX_REQUEST_BYTES = 4096
MAX_NOTE_CHARS = 500
# One connection at a time is served, so each gets this long in all (not per recv): a local user
# dripping one byte a second must not keep every other user's report waiting.
REQUEST_SECONDS = 2.0


class SelfReportError(Exception):
    """A self-report could not be delivered to the agent (message says why)."""


@dataclasses.dataclass(frozen=True, slots=True)
class SelfReport:
    time: dt.datetime
    uid: int
    user: str
    pid: int
    note: str
    path: str | None = None


# macOS <sys/un.h>: SOL_LOCAL, LOCAL_PEERCRED (a struct xucred), LOCAL_PEERPID (a pid_t).
_SOL_LOCAL, _LOCAL_PEERCRED, _LOCAL_PEERPID = 0, 0x001, 0x002
_XUCRED = struct.Struct("IIh16I")  # cr_version, cr_uid, cr_ngroups, cr_groups[16] (native alignment)


def _peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the connected process, as the kernel knows them."""
    if osflags.WINDOWS:  # an agent.winpipe.PipeConnection: the client's token, by impersonation
        pipe: Any = conn
        return pipe.peer_credentials()  # type: ignore[no-any-return, unused-ignore]
    if osflags.LINUX:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return pid, uid, gid
    if osflags.MACOS:  # not exercised on Linux CI: see packaging/macos/README.md
        _version, uid, _ngroups, *groups = _XUCRED.unpack(
            conn.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, _XUCRED.size)
        )
        pid = struct.unpack("i", conn.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, struct.calcsize("i")))[0]
        return pid, uid, groups[0]
    raise OSError("self-reports need a Unix socket with peer credentials (Linux, macOS)")


def _user_name(uid: int) -> str:
    if osflags.WINDOWS:
        from agent import winpipe

        return winpipe.account_name(uid) or str(uid)
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name  # type: ignore[attr-defined, unused-ignore]
    except KeyError:
        return str(uid)


def parse_request(data: bytes) -> tuple[str, str | None]:
    """Validate one request line; returns (note, path). Raises ValueError with a clear message."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"request is not JSON: {exc}") from None
    if not isinstance(body, dict) or set(body) - {"note", "path"}:
        raise ValueError('request must be an object with only "note" and "path"')
    note = body.get("note", "")
    path = body.get("path")
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise ValueError(f"note must be a string of at most {MAX_NOTE_CHARS} characters")
    if path is not None and not isinstance(path, str):
        raise ValueError("path must be a string")
    return printable(note.strip()) or "I opened it by mistake", path


class SelfReportServer:
    """Accepts self-reports on a Unix socket any local user may connect to."""

    def __init__(self, socket_path: Path, on_report: Callable[[SelfReport], None]) -> None:
        self.socket_path = Path(socket_path)
        self.on_report = on_report
        self._sock: Any = None  # a Unix socket, or on Windows an agent.winpipe.PipeListener
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        if osflags.WINDOWS:
            from agent import winpipe

            path = str(self.socket_path)
            listener = winpipe.PipeListener(path if winpipe.is_pipe_name(path) else winpipe.DEFAULT_PIPE)
            listener.listen()  # fails loudly if another process holds the pipe name
            self._sock = listener
            self._thread = threading.Thread(target=self._serve, name="selfreport", daemon=True)
            self._thread.start()
            return
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            if self.socket_path.is_socket():
                self.socket_path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.socket_path))
        # Any local user may report; who they are comes from SO_PEERCRED, not from the request.
        os.chmod(self.socket_path, 0o666)
        sock.listen(16)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="selfreport", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if osflags.WINDOWS and self._sock:  # a pipe's accept() waits for a client: close() wakes it
            self._sock.close()
        if self._thread:
            self._thread.join(timeout=5)
        if self._sock:
            self._sock.close()
            self._sock = None
        if not osflags.WINDOWS:  # a pipe disappears with its last handle
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + REQUEST_SECONDS
        try:
            pid, uid, _gid = _peer_credentials(conn)
            data = b""
            while not data.endswith(b"\n") and len(data) <= MAX_REQUEST_BYTES:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ValueError(f"request not complete within {REQUEST_SECONDS:.0f} s")
                conn.settimeout(remaining)
                chunk = conn.recv(1024)
                if not chunk:
                    break
                data += chunk
            note, path = parse_request(data.strip())
            report = SelfReport(utcnow(), uid, _user_name(uid), pid, note, path)
            self.on_report(report)
            conn.sendall(b'{"ok": true}\n')
        except (ValueError, OSError) as exc:
            log.warning("self-report refused: %s", exc)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n")


def send_self_report(
    socket_path: Path = DEFAULT_SOCKET, note: str = "", path: str | None = None, timeout: float = 3.0
) -> None:
    """Tell the local agent that this user opened the planted file on purpose or by mistake."""
    request = json.dumps({"note": note, "path": path} if path else {"note": note}).encode() + b"\n"
    if osflags.WINDOWS:
        from agent import winpipe

        name = str(socket_path) if winpipe.is_pipe_name(str(socket_path)) else winpipe.DEFAULT_PIPE
        try:
            answer = winpipe.request(name, request, timeout)
        except OSError as exc:
            raise SelfReportError(f"the Tripkey agent is not reachable at {name}: {exc}") from None
        return _check_answer(answer)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(request)
            answer = sock.recv(4096)
    except OSError as exc:
        raise SelfReportError(f"the Tripkey agent is not reachable at {socket_path}: {exc}") from None
    _check_answer(answer)


def _check_answer(answer: bytes) -> None:
    try:
        reply = json.loads(answer.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SelfReportError("the agent sent an unreadable answer") from None
    if not reply.get("ok"):
        raise SelfReportError(f"the agent refused the report: {reply.get('error')}")
