"""Pure parser of Linux audit records: text in, frozen values out (no I/O, no kernel).

Two spellings of the same record reach us:

* auditd's log (``/var/log/audit/audit.log``, ``ausearch --raw``)::

      type=SYSCALL msg=audit(1364481363.243:24287): arch=c000003e syscall=257 ... key="cfgread"

  optionally prefixed by ``node=HOST`` and, with ``log_format = ENRICHED``, followed by a GS
  character (0x1d) and interpreted fields (``AUID="root" ...``) that we drop.
* the kernel's netlink message: the record type is the netlink message type (1300 = SYSCALL) and
  the payload starts at ``audit(TIME:SERIAL): ...``. :func:`record_from_netlink` normalises it.

One *event* is every record sharing ``audit(TIME:SERIAL)``; the kernel ends a syscall event with an
EOE record, auditd's log omits EOE, and records of different events may interleave.
Untrusted strings (``name``, ``exe``, ``comm``, ``cwd``, ``key``, ``proctitle``) are either
``"quoted"`` or, when they contain a space, quote, control or non-ASCII byte, upper-case hex;
``proctitle`` hex separates argv by NUL and is truncated by the kernel to 128 bytes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable

# Record types we use (linux/audit.h); others are kept under their number.
RECORD_TYPES: dict[int, str] = {
    1300: "SYSCALL",
    1302: "PATH",
    1305: "CONFIG_CHANGE",
    1306: "SOCKADDR",
    1307: "CWD",
    1309: "EXECVE",
    1320: "EOE",
    1327: "PROCTITLE",
}

# Fields the kernel logs with audit_log_untrustedstring(): quoted or hex.
_ENCODED_FIELDS = frozenset({"name", "exe", "comm", "cwd", "key", "proctitle", "path", "dir"})
_UNSET_ID = 4294967295  # (uid_t)-1: "unset" auid

# Open-family syscalls per audit arch. A `perm=r` rule also matches getxattr/listxattr/readlink on the
# file (`ls -l` does those); they are not reads of the contents, so the sensor keeps only these.
OPEN_SYSCALLS: dict[str, frozenset[int]] = {
    "c000003e": frozenset({2, 257, 304, 437}),  # x86_64: open, openat, open_by_handle_at, openat2
    "40000003": frozenset({5, 295, 342, 437}),  # i386 / x86_64 compat
    "c00000b7": frozenset({56, 265, 437}),  # aarch64: openat, open_by_handle_at, openat2
    "40000028": frozenset({5, 322, 370, 437}),  # arm (EABI)
    "c000003f": frozenset({56, 265, 437}),  # riscv64 (generic table, same as aarch64)
}

# `) :` with a space appears in Red Hat's documented example; accept both.
_HEADER_RE = re.compile(r"(?:^|\s)msg=audit\((\d+)\.(\d+):(\d+)\)\s?:\s?")
_NETLINK_HEADER_RE = re.compile(r"^audit\((\d+)\.(\d+):(\d+)\)\s?:\s?")
_TYPE_RE = re.compile(r"(?:^|\s)type=(\S+)")
_FIELD_RE = re.compile(r"""([A-Za-z0-9_-]+)=("[^"]*"|'[^']*'|\S*)""")
_HEX_RE = re.compile(r"^(?:[0-9A-F]{2})+$")


class AuditParseError(ValueError):
    """A line claimed to be an audit record but could not be read."""


@dataclasses.dataclass(frozen=True, slots=True)
class AuditRecord:
    type: str
    time: dt.datetime  # UTC, millisecond precision as logged
    serial: int
    fields: dict[str, str]  # raw values, surrounding quotes removed for non-encoded fields

    @property
    def event_id(self) -> tuple[int, int]:
        return (int(self.time.timestamp() * 1000), self.serial)


