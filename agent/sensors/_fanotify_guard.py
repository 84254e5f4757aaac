"""Fail-open guard for fanotify permission events: every held reader is answered, exactly once.

The books are a dict of pending event fds under one condition variable. The handler that owns an
event fd pops it (answering if nobody did) BEFORE closing the fd, so the guard can never write a
response for a closed, possibly reused, fd number; the guard only writes, never closes. An entry
the guard answered stays in the books (marked) until its handler pops it, so a late handler sees
`answered` and does not write a second response.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

from agent.sensors import _fanotify_abi as abi

log = logging.getLogger(__name__)
LOG_EVERY = 1.0  # seconds between fail-open warnings: a stalled host is not also flooded with logs


@dataclasses.dataclass(slots=True)
class _Pending:
    registered: float
    deadline: float
    answered: bool = False


def renice_current_thread(nice: int | None) -> None:
    """Give the calling thread (not the process) this nice value; best effort, needs root to raise."""
    if nice is None:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:
        log.debug("cannot set nice %d on %s: %s", nice, threading.current_thread().name, exc)


class PermissionGuard:
    """Answers FAN_ALLOW for events not answered by their handler within `budget` seconds."""

    def __init__(self, fan_fd: int, budget: float, nice: int | None = None) -> None:
        self._fan_fd = fan_fd
        self._budget = budget
        self._cond = threading.Condition()
        self._pending: dict[int, _Pending] = {}
        self._closed = False
        self.guard_answered = 0
        self.write_errors = 0
        self.max_hold = 0.0  # longest a reader waited for its handler's answer (seconds)
        self._nice = nice
        self._thread = threading.Thread(target=self._run, name="tripkey-fanotify-guard", daemon=True)
        self._thread.start()

    def register(self, fd: int) -> None:
        with self._cond:
            if self._fd_is_pending(fd):  # a handler closed it unanswered (a bug): never strand it
                log.error("event fd %d registered twice; answering the stale entry", fd)
                self._write_allow(fd)
            now = time.monotonic()
            self._pending[fd] = _Pending(registered=now, deadline=now + self._budget)
            self._cond.notify()

    def _fd_is_pending(self, fd: int) -> bool:
        entry = self._pending.get(fd)
        return entry is not None and not entry.answered

    def answer(self, fd: int) -> bool:
        """The handler's answer. True if this call wrote the response, False if the guard had."""
        with self._cond:
            entry = self._pending.pop(fd, None)
            if entry is None or entry.answered:
                return False
            entry.answered = True
            self._write_allow(fd)
            self.max_hold = max(self.max_hold, time.monotonic() - entry.registered)
            return True

    def overdue(self, slack: float) -> int:
        """Readers still held more than `slack` seconds past their deadline (a wedged guard)."""
        limit = time.monotonic() - slack
        with self._cond:
            return sum(1 for e in self._pending.values() if not e.answered and e.deadline < limit)

    @property
    def pending(self) -> int:
        with self._cond:
            return sum(1 for e in self._pending.values() if not e.answered)

    def close(self) -> None:
        """Allow everything still held, stop the guard thread. Safe to call twice."""
        with self._cond:
            if self._closed:
                return
            for fd, entry in self._pending.items():
                if not entry.answered:
                    entry.answered = True
                    self._write_allow(fd)
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _write_allow(self, fd: int) -> None:
        if self._closed:
            return
        try:
            os.write(self._fan_fd, abi.allow_response(fd))
        except OSError as exc:  # ENOENT: the kernel holds no such event (already answered)
            self.write_errors += 1
            log.error("fanotify response for fd %d failed: %s", fd, exc)

    def _run(self) -> None:
        renice_current_thread(self._nice)  # the fail-safe must run promptly on a busy host
        unlogged, last_log = 0, -LOG_EVERY
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                late, timeout = self._expire(now)
                if not late:
                    if unlogged:  # wake up to report them even if nothing else expires
                        flush_in = max(0.0, last_log + LOG_EVERY - now)
                        timeout = flush_in if timeout is None else min(timeout, flush_in)
                    self._cond.wait(timeout)
            unlogged += late
            if unlogged and time.monotonic() - last_log >= LOG_EVERY:  # outside the lock
                log.warning("fail-open: allowed %d reader(s) after %.0f ms (handler stalled)",
                            unlogged, self._budget * 1000)  # fmt: skip
                unlogged, last_log = 0, time.monotonic()

    def _expire(self, now: float) -> tuple[int, float | None]:
        """Answer every overdue entry; return how many, and the wait until the next deadline."""
        late = 0
        next_deadline: float | None = None
        for fd, entry in self._pending.items():
            if entry.answered:
                continue
            if entry.deadline <= now:
                entry.answered = True
                self._write_allow(fd)
                self.guard_answered += 1
                late += 1
            elif next_deadline is None or entry.deadline < next_deadline:
                next_deadline = entry.deadline
        return late, None if next_deadline is None else next_deadline - now
