"""What a sensor reports: the frozen ReadEvent and ProcessInfo, born printable, bounded and redacted.

Every sensor's events are built here, so every consumer (read log, spool, issuer) gets text it can
store and send (agent.events.bounds) with command-line secrets already scrubbed (agent.events.redact).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import re
from collections.abc import Sequence
from typing import Any

from agent.clock import to_iso
from agent.events.bounds import ANCESTOR_ARGV_BUDGET, MAX_ANCESTORS, READER_ARGV_BUDGET, printable, trim_argv
from agent.events.provenance import CodeSigning, ReaderProvenance
from agent.events.redact import redact_argv


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One ancestor of a reader, as far as it could be seen. `user` is its account name when the
    sensor knows it (Windows, macOS); otherwise it is looked up from the uid when the event is written."""

    pid: int
    exe: str | None = None
    cmdline: tuple[str, ...] = ()
    uid: int | None = None
    user: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "exe": self.exe,
            "cmdline": list(self.cmdline),
            "uid": self.uid,
            "user": self.user if self.user is not None else user_name(self.uid),
        }


def _optional(text: str | None) -> str | None:
    return None if text is None else printable(text)


def _clean_argv(argv: Sequence[str], budget: int) -> tuple[str, ...]:
    return redact_argv(tuple(printable(arg) for arg in trim_argv(argv, budget)))


def _cleaned(info: ProcessInfo) -> ProcessInfo:
    cmdline = _clean_argv(info.cmdline, ANCESTOR_ARGV_BUDGET)
    exe = _optional(info.exe)
    if cmdline == info.cmdline and exe == info.exe:
        return info
    return dataclasses.replace(info, exe=exe, cmdline=cmdline)


# What a ReadEvent says about the reader, besides when and which file: the read log's columns and
# the "read" object uploaded to the issuer are both built from this one list.
READER_FIELDS = (
    "pid",
    "ppid",
    "exe",
    "cmdline",
    "uid",
    "user",
    "start_time",
    "cwd",
    "access",
    "sensor",
    "ancestors",
    "provenance",
    "partial",
)


@dataclasses.dataclass(frozen=True, slots=True)
class ReadEvent:
    """A process opened or read a planted file. Never carries file contents."""

    time: dt.datetime  # UTC
    path: str
    pid: int
    sensor: str
    access: str = "open"  # open | read | close
    ppid: int | None = None
    exe: str | None = None
    cmdline: tuple[str, ...] = ()
    uid: int | None = None
    user: str | None = None
    start_time: dt.datetime | None = None
    cwd: str | None = None
    ancestors: tuple[ProcessInfo, ...] = ()  # parent first, up to pid 1
    # What the sensor's OS reported about the reader's code signature (macOS eslogger), if anything.
    signing: CodeSigning | None = None
    # Where the reader's code came from (agent.events.probe): attached on the consumer thread after
    # the reader was let go, never by a sensor. None until then.
    provenance: ReaderProvenance | None = None
    # Part of the context was not captured when the read happened (filled from /proc later, or
    # missing), like osquery's `partial` column: the alert then says its context may be incomplete.
    partial: bool = False

    def __post_init__(self) -> None:
        # A command line may carry a secret (`aws configure set aws_secret_access_key X`). Every
        # sensor's events are born here and the read log, spool and alerts all keep cmdline, so
        # scrubbing here means no consumer can forget. Runs after a held reader was allowed.
        # Undecodable bytes become printable text here too, and argv gets its coarse first cut
        # (agent.events.bounds): SQLite and the issuer refuse lone surrogates, and a read must
        # never be lost, nor the agent stalled, for its reader's odd name or huge command line.
        object.__setattr__(self, "path", printable(self.path))
        object.__setattr__(self, "exe", _optional(self.exe))
        object.__setattr__(self, "cmdline", _clean_argv(self.cmdline, READER_ARGV_BUDGET))
        object.__setattr__(self, "user", _optional(self.user))
        object.__setattr__(self, "cwd", _optional(self.cwd))
        chain = self.ancestors[:MAX_ANCESTORS]
        object.__setattr__(self, "ancestors", tuple(_cleaned(a) for a in chain))

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": to_iso(self.time),
            "path": self.path,
            "pid": self.pid,
            "ppid": self.ppid,
            "exe": self.exe,
            "cmdline": list(self.cmdline),
            "uid": self.uid,
            "user": self.user,
            "start_time": to_iso(self.start_time),
            "cwd": self.cwd,
            "access": self.access,
            "sensor": self.sensor,
            "ancestors": [a.to_dict() for a in self.ancestors],
            "provenance": self.provenance.to_dict() if self.provenance else None,
            "partial": self.partial,
        }


@functools.lru_cache(maxsize=1024)
def user_name(uid: int | None) -> str | None:
    """The account name of `uid`, None if unknown. pwd is imported late: Windows has none."""
    if uid is None:
        return None
    try:
        import pwd
    except ImportError:  # Windows: its sensor names users itself
        return None
    try:
        return pwd.getpwuid(uid).pw_name  # type: ignore[attr-defined, unused-ignore]
    except KeyError:
        return None


_FRACTION_RE = re.compile(r"\.(\d+)")


def parse_utc(value: object) -> dt.datetime | None:
    """ISO 8601 with any number of fraction digits (eslogger: ns, Windows: 100 ns) and `Z`, as UTC.

    None for anything unparseable; a time without a zone is taken as UTC.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    text = _FRACTION_RE.sub(lambda m: "." + (m.group(1) + "000000")[:6], value.strip(), count=1)
    text = text[:-1] + "+00:00" if text.endswith("Z") else text
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)