@dataclasses.dataclass(frozen=True, slots=True)
class AuditPath:
    item: int | None
    name: str | None
    inode: int | None
    dev: str | None
    nametype: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class AuditSyscall:
    """The parts of one syscall event that describe a file access and its process."""

    time: dt.datetime
    serial: int
    arch: str | None
    syscall: int | None
    success: bool | None
    pid: int
    ppid: int | None
    uid: int | None
    auid: int | None  # None when unset (4294967295)
    euid: int | None
    exe: str | None
    comm: str | None
    keys: tuple[str, ...]
    cwd: str | None
    paths: tuple[AuditPath, ...]
    proctitle: tuple[str, ...]  # empty when the PROCTITLE record was missing

    def is_open(self) -> bool:
        """True for the open family; True as well when the arch is unknown (never hide a read)."""
        table = OPEN_SYSCALLS.get(self.arch or "")
        if table is None or self.syscall is None:
            return True
        return self.syscall in table


def decode_value(raw: str) -> str | None:
    """Decode an untrusted-string field: ``"quoted"`` → text, HEX → text, ``(null)`` → None."""
    if raw in ("(null)", "(none)", ""):
        return None
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    if _HEX_RE.match(raw):
        return bytes.fromhex(raw).decode("utf-8", "surrogateescape")
    return raw


def decode_proctitle(raw: str) -> tuple[str, ...]:
    """argv from a PROCTITLE value: hex with NUL separators, or a quoted plain string (one arg)."""
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return (raw[1:-1],)
    if _HEX_RE.match(raw):
        data = bytes.fromhex(raw).rstrip(b"\0")
        return tuple(part.decode("utf-8", "surrogateescape") for part in data.split(b"\0"))
    return (raw,) if raw else ()


