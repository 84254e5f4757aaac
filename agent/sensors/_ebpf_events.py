"""Turn the eBPF sensor's read records into ReadEvents.

The reader's own exe, cwd and argv are in the record (read by the kernel at open time, while the
reader was current). Its ancestors are named by (pid, start time, exec stamp) and looked up in the
process cache (agent.sensors._ebpf_procs). What the kernel's fixed buffers cut (argv longer than
4 KiB, deep paths) is completed from /proc when the process is still the same one; otherwise the
event keeps what it has and is marked partial.

A process that opens the file again with nothing changed gets a 56-byte repeat record from the
kernel, naming its last full record: its event is that record's event (kept here) with the new
time. Building and scrubbing an event (ReadEvent.__post_init__ redacts every ancestor's argv) is
the expensive part, and readers run by the same parent share one scrubbed ancestor chain.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import operator
from collections.abc import Callable

from agent.events.model import ProcessInfo, ReadEvent, user_name
from agent.sensors._ebpf_procs import ProcessCache, read_proc_verified
from agent.sensors._ebpf_records import (
    F_ANC_CUT,
    F_ARGS_CUT,
    F_ARGS_FAULT,
    F_CWD_CUT,
    F_EXE_CUT,
    F_EXE_DELETED,
    F_NO_CWD,
    F_NO_EXE,
    REC_REPEAT,
    RawRead,
    RawRepeat,
    boot_ns_to_utc,
    decode_path,
    parse_cmdline,
    parse_read,
    parse_repeat,
    record_kind,
    start_time_utc,
)
from agent.sensors._procinfo import ancestors_of

MAX_TEMPLATES = 2048  # events of recent read records: a repeat names one sent at most 1 s before
MAX_CHAINS = 256  # recent ancestor chains kept scrubbed, shared by the readers one parent runs

_FIELDS = tuple(f.name for f in dataclasses.fields(ReadEvent))
_GET_FIELDS = operator.attrgetter(*_FIELDS)


def clone_with_time(template: ReadEvent, time: dt.datetime) -> ReadEvent:
    """A copy of an already built (already scrubbed) event with another time: 10x cheaper than
    copy.copy, and unlike dataclasses.replace it does not scrub the same strings again."""
    event = object.__new__(ReadEvent)
    for name, value in zip(_FIELDS, _GET_FIELDS(template), strict=True):
        object.__setattr__(event, name, value)
    object.__setattr__(event, "time", time)
    return event


class EventBuilder:
    """Single-threaded (the poll thread). `path_of(dev, ino)` names the planted file of an inode."""

    def __init__(self, cache: ProcessCache, path_of: Callable[[int, int], str], sensor: str) -> None:
        self.cache = cache
        self._path_of = path_of
        self._sensor = sensor
        # the events of recent read records, by (tgid, start, seq): what repeats refer to
        self._by_seq: collections.OrderedDict[tuple[int, int, int], ReadEvent] = collections.OrderedDict()
        self._chains: collections.OrderedDict[tuple[object, ...], tuple[tuple[ProcessInfo, ...], bool]] = (
            collections.OrderedDict()
        )
        self.partial = 0  # events marked partial
        self.unresolved_repeats = 0  # repeats whose read record was forgotten: named from /proc

    def event(self, data: bytes) -> ReadEvent:
        """One ring-buffer record -> its event (ValueError for a record this agent cannot read)."""
        if record_kind(data) == REC_REPEAT:
            event = self.repeat(parse_repeat(data))
        else:
            raw = parse_read(data)
            event = self.build(raw)
            self._by_seq[(raw.tgid, raw.start_ns, raw.seq)] = event
            if len(self._by_seq) > MAX_TEMPLATES:
                self._by_seq.popitem(last=False)
        self.partial += event.partial
        return event

    def repeat(self, rep: RawRepeat) -> ReadEvent:
        """The event of the read record the repeat refers to, at the repeat's time.

        The kernel sends a repeat only after that record, so it was built just before; if it has
        been forgotten since (more than MAX_TEMPLATES other readers in between), the reader is
        named from /proc, the event marked partial and counted, never dropped."""
        key = (rep.tgid, rep.start_ns, rep.seq)
        template = self._by_seq.get(key)
        if template is not None:
            self._by_seq.move_to_end(key)
            return clone_with_time(template, boot_ns_to_utc(rep.time_ns))
        self.unresolved_repeats += 1
        found = read_proc_verified(rep.tgid, rep.start_ns)
        info, ppid = found if found is not None else (ProcessInfo(pid=rep.tgid), None)
        return ReadEvent(
            time=boot_ns_to_utc(rep.time_ns),
            path=self._path_of(rep.dev, rep.ino),
            pid=rep.tgid,
            sensor=self._sensor,
            access="open",
            ppid=ppid,
            exe=info.exe,
            cmdline=info.cmdline,
            uid=info.uid,
            user=user_name(info.uid),
            start_time=start_time_utc(rep.start_ns),
            ancestors=ancestors_of(ppid) if ppid else (),
            partial=True,
        )

    def build(self, raw: RawRead) -> ReadEvent:
        flags = raw.flags
        exe = None
        if not flags & F_NO_EXE:
            exe = decode_path(raw.exe, cut=bool(flags & F_EXE_CUT), deleted=bool(flags & F_EXE_DELETED))
        cmdline = parse_cmdline(raw.args)
        partial = False
        if flags & (F_ARGS_CUT | F_ARGS_FAULT | F_EXE_CUT | F_NO_EXE):
            found = read_proc_verified(raw.tgid, raw.start_ns)  # still running: the whole thing
            if found is not None:
                self.cache.stats.completed_from_proc += 1
                exe = found[0].exe if flags & (F_EXE_CUT | F_NO_EXE) else exe
                cmdline = found[0].cmdline if flags & (F_ARGS_CUT | F_ARGS_FAULT) else cmdline
            else:
                partial = True
        # A reader the exec cache never saw started before the agent (or its entry was lost): its
        # exe and argv come from the kernel at open time, but nothing vouches for them since exec.
        partial = partial or raw.exec_ns == 0
        chain, chain_partial, scrubbed = self._chain(raw)
        event = ReadEvent(
            time=boot_ns_to_utc(raw.time_ns),
            path=self._path_of(raw.dev, raw.ino),
            pid=raw.tgid,
            sensor=self._sensor,
            access="open",
            ppid=raw.ppid or None,
            exe=exe,
            cmdline=cmdline,
            uid=raw.uid,
            user=user_name(raw.uid),
            start_time=start_time_utc(raw.start_ns),
            cwd=decode_path(raw.cwd, cut=bool(flags & F_CWD_CUT), empty=None if flags & F_NO_CWD else "/"),
            ancestors=() if scrubbed else chain,
            partial=partial or chain_partial,
        )
        if scrubbed:  # scrubbed by the ReadEvent that first carried it: not scrubbed twice
            object.__setattr__(event, "ancestors", chain)
        else:
            self._chains[self._chain_key(raw)] = (event.ancestors, chain_partial)
            if len(self._chains) > MAX_CHAINS:
                self._chains.popitem(last=False)
        return event

    @staticmethod
    def _chain_key(raw: RawRead) -> tuple[object, ...]:
        return (raw.ancestors, raw.flags & F_ANC_CUT)

    def _chain(self, raw: RawRead) -> tuple[tuple[ProcessInfo, ...], bool, bool]:
        """(ancestors, partial, already scrubbed).

        Many readers share a chain (the shell or build tool that runs them), and scrubbing it
        (ReadEvent redacts every ancestor's argv) is most of the cost of an event: a chain seen
        recently, named by the same (pid, start, exec stamp, uid) tuples, is reused as scrubbed."""
        key = self._chain_key(raw)
        known = self._chains.get(key)
        if known is not None:
            self._chains.move_to_end(key)
            return known[0], known[1], True
        chain: list[ProcessInfo] = []
        partial = False
        for anc in raw.ancestors:
            info, complete = self.cache.ancestor(anc)
            chain.append(info)
            partial = partial or not complete
        if raw.flags & F_ANC_CUT and raw.ancestors:  # deeper than a record holds: /proc for the rest
            last = raw.ancestors[-1]
            found = read_proc_verified(last.tgid, last.start_ns)
            chain.extend(ancestors_of(found[1]) if found else ())
            partial = True
        return tuple(chain), partial, False
