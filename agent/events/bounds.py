"""Keep what a read event says printable and small enough for every place it goes.

A reader and its ancestors are chosen by whoever runs them, so their text is hostile input:

* **Not valid UTF-8.** Linux argv, exe paths and cwds are bytes; Python decodes them with
  surrogate escapes, which SQLite cannot store and the issuer's API refuses. An executable named
  with a stray ``\\xff`` byte must not make its read vanish, so such bytes become the text ``\\xff``
  (and NUL, which PostgreSQL cannot store, becomes ``\\x00``). Applied when a ReadEvent is born.
* **Too long.** A CI runner's ``sh -c <10 kB script>`` among the ancestors once made the issuer
  refuse the whole event (its API caps a string at 8,192 characters), and a reader with megabytes
  of arguments could otherwise flood the size-bounded read log and push older reads out. Every
  string is cut to a budget counted in bytes *as sent* (JSON with ASCII escapes, the costliest
  form), so one event always fits the API's limits and its default 1 MiB body (tests/agent/
  test_bounds.py checks both against the issuer's own schema). A cut says how much was cut.

Two passes. When a ReadEvent is born, each process's arguments are trimmed coarsely by character
count (cheap, so a chain of processes with 64 KiB command lines cannot stall the agent), keeping
SCRUB_MARGIN characters more than the final budget. The exact cut by wire cost runs later, after
the planted secrets are scrubbed (agent.service), so neither cut can leave part of a known secret
behind: a secret straddling the coarse cut lies wholly past the exact one. Markers of the first
cut are folded into the second, so the counts stay exact.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from agent.events.secrets import KnownSecrets, known

if TYPE_CHECKING:
    from agent.events.model import ProcessInfo, ReadEvent

MAX_ANCESTORS = 64  # parent first, up to pid 1; a cycle or an absurd chain stops here
MAX_ARGS = 128  # arguments kept per process; the rest are counted in one marker
PATH_BUDGET = 4096  # exe, cwd, the file's path (PATH_MAX)
ARG_BUDGET = 4096  # one argument
READER_ARGV_BUDGET = 16384  # all arguments of the reader itself
ANCESTOR_ARGV_BUDGET = 2048  # all arguments of each ancestor
NAME_BUDGET = 255  # a user name
TEXT_BUDGET = 4096  # free text: errors, tamper details, notes

SCRUB_MARGIN = 4096  # longer than any known secret (an STS session token)

_MARKER_ROOM = 40  # "...[+1234567 chars]" and "...[+123 more arguments]" fit in this
_MIN_ARG_ROOM = 64  # below this, the remaining arguments are only counted
_UNPRINTABLE = re.compile("[\x00\ud800-\udfff]")
_CHARS_CUT = re.compile(r"\.\.\.\[\+(\d+) chars\]$")
_ARGS_CUT = re.compile(r"^\.\.\.\[\+(\d+) more arguments\]$")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's escape of one undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with undecodable bytes, lone surrogates and NUL spelled out (``\\xff``, ``\\x00``)."""
    if not _UNPRINTABLE.search(text):
        return text
    # The common case, at C speed: bytes os.fsdecode could not decode. Any other surrogate makes
    # the encode fail and is left to the regular expression.
    with contextlib.suppress(UnicodeEncodeError):
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _UNPRINTABLE.sub(_escape, text)


# What a terminal would act on: C0/C1 controls, DEL, unpaired surrogates, line/paragraph separators
# and the bidirectional formatting characters (Unicode TR9), which reorder the text after them.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_NOT_VISIBLE = re.compile(f"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029{_BIDI}]")


def visible(text: str, *, keep_newlines: bool = False) -> str:
    """`text` for a person's terminal: control and bidirectional characters spelled out (``\\x1b``).

    The agent's one implementation, for `tripkey-agent reads/status` (JSON output stays exact): a
    reader's argv, a user or file name can carry ESC/CSI sequences that would otherwise drive the
    terminal. `keep_newlines` keeps "\\n" for whole reports whose line breaks are ours."""
    if keep_newlines:
        return "\n".join(_NOT_VISIBLE.sub(_escape, line) for line in text.split("\n"))
    return _NOT_VISIBLE.sub(_escape, text)


def _cut_marker(kept: str, dropped: int) -> str:
    return f"{kept}...[+{dropped} chars]"


def _args_marker(left: Sequence[str]) -> str:
    """The marker standing for the arguments `left` out; an earlier cut's marker among them counts
    the arguments it stood for (a bounded event rebuilt must not say "+1")."""
    earlier = _ARGS_CUT.match(left[-1])
    count = len(left) - 1 + int(earlier.group(1)) if earlier else len(left)
    return f"...[+{count} more arguments]"


