"""Process context for audit records, from /proc at delivery time (the audit record itself names
only the reader's pid, uid, exe and a 128-byte PROCTITLE). Synchronous and stateless."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import psutil

from agent.events.bounds import MAX_ANCESTORS
from agent.events.model import ProcessInfo

START_SLACK = 1.0  # seconds of clock slack when checking that a pid was not reused


def utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)


def live_process(pid: int, event_ts: float) -> psutil.Process | None:
    """The process `pid` if it is still the one that existed at `event_ts` (not a reused pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.create_time() > event_ts + START_SLACK:
            return None
        return proc
    except psutil.Error:
        return None


def ancestors_of(ppid: int | None, event_ts: float) -> tuple[ProcessInfo, ...]:
    """Parent first, up to pid 1, from /proc; an exited (or reused) pid ends the chain as pid only."""
    chain: list[ProcessInfo] = []
    pid = ppid
    while pid and len(chain) < MAX_ANCESTORS:
        proc = live_process(pid, event_ts)
        if proc is None:
            chain.append(ProcessInfo(pid=pid))  # exited: exe/cmdline unknown
            break
        try:
            with proc.oneshot():
                parent = proc.ppid()
                info = ProcessInfo(
                    pid=pid,
                    exe=proc_field(proc.exe),
                    cmdline=tuple(proc_field(proc.cmdline) or ()),
                    uid=proc.uids().real,
                )
        except psutil.Error:
            chain.append(ProcessInfo(pid=pid))
            break
        chain.append(info)
        if pid == 1:
            break
        pid = parent
    return tuple(chain)


def proc_field(getter: Callable[[], Any]) -> Any:
    """One /proc field, None when the kernel refuses it (e.g. exe of a protected pid 1)."""
    try:
        return getter() or None
    except (psutil.AccessDenied, psutil.ZombieProcess):
        return None
