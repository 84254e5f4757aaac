"""Ancestors' exe and argv for read records: the kernel's process cache first, /proc second.

A read record names each ancestor by (tgid, start time) and the exec stamp of its cache entry.
This module turns that into a ProcessInfo:

* kernel cache hit: exe/argv as exec stored them (a pinned entry of a process that has exited
  since is deleted once read: the kernel keeps it only for us);
* miss (the process started before the agent, or its entry was lost): /proc/<pid>, but only
  if /proc/<pid>/stat shows the same start time, read through one directory fd so a pid reused
  mid-read fails instead of lending another process's data. Such a result is "not complete":
  the event is marked partial. A miss whose process is gone is counted as unfilled.

Results are remembered per (pid, start time, exec stamp): pid reuse gives a new start time, and
an exec gives a new stamp, so a remembered answer never names the wrong image. Single-threaded:
only the sensor's poll thread uses it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from collections.abc import Iterator
from typing import Protocol

from agent.events.model import ProcessInfo
from agent.sensors import _procinfo as procinfo
from agent.sensors._ebpf_records import (
    F_ARGS_FAULT,
    F_EXE_CUT,
    F_EXE_DELETED,
    NS_PER_TICK,
    PROC_KEY,
    PROC_SIZE,
    Ancestor,
    RawProc,
    decode_path,
    now_boot_ns,
    parse_cmdline,
    parse_proc,
    proc_key,
)

log = logging.getLogger(__name__)

EXITED_GRACE_NS = 10 * 1_000_000_000  # records naming an exited entry are consumed well within this


class ProcMap(Protocol):
    """What the cache needs of the kernel's `procs` map (a libbpf Map, or a dict in unit tests)."""

    def lookup(self, key: bytes, value_size: int) -> bytes | None: ...
    def delete(self, key: bytes) -> bool: ...
    def keys(self, key_size: int) -> Iterator[bytes]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Known:
    exe: str | None
    cmdline: tuple[str, ...]
    complete: bool  # captured by the kernel at exec (not /proc later), nothing cut


@dataclasses.dataclass
class CacheStats:
    kernel_hits: int = 0
    filled_from_proc: int = 0  # cache misses answered by /proc (event marked partial)
    unfilled: int = 0  # misses whose process was gone: pid and uid only
    completed_from_proc: int = 0  # argv/exe cut by the kernel's buffers, completed from /proc
    exited_deleted: int = 0  # pinned entries of exited processes deleted after use or by sweep
    dead_swept: int = 0  # entries of processes whose exit was never seen (fork race)


def read_proc_verified(pid: int, start_ns: int) -> tuple[ProcessInfo, int | None] | None:
    """(ProcessInfo, ppid) from /proc/<pid> if it is still the process that started at start_ns."""
    try:
        dir_fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info, ppid, ticks = procinfo.read_process(pid, dir_fd)
    finally:
        os.close(dir_fd)
    if ticks is None or ticks != start_ns // NS_PER_TICK:
        return None  # gone, or the pid now belongs to another process
    return info, ppid


def proc_alive(pid: int, start_ns: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        ticks = int(raw[raw.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return False
    return ticks == start_ns // NS_PER_TICK


class ProcessCache:
    def __init__(self, kernel: ProcMap | None, limit: int = 8192) -> None:
        self._kernel = kernel
        self._known: collections.OrderedDict[tuple[int, int, int], Known] = collections.OrderedDict()
        self._limit = limit
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._known)

    def ancestor(self, anc: Ancestor) -> tuple[ProcessInfo, bool]:
        """The ancestor as a ProcessInfo (uid as seen at open time), and whether it is complete."""
        key = (anc.tgid, anc.start_ns, anc.exec_ns)
        known = self._known.get(key)
        if known is None:
            known = self._resolve(anc)
            if known is None:
                self.stats.unfilled += 1
                return ProcessInfo(pid=anc.tgid, uid=anc.uid), False
            self._remember(key, known)
        else:
            self._known.move_to_end(key)
        return ProcessInfo(pid=anc.tgid, exe=known.exe, cmdline=known.cmdline, uid=anc.uid), known.complete

    def _remember(self, key: tuple[int, int, int], known: Known) -> None:
        self._known[key] = known
        if len(self._known) > self._limit:
            self._known.popitem(last=False)

    def _resolve(self, anc: Ancestor) -> Known | None:
        entry = self.kernel_entry(anc.tgid, anc.start_ns) if anc.exec_ns else None
        if entry is not None and entry.exec_ns == anc.exec_ns:
            self.stats.kernel_hits += 1
            known = self._from_entry(anc.tgid, anc.start_ns, entry)
            if entry.exit_ns:  # kept only until we had read it
                self._delete(anc.tgid, anc.start_ns)
            return known
        found = read_proc_verified(anc.tgid, anc.start_ns)
        if found is None:
            return None
        self.stats.filled_from_proc += 1
        info = found[0]
        # Complete: /proc was read for the same (pid, start time), so it is this process. Ancestors
        # that predate the agent (pid 1, the session's daemons) are the rule, not a gap: counted in
        # filled_from_proc, but they do not make a read partial.
        return Known(exe=info.exe, cmdline=info.cmdline, complete=True)

    def _from_entry(self, tgid: int, start_ns: int, entry: RawProc) -> Known:
        exe = decode_path(
            entry.exe, cut=bool(entry.flags & F_EXE_CUT), deleted=bool(entry.flags & F_EXE_DELETED)
        )
        cmdline = parse_cmdline(entry.args)
        complete = True
        cut_args = entry.args_total > len(entry.args) or entry.flags & F_ARGS_FAULT
        if cut_args or entry.flags & F_EXE_CUT:
            found = read_proc_verified(tgid, start_ns)
            if found is not None:
                self.stats.completed_from_proc += 1
                exe = found[0].exe if entry.flags & F_EXE_CUT else exe
                cmdline = found[0].cmdline if cut_args else cmdline
            else:
                complete = False
        return Known(exe=exe, cmdline=cmdline, complete=complete)

    def kernel_entry(self, tgid: int, start_ns: int) -> RawProc | None:
        if self._kernel is None:
            return None
        raw = self._kernel.lookup(proc_key(tgid, start_ns), PROC_SIZE)
        return None if raw is None else parse_proc(raw)

    def _delete(self, tgid: int, start_ns: int) -> None:
        if self._kernel is not None and self._kernel.delete(proc_key(tgid, start_ns)):
            self.stats.exited_deleted += 1

    def sweep(self, now_ns: int | None = None, check_alive: bool = True) -> None:
        """Delete kernel entries nobody will read: pinned ones whose process exited more than
        EXITED_GRACE_NS ago (their records are long consumed), and, with check_alive (one
        /proc/<pid>/stat read per entry, so less often), entries of processes that no longer
        exist although no exit was seen (a child that exited before its fork was traced)."""
        if self._kernel is None:
            return
        now_ns = now_boot_ns() if now_ns is None else now_ns
        for key in list(self._kernel.keys(PROC_KEY.size)):
            raw = self._kernel.lookup(key, PROC_SIZE)
            if raw is None:
                continue
            tgid, _pad, start_ns = PROC_KEY.unpack(key)
            entry = parse_proc(raw)
            if entry.exit_ns:
                if now_ns - entry.exit_ns > EXITED_GRACE_NS and self._kernel.delete(key):
                    self.stats.exited_deleted += 1
            elif check_alive and not proc_alive(tgid, start_ns) and self._kernel.delete(key):
                self.stats.dead_swept += 1
