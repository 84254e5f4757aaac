r"""Pure parser of macOS `eslogger` JSON lines into ReadEvents (no macOS needed; tested on recorded
output from macOS 15, 26 and 27 beta in tests/data/eslogger/ and on fixtures).

`eslogger open exec fork exit --format json` (macOS 13+, root + Full Disk Access) prints one
serialised `es_message_t` per line. Recorded output differs from a tidy example in three ways this
parser handles: keys come in no fixed order, `/` is written `\/`, and schema version 10 (macOS 26)
writes audit tokens as a list of eight words instead of an object. Shape (tidied):

    {"version": 7, "time": "2024-05-02T10:11:12.123456789Z", "event_type": 10,
     "global_seq_num": 42, "seq_num": 7, "mach_time": ..., "thread": {...}, "action_type": 1,
     "process": {"audit_token": {"pid": 501, "pidversion": 3, "euid": 501, "ruid": 501, ...},
                 "ppid": 480, "original_ppid": 480, "start_time": "2024-05-02T10:11:11.5Z",
                 "executable": {"path": "/usr/bin/cat", "path_truncated": false, ...}, ...},
     "event": {"open": {"fflag": 1, "file": {"path": "/Users/alice/.aws/credentials", ...}}}}

`event_type` is the `es_event_type_t` number (NOTIFY_EXEC 9, NOTIFY_OPEN 10, NOTIFY_FORK 11,
NOTIFY_EXIT 15); `event` has exactly one key naming the event, which is what we dispatch on.
exec: {"exec": {"target": <process after exec>, "args": [...], "cwd": {"path": ...}, ...}};
fork: {"fork": {"child": <process>}}; exit: {"exit": {"stat": <wait status>}}.
`global_seq_num` counts every message sent to this ES client: a gap means the kernel dropped
messages for us, and is reported as lost events (never silently). Opens of other files are
discarded from their bytes before any JSON decoding (eslogger_filter); their sequence numbers still
count. Each process keeps its code-signing identity (`signing_id`, `team_id`) for provenance.

A process table built from exec/fork/exit gives each reader its command line (only exec events
carry `args`) and its ancestor chain. Processes that started before eslogger did are not in the
table: an optional `fallback(pid)` (the sensor passes a psutil lookup) fills them in while alive.

Path matching (documented limits): ES reports the kernel's resolved path, so `/var`, `/tmp` and
`/etc` (symlinks into `/private`) appear as `/private/var/...`; both sides are canonicalised to the
`/private` form. APFS is case-insensitive and normalisation-insensitive by default, so by default
paths compare case-folded in NFD; pass `case_sensitive=True` for case-sensitive volumes. ReadEvents
carry the planted path exactly as configured.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import posixpath
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

from agent.events.bounds import MAX_ANCESTORS
from agent.events.model import ProcessInfo, ReadEvent, parse_utc
from agent.events.provenance import CodeSigning, signing_from_flags
from agent.sensors._eslogger_filter import OpenFilter

SENSOR_NAME = "eslogger"
EVENT_EXEC, EVENT_OPEN, EVENT_FORK, EVENT_EXIT = 9, 10, 11, 15
FREAD = 0x1  # es_event_open_t.fflag carries kernel FFLAGS (FREAD/FWRITE), not O_* flags
MAX_LINE_BYTES = 8 << 20  # an exec with a huge environment is big; a longer line is corrupt
_PRIVATE_ROOTS = ("/var", "/tmp", "/etc")
# audit_token_t as eslogger's schema version 10 (macOS 26) writes it: a list of its eight words.
_TOKEN_PID, _TOKEN_RUID, _TOKEN_PIDVERSION, _TOKEN_WORDS = 5, 3, 7, 8


class EsloggerParseError(ValueError):
    """A line was not a usable eslogger message."""


@dataclasses.dataclass(slots=True)
class ProcRecord:
    """What the table knows about one live (or recently exited) process."""

    pid: int
    ppid: int | None = None
    exe: str | None = None
    args: tuple[str, ...] = ()
    uid: int | None = None
    start_time: dt.datetime | None = None
    cwd: str | None = None
    pidversion: int | None = None
    signing: CodeSigning | None = None  # signing_id, team_id, platform binary, CS flags of the image


Fallback = Callable[[int], ProcRecord | None]


def canonical_path(path: str, case_sensitive: bool = False) -> str:
    """The comparison key of a macOS path (see module docstring)."""
    path = posixpath.normpath(path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    for root in _PRIVATE_ROOTS:
        if path == root or path.startswith(root + "/"):
            path = "/private" + path
            break
    path = unicodedata.normalize("NFD", path)
    return path if case_sensitive else path.casefold()


#: ISO 8601 as eslogger writes it (nanosecond fraction, `Z`) to an aware UTC datetime.
parse_time = parse_utc


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _file_path(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        return value["path"]
    return None


def _token(token: Any) -> tuple[int | None, int | None, int | None]:
    """(pid, ruid, pidversion) of an audit token, in either of eslogger's spellings.

    Schema versions up to 9 and 11 write an object {"pid":..., "ruid":..., "pidversion":...};
    version 10 (macOS 26) writes the token's eight words [auid, euid, egid, ruid, rgid, pid, asid,
    pidversion] (see tests/data/eslogger/mullvad-macos26-v10-fork.json).
    """
    if isinstance(token, dict):
        return _int(token.get("pid")), _int(token.get("ruid")), _int(token.get("pidversion"))
    if isinstance(token, list) and len(token) == _TOKEN_WORDS:
        return _int(token[_TOKEN_PID]), _int(token[_TOKEN_RUID]), _int(token[_TOKEN_PIDVERSION])
    return None, None, None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def process_record(proc: Any) -> ProcRecord:
    """An es_process_t object to a ProcRecord; EsloggerParseError if it has no pid."""
    if not isinstance(proc, dict):
        raise EsloggerParseError("process is not an object")
    pid, ruid, pidversion = _token(proc.get("audit_token"))
    if pid is None:
        raise EsloggerParseError("process has no audit_token pid")
    return ProcRecord(
        pid=pid,
        ppid=_int(proc.get("ppid")),
        exe=_file_path(proc.get("executable")),
        uid=ruid,
        start_time=parse_time(proc.get("start_time")),
        pidversion=pidversion,
        signing=signing_from_flags(
            proc.get("signing_id"),
            proc.get("team_id"),
            proc.get("is_platform_binary"),
            proc.get("codesigning_flags"),
        ),
    )


class ProcessTable:
    """pid -> ProcRecord from fork/exec/exit, bounded so lost exit events cannot grow it forever."""

    def __init__(self, max_live: int = 65536, max_exited: int = 4096) -> None:
        self._live: collections.OrderedDict[int, ProcRecord] = collections.OrderedDict()
        self._exited: collections.OrderedDict[int, ProcRecord] = collections.OrderedDict()
        self.max_live = max_live
        self.max_exited = max_exited

    def __len__(self) -> int:
        return len(self._live)

    def get(self, pid: int) -> ProcRecord | None:
        # Exited processes stay findable a while: a reader's parent often exits before we look.
        return self._live.get(pid) or self._exited.get(pid)

    def put(self, record: ProcRecord) -> None:
        self._exited.pop(record.pid, None)
        self._live[record.pid] = record
        self._live.move_to_end(record.pid)
        while len(self._live) > self.max_live:
            self._live.popitem(last=False)

    def observe(self, seen: ProcRecord) -> ProcRecord:
        """Merge what an event says about its process into the table; returns the merged record."""
        known = self._live.get(seen.pid)
        if known is None or (seen.pidversion is not None and known.pidversion not in (None, seen.pidversion)):
            self.put(seen)  # new to us, or the pid was reused by another process
            return seen
        known.ppid = seen.ppid if seen.ppid is not None else known.ppid
        known.exe = seen.exe or known.exe
        known.uid = seen.uid if seen.uid is not None else known.uid
        known.start_time = seen.start_time or known.start_time
        known.pidversion = seen.pidversion if seen.pidversion is not None else known.pidversion
        known.signing = seen.signing or known.signing
        return known

    def exit(self, pid: int) -> None:
        record = self._live.pop(pid, None)
        if record is not None:
            self._exited[pid] = record
            while len(self._exited) > self.max_exited:
                self._exited.popitem(last=False)


class EsloggerParser:
    """Feed eslogger's stdout (bytes, any chunking); get ReadEvents for opens of planted files."""

    def __init__(
        self,
        paths: Iterable[str],
        *,
        case_sensitive: bool = False,
        skip_pids: Iterable[int] = (),
        user_name: Callable[[int], str | None] | None = None,
        fallback: Fallback | None = None,
        table: ProcessTable | None = None,
        prefilter: bool = True,
    ) -> None:
        self.case_sensitive = case_sensitive
        self.prefilter = prefilter  # False: decode every line (the benchmark's baseline)
        self.skip_pids = frozenset(skip_pids)
        self.user_name = user_name
        self.fallback = fallback
        self.table = table or ProcessTable()
        self._buffer = b""
        self._last_seq: int | None = None
        self._skipped_since_seq = 0  # lines skipped undecoded since the last sequence number seen
        self.lines = 0
        self.skipped_opens = 0  # opens discarded by the byte-level filter, never JSON-decoded
        self.malformed = 0  # lines that were not usable eslogger messages (skipped and counted)
        self.dropped = 0  # messages the kernel dropped for us (gaps in global_seq_num)
        self.last_error: str | None = None
        self.last_reader: ProcRecord | None = None  # the process of the last read returned
        self.set_paths(paths)

    @property
    def lost_events(self) -> int:
        """Malformed lines count as lost: one of them may have been a read of a planted file."""
        return self.malformed + self.dropped

    def set_paths(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        self._targets = {canonical_path(p, self.case_sensitive): p for p in paths}
        # Most of the system's opens are discarded from their bytes, never decoded (see
        # eslogger_filter for why that is safe and how JSON escaping is handled).
        self._filter = OpenFilter(paths, case_sensitive=self.case_sensitive) if self.prefilter else None

    # ---- streaming ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[ReadEvent]:
        """Parse every complete line in buffer+data; an incomplete last line waits for more."""
        return [event for event, _reader in self.feed_reads(data)]

    def feed_reads(self, data: bytes) -> list[tuple[ReadEvent, ProcRecord]]:
        """Like feed(), with each read's process record (its code-signing identity: signing_id,
        team_id) for reader provenance."""
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE_BYTES:
            self._bad(f"line longer than {MAX_LINE_BYTES} bytes without a newline; discarded")
            self._buffer = b""
        reads = []
        skip = self._filter.skip if self._filter is not None else None
        for line in complete:
            if skip is not None and skip(line):
                # An open of some other file, never decoded. It still counts in the sequence, or
                # the next decoded message would report it as dropped by the kernel.
                self.lines += 1
                self.skipped_opens += 1
                self._skipped_since_seq += 1
                continue
            event = self.parse_line(line)
            if event is not None:
                assert self.last_reader is not None
                reads.append((event, self.last_reader))
        return reads

    def new_stream(self) -> None:
        """A new eslogger process: a new ES client, whose global_seq_num starts again at 1."""
        self._buffer = b""
        self._last_seq = None
        self._skipped_since_seq = 0

    def finish(self) -> list[ReadEvent]:
        """End of stream: a trailing partial line is parsed if complete JSON, else counted."""
        rest, self._buffer = self._buffer, b""
        event = self.parse_line(rest) if rest.strip() else None
        return [event] if event is not None else []

    def _bad(self, why: str) -> None:
        self.malformed += 1
        self.last_error = why

    # ---- one message ----------------------------------------------------------------------------

    def parse_line(self, line: bytes | str) -> ReadEvent | None:
        raw = line.encode() if isinstance(line, str) else line
        raw = raw.strip()
        if not raw:
            return None
        self.lines += 1
        if self._filter is not None and self._filter.skip(raw):
            # An open of some other file: not decoded. It still counts in the sequence, or the
            # next decoded message would report it as dropped by the kernel (_check_sequence).
            self.skipped_opens += 1
            self._skipped_since_seq += 1
            return None
        try:
            message = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._bad(f"not JSON: {exc}")
            return None
        try:
            return self.handle_message(message)
        except EsloggerParseError as exc:
            self._bad(str(exc))
            return None

    def handle_message(self, message: Any) -> ReadEvent | None:
        if not isinstance(message, dict):
            raise EsloggerParseError("message is not a JSON object")
        self._check_sequence(message.get("global_seq_num"))
        body = message.get("event")
        if not isinstance(body, dict) or len(body) != 1:
            raise EsloggerParseError("message has no single 'event' object")
        ((kind, detail),) = body.items()
        if not isinstance(detail, dict):
            raise EsloggerParseError(f"event {kind!r} is not an object")
        proc = process_record(message.get("process"))
        if kind == "fork":
            parent = self.table.observe(proc)
            child = process_record(detail.get("child"))
            # A forked child runs its parent's image: same argv and cwd until it execs.
            child.args, child.cwd = parent.args, parent.cwd
            child.exe = child.exe or parent.exe
            child.ppid = child.ppid if child.ppid is not None else parent.pid
            self.table.put(child)
        elif kind == "exec":
            target = process_record(detail.get("target"))
            args = detail.get("args")
            target.args = tuple(str(a) for a in args) if isinstance(args, list) else ()
            target.cwd = _file_path(detail.get("cwd"))
            self.table.put(target)
        elif kind == "exit":
            self.table.exit(proc.pid)
        elif kind == "open":
            return self._open(message, proc, detail)
        return None  # other event kinds: not subscribed; ignored

    def _check_sequence(self, seq: Any) -> None:
        """A gap in global_seq_num, less the lines we skipped undecoded (eslogger writes messages
        in sequence, so those filled part of the gap), is what the kernel dropped."""
        seq = _int(seq)
        if seq is None:
            return
        skipped, self._skipped_since_seq = self._skipped_since_seq, 0
        if self._last_seq is not None and seq > self._last_seq + 1:
            self.dropped += max(0, seq - self._last_seq - 1 - skipped)
        if self._last_seq is None or seq > self._last_seq:
            self._last_seq = seq

    def _open(self, message: dict[str, Any], seen: ProcRecord, detail: dict[str, Any]) -> ReadEvent | None:
        path = _file_path(detail.get("file"))
        if path is None:
            raise EsloggerParseError("open event without file.path")
        planted = self._targets.get(canonical_path(path, self.case_sensitive))
        if planted is None or seen.pid in self.skip_pids:
            return None
        fflag = _int(detail.get("fflag"))
        if fflag is not None and not fflag & FREAD:
            return None  # opened for writing only: not a read (tampering is watched elsewhere)
        time = parse_time(message.get("time"))
        if time is None:
            raise EsloggerParseError("open event without a valid 'time'")
        proc = self.table.observe(seen)
        if not proc.args and self.fallback is not None:
            live = self.fallback(proc.pid)
            if live is not None and _same_process(proc, live):
                proc.args, proc.cwd = live.args, proc.cwd or live.cwd
        self.last_reader = proc
        return ReadEvent(
            time=time,
            path=planted,
            pid=proc.pid,
            sensor=SENSOR_NAME,
            access="open",
            ppid=seen.ppid,
            exe=seen.exe or proc.exe,
            cmdline=proc.args,
            uid=seen.uid,
            user=self.user_name(seen.uid) if self.user_name and seen.uid is not None else None,
            start_time=seen.start_time or proc.start_time,
            cwd=proc.cwd,
            ancestors=self.ancestors(seen.ppid),
            # The signature of the image that opened the file (the message's own process).
            signing=seen.signing or proc.signing,
        )

    def ancestors(self, ppid: int | None) -> tuple[ProcessInfo, ...]:
        """Parent first, up to pid 1; a pid we know nothing about ends the chain (pid only)."""
        chain: list[ProcessInfo] = []
        seen: set[int] = set()
        pid = ppid
        while pid is not None and pid > 0 and pid not in seen and len(chain) < MAX_ANCESTORS:
            seen.add(pid)
            record = self.table.get(pid)
            if record is None and self.fallback is not None:
                record = self.fallback(pid)
            if record is None:
                chain.append(ProcessInfo(pid=pid))
                break
            chain.append(ProcessInfo(pid=pid, exe=record.exe, cmdline=record.args, uid=record.uid))
            if pid == 1:
                break
            pid = record.ppid
        return tuple(chain)


def _same_process(known: ProcRecord, live: ProcRecord) -> bool:
    """The fallback's live process is the one the event saw (not a later process with its pid)."""
    if known.start_time and live.start_time:
        return abs((known.start_time - live.start_time).total_seconds()) < 1.0
    return not (known.exe and live.exe and known.exe != live.exe)
