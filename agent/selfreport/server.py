"""Self-reports from the device's users ("I opened it by mistake"), over a local Unix socket.

The tray app runs as the user; the agent runs as root and holds the device token. The tray never
talks to the issuer: it writes one JSON line to the agent's socket, and the agent reads the caller's
uid from the kernel (SO_PEERCRED), so a self-report cannot claim to come from another user; the
agent then binds it only to files planted for that uid (agent.service), never to another user's.
Windows has no SO_PEERCRED: there the transport is a named pipe and the caller is identified by
impersonating it (agent.selfreport.winpipe); the server loop below is the same.

The socket faces every local user, so whatever one sends must not silence it for the others:

* each connection is served on its own thread, with a budget of MAX_REQUEST_BYTES and
  REQUEST_SECONDS in all (a client dripping one byte a second is cut off, not waited for);
* at most MAX_CLIENTS connections are served at once, and at most MAX_CLIENTS_PER_UID per user, so
  one user opening many connections leaves room for everyone else; a connection over the cap gets
  a "busy" answer at once;
* any input (nested brackets that overflow the JSON parser, bytes that are not UTF-8, a failing
  report handler) ends that one connection with a clear error; the accept loop survives it, and
  if it ever stops anyway `health()` says so (status, heartbeat) and `ensure_running()` restarts it.
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
# Each connection gets this long in all (not per recv): a local user dripping one byte a second
# must not hold a slot for long.
REQUEST_SECONDS = 2.0
MAX_CLIENTS = 32
MAX_CLIENTS_PER_UID = 4
_BUSY_SEND_SECONDS = 0.2


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
    if osflags.WINDOWS:  # an agent.selfreport.winpipe.PipeConnection: the client's token, by impersonation
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
        from agent.selfreport import winpipe

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
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"request is not UTF-8 (byte {exc.start})") from None
    try:
        body = json.loads(text)
    except RecursionError:
        raise ValueError("request is not a flat JSON object (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of thousands of digits
        raise ValueError(f"request is not JSON: {exc}") from None
    if not isinstance(body, dict) or set(body) - {"note", "path"}:
        raise ValueError('request must be an object with only "note" and "path"')
    note = body.get("note", "")
    path = body.get("path")
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise ValueError(f"note must be a string of at most {MAX_NOTE_CHARS} characters")
    if path is not None and not isinstance(path, str):
        raise ValueError("path must be a string")
    note = printable(note.strip()) or "I opened it by mistake"
    return note, printable(path) if path is not None else None


def _answer(conn: socket.socket, ok: bool, error: str | None = None) -> None:
    body = {"ok": True} if ok else {"ok": False, "error": error}
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(body).encode() + b"\n")


class SelfReportServer:
    """Accepts self-reports on a Unix socket any local user may connect to."""

    def __init__(
        self,
        socket_path: Path,
        on_report: Callable[[SelfReport], None],
        *,
        max_clients: int = MAX_CLIENTS,
        max_clients_per_uid: int = MAX_CLIENTS_PER_UID,
        request_seconds: float = REQUEST_SECONDS,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.on_report = on_report
        self.max_clients = max_clients
        self.max_clients_per_uid = max_clients_per_uid
        self.request_seconds = request_seconds
        self._sock: Any = None  # a Unix socket, or on Windows an agent.selfreport.winpipe.PipeListener
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[int, int] = {}  # uid -> connections being served
        self.error: str | None = None  # why the accept loop stopped, if it did
        self.last_error: str | None = None  # ... the last time it stopped (kept after a restart)
        self.counts = {"served": 0, "refused": 0, "busy": 0, "restarts": 0}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if osflags.WINDOWS:
            from agent.selfreport import winpipe

            path = str(self.socket_path)
            listener = winpipe.PipeListener(path if winpipe.is_pipe_name(path) else winpipe.DEFAULT_PIPE)
            listener.listen()  # fails loudly if another process holds the pipe name
            self._sock = listener
            self._stop.clear()
            self.error = None
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
        sock.listen(64)
        sock.settimeout(0.5)
        self._sock = sock
        self._stop.clear()
        self.error = None
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

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._sock is not None

    def ensure_running(self) -> bool:
        """Restart the server if its accept loop stopped; True if it is running afterwards."""
        if self.running or self._stop.is_set():
            return self.running
        self.last_error = self.error or "the accept loop stopped"
        self._count("restarts")
        log.error("self-report server was down (%s); restarting it", self.last_error)
        with contextlib.suppress(OSError):
            if self._sock is not None:
                self._sock.close()
        self._sock = None
        try:
            self.start()
        except OSError as exc:
            self.error = f"cannot listen on {self.socket_path}: {exc}"
            log.error("self-report server cannot restart: %s", self.error)
        return self.running

    def health(self) -> dict[str, Any]:
        """For status and the heartbeat: is the socket answering, and what has it done."""
        return {
            "enabled": True,
            "running": self.running,
            "socket": str(self.socket_path),
            "error": None if self.running else (self.error or "not running"),
            "last_error": self.last_error,
            **dict(self.counts),
        }

    # ------------------------------------------------------------------ serving

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                sock = self._sock
                if sock is None:
                    return
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                except OSError as exc:
                    if not self._stop.is_set():
                        self.error = f"accept failed: {exc}"
                        log.error("self-report socket stopped: %s", self.error)
                    return
                self._dispatch(conn)
        except BaseException as exc:  # never silently: health() reports it, ensure_running() restarts
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("self-report server stopped")

    def _dispatch(self, conn: socket.socket) -> None:
        try:
            pid, uid, _gid = _peer_credentials(conn)
        except OSError as exc:
            log.warning("self-report refused: no peer credentials (%s)", exc)
            conn.close()
            return
        with self._lock:
            total = sum(self._active.values())
            mine = self._active.get(uid, 0)
            admitted = total < self.max_clients and mine < self.max_clients_per_uid
            if admitted:
                self._active[uid] = mine + 1
        if not admitted:
            self._count("busy")
            conn.settimeout(_BUSY_SEND_SECONDS)  # never let a full client buffer block the accept loop
            _answer(conn, False, "the agent is busy with other reports; try again in a few seconds")
            conn.close()
            return
        try:
            threading.Thread(
                target=self._client, args=(conn, pid, uid), name=f"selfreport-{uid}", daemon=True
            ).start()
        except RuntimeError:  # cannot start a thread: release the slot, answer, go on
            self._release(uid)
            _answer(conn, False, "the agent cannot take a report right now")
            conn.close()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _release(self, uid: int) -> None:
        with self._lock:
            left = self._active.get(uid, 1) - 1
            if left > 0:
                self._active[uid] = left
            else:
                self._active.pop(uid, None)

    def _client(self, conn: socket.socket, pid: int, uid: int) -> None:
        try:
            with conn:
                self._handle(conn, pid, uid)
        except BaseException:  # one client's trouble ends its own thread only
            log.exception("self-report connection failed")
        finally:
            self._release(uid)

    def _read(self, conn: socket.socket) -> bytes:
        deadline = time.monotonic() + self.request_seconds
        data = b""
        while b"\n" not in data:
            if len(data) > MAX_REQUEST_BYTES:
                raise ValueError(f"request larger than {MAX_REQUEST_BYTES} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ValueError(f"request not complete within {self.request_seconds:g} s")
            conn.settimeout(remaining)
            try:
                chunk = conn.recv(1024)
            except TimeoutError:
                raise ValueError(f"request not complete within {self.request_seconds:g} s") from None
            if not chunk:
                break
            data += chunk
        return data.split(b"\n", 1)[0]

    def _handle(self, conn: socket.socket, pid: int, uid: int) -> None:
        try:
            note, path = parse_request(self._read(conn).strip())
            self.on_report(SelfReport(utcnow(), uid, _user_name(uid), pid, note, path))
        except ValueError as exc:  # what the sender should read: bad request, not your file, too soon
            self._count("refused")
            log.warning("self-report from uid %d refused: %s", uid, exc)
            _answer(conn, False, str(exc))
            return
        except OSError as exc:
            self._count("refused")
            log.warning("self-report from uid %d failed: %s", uid, exc)
            return
        except Exception:
            self._count("refused")
            log.exception("self-report from uid %d could not be recorded", uid)
            _answer(conn, False, "the agent could not record the report (see its log)")
            return
        self._count("served")
        _answer(conn, True)


def send_self_report(
    socket_path: Path = DEFAULT_SOCKET, note: str = "", path: str | None = None, timeout: float = 3.0
) -> None:
    """Tell the local agent that this user opened the planted file on purpose or by mistake."""
    request = json.dumps({"note": note, "path": path} if path else {"note": note}).encode() + b"\n"
    if osflags.WINDOWS:
        from agent.selfreport import winpipe

        name = str(socket_path) if winpipe.is_pipe_name(str(socket_path)) else winpipe.DEFAULT_PIPE
        try:
            _check_answer(winpipe.request(name, request, timeout))
        except OSError as exc:
            raise SelfReportError(f"the Tripkey agent is not reachable at {name}: {exc}") from None
        return
    answer = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(request)
            while b"\n" not in answer and len(answer) < MAX_REQUEST_BYTES:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except OSError as exc:
        raise SelfReportError(f"the Tripkey agent is not reachable at {socket_path}: {exc}") from None
    _check_answer(answer)


def _check_answer(answer: bytes) -> None:
    try:
        reply = json.loads(answer.decode())
    except (UnicodeDecodeError, ValueError):
        raise SelfReportError("the agent sent an unreadable answer") from None
    if not isinstance(reply, dict):
        raise SelfReportError("the agent sent an unreadable answer")
    if not reply.get("ok"):
        raise SelfReportError(f"the agent refused the report: {printable(str(reply.get('error')))}")
