"""Capture a process's context from /proc quickly (while a fanotify permission event holds it).

Raw /proc reads rather than psutil: this runs once per held reader, and each psutil.Process
attribute costs extra syscalls and object churn. Everything is best effort per field: a process
that exits mid-capture yields None/() for what could no longer be read, never an exception.

With a pidfd (FAN_REPORT_PIDFD) the capture is tied to *that* process: we open /proc/<pid> as a
directory fd, then ask the pidfd whether the process is still alive. If it is, the pid cannot have
been recycled, so the directory fd names the same process and every later read goes through it
(a stale /proc/<pid> dirfd of an exited process fails instead of reading a newcomer's data).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import signal
import time
from collections.abc import Callable
from typing import TypeVar

from agent.events.bounds import MAX_ANCESTORS
from agent.events.model import ProcessInfo, user_name

T = TypeVar("T")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True, slots=True)
class ProcContext:
    """What could be read about one process; every field but pid may be missing."""

    pid: int
    ppid: int | None = None
    exe: str | None = None
    cmdline: tuple[str, ...] = ()
    uid: int | None = None  # real uid: the user who ran it (a setuid program keeps the caller's)
    user: str | None = None
    start_time: dt.datetime | None = None
    cwd: str | None = None
    ancestors: tuple[ProcessInfo, ...] = ()  # parent first, up to pid 1
    verified: bool = False  # a pidfd proved the /proc data belongs to the reporting process
    gone: bool = False  # the process had exited before its /proc entry could be read


@functools.cache
def boot_time() -> float:
    """Epoch seconds at boot, with sub-second precision (the /proc/stat btime is whole seconds)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def _read(name: str, dir_fd: int, limit: int = 65536) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def _readlink(name: str, dir_fd: int) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return None


def _parse_stat(raw: bytes | None) -> tuple[int | None, int | None]:
    """(ppid, starttime ticks) from /proc/<pid>/stat; comm may hold spaces and parentheses."""
    if not raw:
        return None, None
    try:
        fields = raw[raw.rindex(b")") + 2 :].split()
        return int(fields[1]), int(fields[19])
    except (ValueError, IndexError):
        return None, None


def _parse_uid(raw: bytes | None) -> int | None:
    if not raw:
        return None
    for line in raw.splitlines():
        if line.startswith(b"Uid:"):
            try:
                return int(line.split()[1])
            except (ValueError, IndexError):
                return None
    return None


def _parse_cmdline(raw: bytes | None) -> tuple[str, ...]:
    if not raw:
        return ()
    if raw.endswith(b"\0"):  # exactly one terminator: a trailing empty argument is an argument
        raw = raw[:-1]
    return tuple(os.fsdecode(part) for part in raw.split(b"\0"))


def _start_time(ticks: int | None) -> dt.datetime | None:
    if ticks is None:
        return None
    return dt.datetime.fromtimestamp(boot_time() + ticks / _CLK_TCK, tz=dt.UTC)


def pidfd_alive(pidfd: int) -> bool:
    """True while the process behind the pidfd has not exited (a zombie counts as not reaped)."""
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return False
    return True


def _open_proc_dir(pid: int) -> int | None:
    try:
        return os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def read_process(pid: int, dir_fd: int) -> tuple[ProcessInfo, int | None, int | None]:
    """One process's (exe, cmdline, uid) plus (ppid, starttime ticks), read through its /proc dirfd."""
    ppid, ticks = _parse_stat(_read("stat", dir_fd))
    info = ProcessInfo(
        pid=pid,
        exe=_readlink("exe", dir_fd),
        cmdline=_parse_cmdline(_read("cmdline", dir_fd)),
        uid=_parse_uid(_read("status", dir_fd, 4096)),
    )
    return info, ppid, ticks


def ancestors_of(ppid: int | None, max_depth: int = MAX_ANCESTORS) -> tuple[ProcessInfo, ...]:
    """The parent chain, parent first, up to pid 1 (or as far as it can be read)."""
    chain: list[ProcessInfo] = []
    seen: set[int] = set()
    pid = ppid
    while pid and pid not in seen and len(chain) < max_depth:
        seen.add(pid)
        dir_fd = _open_proc_dir(pid)
        if dir_fd is None:
            chain.append(ProcessInfo(pid=pid))
            break
        try:
            info, next_pid, _ticks = read_process(pid, dir_fd)
        finally:
            os.close(dir_fd)
        chain.append(info)
        if pid == 1:
            break
        pid = next_pid
    return tuple(chain)


def capture(pid: int, pidfd: int | None = None, with_ancestors: bool = True) -> ProcContext:
    """Read pid's context now. pidfd (optional, not closed here) ties the data to that process."""
    dir_fd = _open_proc_dir(pid)
    if dir_fd is None:
        return ProcContext(pid=pid, gone=True)
    try:
        verified = False
        if pidfd is not None and pidfd >= 0:
            if not pidfd_alive(pidfd):
                # Exited and possibly reaped: /proc/<pid> may already be another process.
                return ProcContext(pid=pid, gone=True)
            verified = True
        info, ppid, ticks = read_process(pid, dir_fd)
        cwd = _readlink("cwd", dir_fd)
    finally:
        os.close(dir_fd)
    if ticks is None and not info.cmdline and info.exe is None:
        return ProcContext(pid=pid, gone=True)
    return ProcContext(
        pid=pid,
        ppid=ppid,
        exe=info.exe,
        cmdline=info.cmdline,
        uid=info.uid,
        user=user_name(info.uid),
        start_time=_start_time(ticks),
        cwd=cwd,
        ancestors=ancestors_of(ppid) if with_ancestors else (),
        verified=verified,
    )


def capture_with_psutil(pid: int) -> ProcContext:
    """Slower equivalent through psutil, for callers that already hold no pidfd (e.g. audit)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            ppid = proc.ppid()
            uid = proc.uids().real
            start = dt.datetime.fromtimestamp(proc.create_time(), tz=dt.UTC)
            exe = _safe(proc.exe)
            cmdline = tuple(_safe(proc.cmdline) or ())
            cwd = _safe(proc.cwd)
    except psutil.Error:
        return ProcContext(pid=pid, gone=True)
    return ProcContext(
        pid=pid,
        ppid=ppid,
        exe=exe or None,
        cmdline=cmdline,
        uid=uid,
        user=user_name(uid),
        start_time=start,
        cwd=cwd,
        ancestors=ancestors_of(ppid),
    )


def _safe(getter: Callable[[], T]) -> T | None:
    import psutil

    try:
        return getter()
    except psutil.Error:
        return None