def trim_argv(argv: Sequence[str], budget: int) -> tuple[str, ...]:
    """The coarse first cut (by characters, at birth): what `bound_argv(..., budget)` needs and more."""
    limit = budget + SCRUB_MARGIN
    kept: list[str] = []
    used = 0
    for index, arg in enumerate(argv):
        if index >= MAX_ARGS or used >= limit:
            kept.append(_args_marker(argv[index:]))
            break
        room = min(ARG_BUDGET, limit - used) + SCRUB_MARGIN
        kept.append(arg if len(arg) <= room else _cut_marker(arg[:room], len(arg) - room))
        used += min(len(arg), room)
    return tuple(kept)


def wire_cost(text: str) -> int:
    """Bytes `text` takes inside a JSON string with ASCII escapes (what the agent sends)."""
    return len(json.dumps(text)) - 2


def bound_text(text: str, budget: int) -> str:
    """`text` (made printable) cut so its wire cost stays within `budget`, saying how much was cut."""
    text = printable(text)
    if len(text) <= budget // 12 or wire_cost(text) <= budget:  # 12: the costliest char's escape
        return text
    earlier, already = _CHARS_CUT.search(text), 0
    if earlier:  # cut before (trim_argv): count what that cut dropped too, not its marker
        text, already = text[: earlier.start()], int(earlier.group(1))
    room = budget - _MARKER_ROOM
    low, high = 0, min(len(text), room)  # every character costs at least one byte
    while low < high:  # the longest prefix within room: cost grows with length
        middle = (low + high + 1) // 2
        if wire_cost(text[:middle]) <= room:
            low = middle
        else:
            high = middle - 1
    return _cut_marker(text[:low], len(text) - low + already)


def bound_argv(argv: Sequence[str], budget: int) -> tuple[str, ...]:
    """At most MAX_ARGS arguments within `budget` in all; a final marker counts those left out."""
    kept: list[str] = []
    used = 0
    for index, arg in enumerate(argv):
        room = min(ARG_BUDGET, budget - used - _MARKER_ROOM)
        if index >= MAX_ARGS or room < _MIN_ARG_ROOM:
            kept.append(_args_marker(argv[index:]))
            break
        kept.append(bound_text(arg, room))
        used += wire_cost(kept[-1]) + 4  # quotes, comma, space
    return tuple(kept)


def bound_optional(text: str | None, budget: int) -> str | None:
    return None if text is None else bound_text(text, budget)


def _with(event: ReadEvent, **changes: object) -> ReadEvent:
    """`event` with `changes`, without running ReadEvent.__post_init__ again: its text was made
    printable and redacted at birth, and redacting twice doubled the cost of every read."""
    clone = copy.copy(event)
    for name, value in changes.items():
        object.__setattr__(clone, name, value)
    return clone


def bound_event(event: ReadEvent, secrets: Iterable[str] | KnownSecrets = ()) -> ReadEvent:
    """`event` with the known `secrets` scrubbed from its text, then every string within budget."""
    scrub = known(secrets).scrub

    def text(value: str | None, budget: int) -> str | None:
        return None if value is None else bound_text(scrub(value), budget)

    def argv(values: Sequence[str], budget: int) -> tuple[str, ...]:
        return bound_argv([scrub(v) for v in values], budget)

    def ancestor(info: ProcessInfo) -> ProcessInfo:
        return dataclasses.replace(
            info, exe=text(info.exe, PATH_BUDGET), cmdline=argv(info.cmdline, ANCESTOR_ARGV_BUDGET)
        )

    return _with(
        event,
        path=bound_text(scrub(event.path), PATH_BUDGET),
        exe=text(event.exe, PATH_BUDGET),
        cmdline=argv(event.cmdline, READER_ARGV_BUDGET),
        user=text(event.user, NAME_BUDGET),
        cwd=text(event.cwd, PATH_BUDGET),
        ancestors=tuple(ancestor(a) for a in event.ancestors[:MAX_ANCESTORS]),
    )


__all__ = [
    "ANCESTOR_ARGV_BUDGET",
    "ARG_BUDGET",
    "MAX_ANCESTORS",
    "MAX_ARGS",
    "NAME_BUDGET",
    "PATH_BUDGET",
    "READER_ARGV_BUDGET",
    "SCRUB_MARGIN",
    "TEXT_BUDGET",
    "bound_argv",
    "bound_event",
    "bound_optional",
    "bound_text",
    "printable",
    "trim_argv",
    "wire_cost",
]