def _parse_fields(body: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for key, value in _FIELD_RE.findall(body):
        if key in _ENCODED_FIELDS or key == "msg":
            fields.setdefault(key, value)
        else:
            fields.setdefault(key, value.strip("\"'"))
    return fields


def _timestamp(seconds: str, millis: str) -> dt.datetime:
    base = dt.datetime.fromtimestamp(int(seconds), tz=dt.UTC)
    return base + dt.timedelta(milliseconds=int(millis.ljust(3, "0")[:3]))


def parse_line(line: str) -> AuditRecord | None:
    """One auditd log line → record; None for blank lines and lines that are not audit records."""
    line = line.split("\x1d", 1)[0].rstrip("\r\n")  # drop ENRICHED interpretations
    header = _HEADER_RE.search(line)
    if header is None:
        return None
    type_match = _TYPE_RE.search(line[: header.start() + 1])
    if type_match is None:
        raise AuditParseError(f"audit record without type=: {line[:120]!r}")
    return AuditRecord(
        type=type_match.group(1),
        time=_timestamp(header.group(1), header.group(2)),
        serial=int(header.group(3)),
        fields=_parse_fields(line[header.end() :]),
    )


def record_from_netlink(msg_type: int, payload: bytes) -> AuditRecord | None:
    """A kernel netlink audit message (type + text payload) → record; None if not a record."""
    text = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    header = _NETLINK_HEADER_RE.match(text)
    if header is None:
        return None
    return AuditRecord(
        type=RECORD_TYPES.get(msg_type, f"UNKNOWN[{msg_type}]"),
        time=_timestamp(header.group(1), header.group(2)),
        serial=int(header.group(3)),
        fields=_parse_fields(text[header.end() :]),
    )


class EventAssembler:
    """Groups records into events by (time, serial), tolerating interleaving and missing EOE.

    ``add`` returns the events completed by an EOE; ``flush`` hands over events that waited longer
    than ``max_age`` seconds (or all of them) — auditd's log has no EOE, and single-record events
    (CONFIG_CHANGE) never get one. At most ``max_pending`` events wait; past that the oldest is
    handed over early rather than dropped.
    """

    def __init__(self, max_pending: int = 10_000) -> None:
        self.max_pending = max_pending
        self._pending: dict[tuple[int, int], list[AuditRecord]] = {}
        self._seen_at: dict[tuple[int, int], float] = {}

    def add(self, record: AuditRecord, now: float = 0.0) -> list[list[AuditRecord]]:
        key = record.event_id
        done: list[list[AuditRecord]] = []
        if record.type == "EOE":
            records = self._pending.pop(key, None)
            self._seen_at.pop(key, None)
            return [records] if records else []
        if key not in self._pending:
            if len(self._pending) >= self.max_pending:
                oldest = next(iter(self._pending))
                done.append(self._pending.pop(oldest))
                self._seen_at.pop(oldest, None)
            self._pending[key] = []
            self._seen_at[key] = now
        self._pending[key].append(record)
        return done

    def flush(self, now: float = 0.0, max_age: float | None = None) -> list[list[AuditRecord]]:
        ready = [k for k, t in self._seen_at.items() if max_age is None or now - t >= max_age]
        out = []
        for key in sorted(ready):
            out.append(self._pending.pop(key))
            del self._seen_at[key]
        return out

    def __len__(self) -> int:
        return len(self._pending)


def group_events(lines: Iterable[str]) -> list[list[AuditRecord]]:
    """Every event in a log text, in (time, serial) order. Pure: no clock, nothing kept."""
    assembler = EventAssembler(max_pending=1 << 62)
    events: list[list[AuditRecord]] = []
    for line in lines:
        record = parse_line(line)
        if record is not None:
            events.extend(assembler.add(record))
    events.extend(assembler.flush())
    return sorted(events, key=lambda ev: ev[0].event_id)


def _int(fields: dict[str, str], name: str, base: int = 10) -> int | None:
    value = fields.get(name)
    if value is None or value in ("", "?"):
        return None
    try:
        return int(value, base)
    except ValueError:
        return None


def _keys(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    decoded = decode_value(raw)
    return tuple(k for k in (decoded or "").split("\x01") if k)


def syscall_from_event(records: list[AuditRecord]) -> AuditSyscall | None:
    """Build the syscall view of one event; None when the event has no SYSCALL record."""
    syscall = next((r for r in records if r.type == "SYSCALL"), None)
    if syscall is None:
        return None
    f = syscall.fields
    pid = _int(f, "pid")
    if pid is None:
        raise AuditParseError(f"SYSCALL record {syscall.serial} has no pid")
    cwd_rec = next((r for r in records if r.type == "CWD"), None)
    title = next((r for r in records if r.type == "PROCTITLE"), None)
    paths = sorted(
        (
            AuditPath(
                item=_int(r.fields, "item"),
                name=decode_value(r.fields.get("name", "")),
                inode=_int(r.fields, "inode"),
                dev=r.fields.get("dev"),
                nametype=r.fields.get("nametype") or r.fields.get("objtype"),  # objtype: older kernels
            )
            for r in records
            if r.type == "PATH"
        ),
        key=lambda p: -1 if p.item is None else p.item,
    )
    auid = _int(f, "auid")
    success = f.get("success")
    return AuditSyscall(
        time=syscall.time,
        serial=syscall.serial,
        arch=f.get("arch"),
        syscall=_int(f, "syscall"),
        success=None if success is None else success == "yes",
        pid=pid,
        ppid=_int(f, "ppid"),
        uid=_int(f, "uid"),
        auid=None if auid == _UNSET_ID else auid,
        euid=_int(f, "euid"),
        exe=decode_value(f.get("exe", "")),
        comm=decode_value(f.get("comm", "")),
        keys=_keys(f.get("key")),
        cwd=decode_value(cwd_rec.fields.get("cwd", "")) if cwd_rec else None,
        paths=tuple(paths),
        proctitle=decode_proctitle(title.fields.get("proctitle", "")) if title else (),
    )


def parse_syscalls(lines: Iterable[str], key: str | None = None) -> list[AuditSyscall]:
    """Every syscall event in a log text (optionally only those carrying rule key ``key``)."""
    out = []
    for records in group_events(lines):
        parsed = syscall_from_event(records)
        if parsed is not None and (key is None or key in parsed.keys):
            out.append(parsed)
    return out
