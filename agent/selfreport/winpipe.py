r"""The self-report transport on Windows: a named pipe, and the caller's identity from the kernel.

Windows 10+ has AF_UNIX sockets but no SO_PEERCRED (and Python's socket module offers neither on
Windows), so the tray reaches the agent over `\\.\pipe\tripkey-selfreport` instead:

* The agent creates the pipe with FILE_FLAG_FIRST_PIPE_INSTANCE (if another process created it
  first, a squatter, creation fails and the agent says so) and a DACL that lets SYSTEM do anything
  and authenticated users only read and write (not create instances).
* The peer is identified by the kernel, never by the request: GetNamedPipeClientProcessId gives
  the pid; ImpersonateNamedPipeClient + OpenThreadToken + GetTokenInformation(TokenUser) give the
  account SID (then RevertToSelf), named DOMAIN\user by LookupAccountSid. The uid the rest of
  the agent sees is credfile.winacl.uid_for_sid(SID), the same one its planted targets carry.
* The tray opens the pipe allowing identification only (SECURITY_SQOS_PRESENT |
  SECURITY_IDENTIFICATION: the agent may learn who it is, not act as it), and checks that the
  pipe's server process runs as LocalSystem before sending anything.

`PipeListener.accept()` and `PipeConnection` mirror the socket calls selfreport's server makes
(accept with a timeout, recv, sendall, settimeout, close, peer_credentials), so selfreport keeps
one server loop. pywin32's modules are globals imported on Windows only.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from agent import osflags
from agent.credfile.winacl import SYSTEM_SID, uid_for_sid

if TYPE_CHECKING or osflags.WINDOWS:
    import ntsecuritycon
    import pywintypes
    import win32api
    import win32file
    import win32pipe
    import win32security

DEFAULT_PIPE = r"\\.\pipe\tripkey-selfreport"
# SYSTEM: all; authenticated users: read, write, attributes, synchronize (no FILE_CREATE_PIPE_INSTANCE).
PIPE_SDDL = "D:P(A;;GA;;;SY)(A;;0x00100183;;;AU)"
BUFFER = 4096
_ACCOUNT_NAMES: dict[int, str] = {}  # uid -> DOMAIN\user of the peers seen
POLL_SECONDS = 0.01
ERROR_PIPE_CONNECTED, ERROR_BROKEN_PIPE, ERROR_PIPE_BUSY = 535, 109, 231
SECURITY_SQOS_PRESENT, SECURITY_IDENTIFICATION = 0x00100000, 0x00010000
FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000


def is_pipe_name(path: str) -> bool:
    return path.replace("/", "\\").lower().startswith("\\\\.\\pipe\\")


class PipeConnection:
    """One connected client, with socket-like calls (blocking with a timeout, by polling)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.timeout: float | None = None

    def settimeout(self, seconds: float | None) -> None:
        self.timeout = seconds

    def recv(self, size: int) -> bytes:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                _data, available, _left = win32pipe.PeekNamedPipe(self.handle, 0)
            except pywintypes.error as exc:
                if exc.winerror == ERROR_BROKEN_PIPE:
                    return b""  # the client closed: end of stream
                raise OSError(exc.winerror, exc.strerror) from exc
            if available:
                _rc, data = win32file.ReadFile(self.handle, min(size, available))
                return bytes(data)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("timed out")
            time.sleep(POLL_SECONDS)

    def sendall(self, data: bytes) -> None:
        try:
            win32file.WriteFile(self.handle, data)
            win32file.FlushFileBuffers(self.handle)
        except pywintypes.error as exc:
            raise OSError(exc.winerror, exc.strerror) from exc

    def peer_credentials(self) -> tuple[int, int, int]:
        """(pid, uid, gid) of the client from the kernel, like SO_PEERCRED; gid is 0 (none on
        Windows). The account's DOMAIN\\user is remembered for account_name(uid)."""
        pid = int(win32pipe.GetNamedPipeClientProcessId(self.handle))
        win32security.ImpersonateNamedPipeClient(self.handle)
        try:
            token = win32security.OpenThreadToken(
                win32api.GetCurrentThread(), ntsecuritycon.TOKEN_QUERY, True
            )
            sid, _attributes = win32security.GetTokenInformation(token, win32security.TokenUser)
        finally:
            win32security.RevertToSelf()
        text = str(win32security.ConvertSidToStringSid(sid))
        try:
            name, domain, _kind = win32security.LookupAccountSid(None, sid)
            user = f"{domain}\\{name}" if domain else name
        except pywintypes.error:
            user = text
        uid = uid_for_sid(text)
        _ACCOUNT_NAMES[uid] = user
        return pid, uid, 0

    def close(self) -> None:
        with contextlib.suppress(pywintypes.error):
            win32pipe.DisconnectNamedPipe(self.handle)
        self.handle.Close()

    def __enter__(self) -> PipeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PipeListener:
    """The server side: accept() waits for the next client (ConnectNamedPipe), like a socket's;
    close() wakes a waiting accept() by connecting to the pipe itself, which then raises OSError."""

    def __init__(self, name: str = DEFAULT_PIPE) -> None:
        self.name = name
        self._first = True
        self._closed = False
        self._waiting: Any = None  # the instance a client will connect to next

    def settimeout(self, seconds: float) -> None:
        """Accepted for the socket-like interface: accept() waits until a client or close()."""

    def _new_instance(self) -> Any:
        attributes = win32security.SECURITY_ATTRIBUTES()
        attributes.SECURITY_DESCRIPTOR = win32security.ConvertStringSecurityDescriptorToSecurityDescriptor(
            PIPE_SDDL, win32security.SDDL_REVISION_1
        )
        mode = win32pipe.PIPE_ACCESS_DUPLEX
        if self._first:
            mode |= FILE_FLAG_FIRST_PIPE_INSTANCE
        kind = win32pipe.PIPE_TYPE_BYTE | win32pipe.PIPE_READMODE_BYTE | win32pipe.PIPE_WAIT
        kind |= win32pipe.PIPE_REJECT_REMOTE_CLIENTS
        try:
            handle = win32pipe.CreateNamedPipe(
                self.name, mode, kind, win32pipe.PIPE_UNLIMITED_INSTANCES, BUFFER, BUFFER, 0, attributes
            )
        except pywintypes.error as exc:
            squatted = " (another process created it first)" if self._first else ""
            raise OSError(exc.winerror, f"cannot create {self.name}{squatted}: {exc.strerror}") from exc
        self._first = False
        return handle

    def listen(self) -> None:
        """Create the first instance now, so a squatter is detected when the agent starts."""
        self._waiting = self._new_instance()

    def accept(self) -> tuple[PipeConnection, None]:
        if self._closed:
            raise OSError("the self-report pipe is closed")
        if self._waiting is None:
            self.listen()
        handle = self._waiting
        try:
            win32pipe.ConnectNamedPipe(handle, None)  # returns at once if a client is already there
        except pywintypes.error as exc:
            if exc.winerror != ERROR_PIPE_CONNECTED:
                raise OSError(exc.winerror, exc.strerror) from exc
        self._waiting = None
        if self._closed:  # woken by close()
            handle.Close()
            raise OSError("the self-report pipe is closed")
        self._waiting = self._new_instance()  # the next client finds an instance at once
        return PipeConnection(handle), None

    def close(self) -> None:
        self._closed = True
        if self._waiting is not None:
            try:  # wake accept(): it is blocked in ConnectNamedPipe on this instance
                wake = win32file.CreateFile(
                    self.name, win32file.GENERIC_READ, 0, None, win32file.OPEN_EXISTING, 0, None
                )
                wake.Close()
            except pywintypes.error:
                pass


