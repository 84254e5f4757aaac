"""The self-test knows itself: reads by `tripkey-agent trigger` are labelled `self_test`.

The trigger reads the planted file itself (to copy it for the AWS CLI, agent.trigger). Before it
does, it writes which process it is — pid and start time — into the state directory; the service
labels a read `self_test` when the reader is that process (same pid and start time) or one of its
children (that pid among the reader's ancestors), while the mark is valid. Only root can write the
state directory, so no other process can claim to be the self-test; a process choosing the name
"tripkey-agent" proves nothing, a pid and start time in a root-only file do.

When the trigger ends, the mark is shortened to a few seconds (the service may still be recording
the read), so a pid reused later is never mistaken for the self-test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.clock import utcnow

log = logging.getLogger(__name__)

SELF_TEST = "self_test"  # the classification of the self-test's own reads
MARK_FILE = "selftest-mark.json"
VALID_WHILE_RUNNING = dt.timedelta(minutes=5)  # longer than the trigger's two AWS CLI calls
GRACE_AFTER_END = dt.timedelta(seconds=10)  # the service may still be recording the read
START_TIME_TOLERANCE = 1.0  # seconds: two ways of reading the same start time from /proc


@dataclasses.dataclass(frozen=True)
class SelftestMark:
    pid: int
    start_time: float | None  # seconds since the epoch, None when unknown
    expires_at: dt.datetime

    def to_json(self) -> str:
        return json.dumps(
            {"pid": self.pid, "start_time": self.start_time, "expires_at": self.expires_at.isoformat()}
        )

    @classmethod
    def from_json(cls, text: str) -> SelftestMark:
        data = json.loads(text)
        start = data.get("start_time")
        return cls(
            pid=int(data["pid"]),
            start_time=None if start is None else float(start),
            expires_at=dt.datetime.fromisoformat(data["expires_at"]),
        )

    def matches(self, event: Any, now: dt.datetime) -> bool:
        """Is `event` (a ReadEvent) a read by the marked process or one of its children?"""
        if now > self.expires_at:
            return False
        if event.pid == self.pid:
            if self.start_time is None or event.start_time is None:
                return True
            return abs(event.start_time.timestamp() - self.start_time) <= START_TIME_TOLERANCE
        return any(ancestor.pid == self.pid for ancestor in event.ancestors)


def own_start_time() -> float | None:
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # psutil cannot read it here: the pid alone still identifies us
        return None


def _write(path: Path, mark: SelftestMark) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(mark.to_json())
    os.replace(temporary, path)


@contextlib.contextmanager
def marked_as_selftest(state_dir: str | os.PathLike[str]) -> Iterator[SelftestMark]:
    """Mark this process as the self-test for the duration of the block."""
    path = Path(state_dir) / MARK_FILE
    mark = SelftestMark(os.getpid(), own_start_time(), utcnow() + VALID_WHILE_RUNNING)
    _write(path, mark)
    try:
        yield mark
    finally:
        try:
            _write(path, dataclasses.replace(mark, expires_at=utcnow() + GRACE_AFTER_END))
        except OSError as exc:  # the mark expires by itself anyway
            log.warning("could not shorten the self-test mark %s: %s", path, exc)


class MarkReader:
    """The service's view of the mark: re-read only when the file changes (one stat per read event)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / MARK_FILE
        self._seen: tuple[int, int, int] | None = None
        self._mark: SelftestMark | None = None

    def current(self) -> SelftestMark | None:
        try:
            st = self.path.stat()
        except OSError:
            self._seen, self._mark = None, None
            return None
        if (st.st_mtime_ns, st.st_ino, st.st_size) != self._seen:
            self._seen = (st.st_mtime_ns, st.st_ino, st.st_size)
            try:
                self._mark = SelftestMark.from_json(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring an unreadable self-test mark %s: %s", self.path, exc)
                self._mark = None
        return self._mark

    def is_selftest(self, event: Any, now: dt.datetime | None = None) -> bool:
        mark = self.current()
        return mark is not None and mark.matches(event, now or utcnow())


__all__ = ["MARK_FILE", "SELF_TEST", "MarkReader", "SelftestMark", "marked_as_selftest"]
