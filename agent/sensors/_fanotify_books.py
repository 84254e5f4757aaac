"""What the fanotify sensor keeps count of: open counts for dedupe, and its health record."""

from __future__ import annotations

import collections
import dataclasses

from agent.sensors import _fanotify_abi as abi
from agent.sensors.base import SensorHealth

OPEN_BITS = abi.FAN_OPEN_PERM | abi.FAN_OPEN
CLOSE_BITS = abi.FAN_CLOSE_NOWRITE | abi.FAN_CLOSE_WRITE
MAX_OPEN_BOOKS = 8192  # (pid, path) open counts kept; cleared if leaked entries ever fill it


class OpenBooks:
    """Dedupe: one open is one ReadEvent(access="open"); closes only balance the books.

    Mask bits are handled independently, so a merged OPEN|CLOSE_NOWRITE record (notification
    mode) is one "open". A close whose open we never saw (the file was opened before the mark
    existed, or the open was lost to overflow) is reported as "close": that reader is not lost.
    Closes of writers (CLOSE_WRITE) balance too. Not thread-safe: the reader thread owns it.
    """

    def __init__(self, limit: int = MAX_OPEN_BOOKS) -> None:
        self._counts: collections.Counter[tuple[int, str]] = collections.Counter()
        self._limit = limit

    def __len__(self) -> int:
        return len(self._counts)

    def note(self, pid: int, path: str, mask: int) -> str | None:
        """The access to report for this record ("open", "close") or None (a balanced close)."""
        key = (pid, path)
        access = None
        if mask & OPEN_BITS:
            if len(self._counts) >= self._limit:
                self._counts.clear()  # opens whose close never came (failed opens): bounded
            self._counts[key] += 1
            access = "open"
        if mask & CLOSE_BITS:
            if self._counts[key] > 0:
                self._counts[key] -= 1
            elif access is None:
                access = "close"
            if self._counts[key] <= 0:
                del self._counts[key]
        return access


@dataclasses.dataclass(frozen=True, slots=True)
class FanotifyHealth(SensorHealth):
    """SensorHealth plus what an operator needs to trust (or distrust) this sensor."""

    pidfd: bool = False  # kernel reports pidfds (FAN_REPORT_PIDFD, Linux 5.15+)
    budget_ms: int = 0
    guard_answered: int = 0  # permission events the fail-open guard had to allow
    max_hold_ms: float = 0.0  # longest a reader was held before its handler allowed it
    events_reported: int = 0
    own_events_skipped: int = 0
    context_missing: int = 0  # reader exited before its exe/context could be read (notify mode)
    callback_errors: int = 0
    response_errors: int = 0  # a failed FAN_ALLOW write (would show a double answer)
    unwatched: tuple[str, ...] = ()  # target directories that could not be marked, with why
    detail: str | None = None
