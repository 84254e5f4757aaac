r"""Byte-level triage of eslogger lines, before any JSON parsing.

eslogger cannot filter opens by path, so on a busy Mac nearly every line is an open of some file
the agent does not care about. Decoding each of them would cost a core; this module decides from
the raw bytes which lines must be decoded:

* `peek_int(line, b'"event_type":')` reads a top-level integer without decoding the message.
  A JSON string cannot contain the bytes `"event_type":` (a quote inside a string is written `\"`),
  so the first match is the key itself; a reader cannot forge it through a file name or argv.
* `OpenFilter.skip(line)` is True only for an open of another file: it finds the open's file
  path in the raw bytes (see _make_skip) and looks in it for the planted path's last two
  components (`.aws/credentials`) as JSON writes them; `may_match` is the same test on a whole line.

JSON escaping is the trap. eslogger (NSJSONSerialization) writes `/` as `\/`
(`"path":"\/Users\/alice\/.aws\/credentials"`, as in the recorded samples under
tests/data/eslogger/), and a JSON writer may also write non-ASCII characters as `\uXXXX`. So each
needle is searched in both slash spellings; a tail that is not plain ASCII falls back to its
longest plain-ASCII run (at least 4 bytes); a path without one disables the filter (every open is
decoded: correct, only slower). Paths compare case-insensitively by default (APFS), so the path
is lower-cased before the search. The filter only ever lets too much through: the exact comparison
after decoding (eslogger_parse.canonical_path) decides.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable

MIN_NEEDLE = 4
_PLAIN = re.compile(r"[\x20-\x7e]+")  # printable ASCII: JSON writes it as is (but for " and \)


def peek_int(line: bytes, key: bytes) -> int | None:
    """The unsigned integer right after `key` (e.g. b'"event_type":'), or None."""
    at = line.find(key)
    if at < 0:
        return None
    start = end = at + len(key)
    while end < len(line) and line[end] == 0x20:  # a space after the colon (pretty printers)
        end += 1
        start = end
    while end < len(line) and 0x30 <= line[end] <= 0x39:
        end += 1
    return int(line[start:end]) if end > start else None


def is_event_type(line: bytes, key: bytes, code: bytes) -> bool:
    """Whether the integer after `key` is exactly `code` (b"10"): peek_int without building an int."""
    at = line.find(key)
    if at < 0:
        return False
    start = at + len(key)
    end = start + len(code)
    return line.startswith(code, start) and (end == len(line) or line[end] in b",} \r")


def _escaped(line: bytes, at: int) -> bool:
    """Whether the quote at `at` is escaped (preceded by an odd number of backslashes)."""
    count = 0
    while at - count - 1 >= 0 and line[at - count - 1] == 0x5C:
        count += 1
    return count % 2 == 1


def _tail(path: str) -> str:
    """The last two components: enough to be rare, short enough to survive /private prefixes."""
    parent, name = posixpath.split(posixpath.normpath(path))
    folder = posixpath.basename(parent)
    return f"{folder}/{name}" if folder else name


def _json_spellings(text: str) -> set[str] | None:
    """How JSON writers may spell `text` (only the / escape varies for plain ASCII); None if not
    plain ASCII without quotes or backslashes (their escapes are not worth guessing)."""
    if not _PLAIN.fullmatch(text) or '"' in text or "\\" in text:
        return None
    return {text, text.replace("/", "\\/")}


def needles_for(paths: Iterable[str], *, case_sensitive: bool) -> tuple[bytes, ...] | None:
    """Byte strings of which an open line of any of `paths` contains at least one; None: no filter."""
    needles: set[str] = set()
    for path in paths:
        tail = _tail(path)
        spellings = _json_spellings(tail)
        if spellings is None:
            runs = [r for r in _PLAIN.findall(tail) if '"' not in r and "\\" not in r]
            best = max(runs, key=len, default="")
            if len(best) < MIN_NEEDLE:
                return None  # nothing safe to look for: decode every open
            spellings = {best, best.replace("/", "\\/")}
        needles |= spellings
    if not case_sensitive:
        needles = {n.lower() for n in needles}
    return tuple(sorted(n.encode("ascii") for n in needles))


class OpenFilter:
    """`skip(line)`: True only for an open that cannot be of a planted path (the parser's hot
    path); `may_match(line)`: the path test alone."""

    def __init__(self, paths: Iterable[str], *, case_sensitive: bool = False) -> None:
        self.case_sensitive = case_sensitive
        self.needles = needles_for(paths, case_sensitive=case_sensitive)
        self.skip: Callable[[bytes], bool] = self._make_skip()

    @property
    def active(self) -> bool:
        return self.needles is not None

    def _make_skip(self) -> Callable[[bytes], bool]:
        """`skip(line)`: True when `line` is an open of a file that is not planted. The hot path,
        called for nearly every line, so it reads only what it must: an open message's `event`
        object has exactly one key, so `"event":{"open":{` marks an open (a string cannot hold
        those bytes: its quotes are escaped); the first `"path":"` after its `"file":{` is the
        opened file's path (es_file_t: path, path_truncated, stat, and stat has no path), and only
        that string is lower-cased and searched."""
        needles, lower = self.needles, not self.case_sensitive
        if needles is None:
            return lambda line: False

        def skip(line: bytes) -> bool:
            at = line.find(b'"event":{"open":{')
            if at < 0:
                return False  # exec, fork, exit (or something unexpected): decode it
            at = line.find(b'"file":{', at)
            at = line.find(b'"path":"', at) if at >= 0 else -1
            if at < 0:
                return False
            start = at + 8
            end = line.find(b'"', start)
            while end > 0 and _escaped(line, end):
                end = line.find(b'"', end + 1)
            if end < 0:
                return False  # a cut line: let the decoder count it
            value = line[start:end].lower() if lower else line[start:end]
            for needle in needles:  # noqa: SIM110 (a plain loop: a generator costs more than the search)
                if needle in value:
                    return False
            return True

        return skip

    def may_match(self, line: bytes) -> bool:
        if self.needles is None:
            return True
        haystack = line if self.case_sensitive else line.lower()
        return any(needle in haystack for needle in self.needles)


__all__ = ["OpenFilter", "is_event_type", "needles_for", "peek_int"]
