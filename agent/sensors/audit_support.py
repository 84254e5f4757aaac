"""Support for the audit sensor: auditctl status, netlink framing, process context from /proc.

Kept apart from the sensor class so each is small; everything here is synchronous and stateless.
"""

from __future__ import annotations

import datetime as dt
import struct
import subprocess
from collections.abc import Callable
from typing import Any

import psutil

from agent.sensors.audit_parse import AuditRecord, record_from_netlink
from agent.sensors.base import ProcessInfo, SensorError
from agent.sensors.bounds import MAX_ANCESTORS

_NLMSG_HDR = struct.Struct("=IHHII")
START_SLACK = 1.0  # seconds of clock slack when checking that a pid was not reused


def netlink_records(data: bytes) -> list[AuditRecord]:
    out = []
    offset = 0
    while offset + _NLMSG_HDR.size <= len(data):
        length, msg_type, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, offset)
        if length < _NLMSG_HDR.size:
            break
        record = record_from_netlink(msg_type, data[offset + _NLMSG_HDR.size : offset + length])
        if record is not None:
            out.append(record)
        offset += (length + 3) & ~3
    return out


def audit_status(auditctl: str) -> dict[str, int]:
    try:
        result = subprocess.run([auditctl, "-s"], capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        raise SensorError(f"{auditctl} -s could not run: {exc}") from exc
    if result.returncode != 0:
        raise SensorError(f"{auditctl} -s failed: {(result.stderr or result.stdout).strip()}")
    status: dict[str, int] = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            status[parts[0]] = int(parts[1])
    if "enabled" not in status:
        raise SensorError(f"{auditctl} -s printed no status: {result.stdout.strip()[:200]}")
    return status


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