def account_name(uid: int) -> str | None:
    """DOMAIN\\user of a peer whose credentials were read (PipeConnection.peer_credentials)."""
    return _ACCOUNT_NAMES.get(uid)


def request(name: str, data: bytes, timeout: float) -> bytes:
    """The tray's side: send one request, return the agent's answer (at most BUFFER bytes)."""
    access = win32file.GENERIC_READ | win32file.GENERIC_WRITE
    flags = SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION
    deadline = time.monotonic() + timeout
    while True:
        try:
            handle = win32file.CreateFile(name, access, 0, None, win32file.OPEN_EXISTING, flags, None)
            break
        except pywintypes.error as exc:
            if exc.winerror != ERROR_PIPE_BUSY or time.monotonic() >= deadline:
                raise OSError(exc.winerror, exc.strerror) from exc
            win32pipe.WaitNamedPipe(name, 100)
    connection = PipeConnection(handle)
    try:
        server_sid = _server_sid(handle)
        if server_sid != SYSTEM_SID:
            raise OSError(f"{name} is served by {server_sid}, not by the Tripkey service (LocalSystem)")
        connection.sendall(data)
        connection.settimeout(max(0.1, deadline - time.monotonic()))
        return connection.recv(BUFFER)
    finally:
        handle.Close()


def _server_sid(handle: Any) -> str:
    pid = win32pipe.GetNamedPipeServerProcessId(handle)
    process = win32api.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    try:
        token = win32security.OpenProcessToken(process, ntsecuritycon.TOKEN_QUERY)
        sid, _attributes = win32security.GetTokenInformation(token, win32security.TokenUser)
        return str(win32security.ConvertSidToStringSid(sid))
    finally:
        win32api.CloseHandle(process)


__all__ = [
    "DEFAULT_PIPE",
    "PIPE_SDDL",
    "PipeConnection",
    "PipeListener",
    "account_name",
    "is_pipe_name",
    "request",
]
