"""Linux fanotify sensor: who opened a planted file, captured while the kernel holds the reader.

Threads (none of them ever opens a marked file by path, which would deadlock on our own mark):

  reader    drains the fanotify fd (non-blocking + poll with a wake pipe), parses records, and
            for every permission event registers it with the guard *before* anything else. Our
            own pid, inodes unmarked a moment ago, and duplicates are allowed at once; events
            for planted files go to the capture workers. It never blocks on anything slow, so
            every event reaches the guard even while captures or the callback stall.
  capture   reads the reader's /proc context (tied to it by the pidfd when the kernel reports
            one), then answers FAN_ALLOW — always — and closes the event fds. The ReadEvent is
            built afterwards and queued for the dispatcher.
  guard     answers FAN_ALLOW for any permission event still unanswered after `budget` seconds
            (default 0.1), so a stalled capture can never hang a user's program.
  dispatch  calls the callback. It runs after the reader was allowed, so a slow callback delays
            nobody's open(); events wait in a bounded queue (overflow counted as lost).

Marks go on each planted file's INODE (agent.sensors._fanotify_marks): every name of the file is
watched (hard links, a renamed ~/.aws, bind mounts, /proc/self/fd) and nothing else in the directory
is ever held. Events are matched to targets by the event fd's (device, inode), never by path. An
atomic replace by the agent is marked before the rename (`watch_new_file`); one by anyone else at
the next `refresh` (the agent calls it when its repair watcher sees the file change).

Dedupe (see OpenBooks): one open is one ReadEvent(access="open"); a close whose open we never
saw is reported as access="close".
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable

from agent import osflags
from agent.clock import utcnow
from agent.events.model import ReadEvent
from agent.sensors import _fanotify_abi as abi
from agent.sensors import _fanotify_group as group
from agent.sensors import _procinfo as procinfo
from agent.sensors._fanotify_books import FanotifyHealth, OpenBooks
from agent.sensors._fanotify_guard import PermissionGuard, renice_current_thread
from agent.sensors._fanotify_marks import InodeMarks
from agent.sensors.base import Capabilities, DeadmanPetter, ReadCallback, Sensor, SensorUnavailable

log = logging.getLogger(__name__)

__all__ = ["FanotifyHealth", "FanotifyNotifySensor", "FanotifySensor"]

CaptureFunc = Callable[[int, int | None], procinfo.ProcContext]
READ_BUFFER = 4096  # ≤128 records per read: bounds the fds the kernel installs at once
SWITCH_INTERVAL = 0.0005  # seconds; see FanotifySensor.__init__
DEADMAN_SLACK = 0.25  # a reader still held this long past the budget means the guard is wedged


@dataclasses.dataclass(frozen=True, slots=True)
class _Work:
    event: abi.RawEvent
    path: str
    access: str
    time: dt.datetime


class FanotifySensor(Sensor):
    """fanotify permission events: context captured while the reader is held, then always allowed."""

    name = "fanotify"
    mode = "permission"
    capabilities = Capabilities(has_pid=True, has_cmdline=True, has_ancestors=True, blocks_reader=True)
    _init_class = abi.FAN_CLASS_CONTENT
    _mark_mask = abi.FAN_OPEN_PERM | abi.FAN_CLOSE_NOWRITE | abi.FAN_CLOSE_WRITE

    def __init__(
        self,
        paths: Iterable[str],
        callback: ReadCallback,
        *,
        budget: float = 0.1,
        capture_workers: int = 2,
        max_queued: int = 10000,
        capture: CaptureFunc | None = None,
        nice: int | None = -10,
        switch_interval: float | None = SWITCH_INTERVAL,
    ) -> None:
        super().__init__(paths, callback)
        if budget <= 0:
            raise ValueError("budget must be > 0 seconds")
        self.budget = budget
        # Readers wait on these threads: on a busy host a higher priority cut the longest hold
        # from ~35 ms to ~10 ms in bench runs (load 8 on 2 cores). None leaves priority alone.
        self.nice = nice
        # The capture threads share the interpreter lock with everything else the agent does. A
        # thread that parses a big file holds it for up to sys.getswitchinterval() (5 ms) each
        # time a capture thread wants it back, and a capture wants it back after each of its
        # ~100 /proc syscalls: 10,000-profile inspections made captures miss the budget (half the
        # readers of a 300-reader run were let through unattributed). At 0.5 ms the same run had
        # none (bench_sensors' churn scenario). None leaves the interpreter's setting alone.
        self.switch_interval = switch_interval
        self._previous_switch: float | None = None
        self._capture = capture or procinfo.capture
        self._marks = InodeMarks(self.name, self._mark_mask)
        self._fan_fd = -1
        self._fd_lock = threading.Lock()  # the group fd is closed once, by stop() or _fail_open()
        self._wake_r = self._wake_w = -1
        self._pidfd = False
        self._guard: PermissionGuard | None = None
        self._threads: list[threading.Thread] = []
        self._work_q: queue.Queue[_Work | None] = queue.Queue(maxsize=1024)
        self._dispatch_q: queue.Queue[ReadEvent | None] = queue.Queue(maxsize=max_queued)
        self._workers = max(1, capture_workers)
        self._open_books = OpenBooks()  # reader thread only
        self._own_pid = os.getpid()
        self._started = self._stopped = False
        self._fatal: str | None = None
        self._petter: DeadmanPetter | None = None
        self._next_pet = 0.0
        self._stats_lock = threading.Lock()  # counters bumped from several threads
        self._lost = self._reported = self._own_skipped = self._missing = self._cb_errors = 0

    # -- availability -------------------------------------------------------------------------

    @classmethod
    def check_available(cls) -> str | None:
        if not osflags.LINUX:
            return f"{cls.name} exists only on Linux"
        return group.probe(cls.name, cls._init_class)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            raise RuntimeError("sensor already started")
        if not osflags.LINUX:
            raise SensorUnavailable(f"{self.name} exists only on Linux")
        self._fan_fd, self._pidfd = group.open_group(self.name, self._init_class)
        self._started = True
        if self.switch_interval is not None:
            self._previous_switch = sys.getswitchinterval()
            sys.setswitchinterval(min(self.switch_interval, self._previous_switch))
        try:
            abi.raise_nofile_limit()
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            self._guard = PermissionGuard(self._fan_fd, self.budget, nice=self.nice)
            self._marks.bind(self._fan_fd)
            self._marks.set_paths(self.paths)
            self._spawn("reader", self._read_loop)
            for n in range(self._workers):
                self._spawn(f"capture-{n}", self._capture_loop)
            self._spawn("dispatch", self._dispatch_loop)
        except BaseException:
            self.stop()  # never leave a group (holding readers) behind a failed start
            raise
        log.info(
            "%s sensor started (mode=%s, pidfd=%s, budget=%d ms) watching %d file(s), %d inode(s)",
            self.name, self.mode, self._pidfd, self.budget * 1000, len(self.paths), len(self._marks),
        )  # fmt: skip

    def _spawn(self, role: str, target: Callable[[], None]) -> None:
        def run() -> None:
            renice_current_thread(self.nice)
            target()

        thread = threading.Thread(target=run, name=f"tripkey-{self.name}-{role}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        if not self._started or self._stopped:
            return
        self._stopped = True
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        for thread in self._threads:
            if thread.name.endswith("-reader"):
                thread.join(timeout=5)
        # A stalled capture or callback is abandoned (daemon thread), never awaited for long.
        for stage, q in (("-capture-", self._work_q), ("-dispatch", self._dispatch_q)):
            stage_threads = [t for t in self._threads if stage in t.name]
            for _ in stage_threads:  # one sentinel per thread, any thread may take any one
                with contextlib.suppress(queue.Full):
                    q.put(None, timeout=self.budget + 1)
            deadline = time.monotonic() + self.budget + 1
            for thread in stage_threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._drain_abandoned_work()
        if self._guard is not None:
            self._guard.close()  # allows whatever is still pending, exactly once
        self._close_group()  # closing the group allows the rest
        self._marks.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        if self._previous_switch is not None:
            sys.setswitchinterval(self._previous_switch)
        log.info("%s sensor stopped", self.name)

    def _drain_abandoned_work(self) -> None:
        """Records queued behind a capture worker that never came back: answer them and close their
        fds (they would leak), and count them as lost, since nobody will capture them now."""
        while True:
            try:
                work = self._work_q.get_nowait()
            except queue.Empty:
                return
            if work is None:  # a stop sentinel the stalled worker never took
                continue
            self._finish(work.event)
            with self._stats_lock:
                self._lost += 1

    # -- marks ----------------------------------------------------------------------------------

    def set_paths(self, paths: Iterable[str]) -> None:
        """Watch exactly these files; also marks a file someone else replaced since (a new inode)."""
        self.paths = frozenset(paths)
        if self._started and not self._stopped:
            self._marks.set_paths(self.paths)

    def refresh(self, paths: Iterable[str] | None = None) -> None:
        """Re-check what is at each path now (cheap: one stat each); the agent calls it on changes."""
        if self._started and not self._stopped:
            self._marks.refresh(paths)

    def watch_new_file(self, path: str, fd: int) -> None:
        """Mark the new version of `path` (open as `fd`, not yet renamed into place)."""
        if self._started and not self._stopped:
            self._marks.add_new(path, fd)
            self.paths = self.paths | {path}

    # -- reader thread --------------------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            self._drain()
        except BaseException as exc:  # a dead reader would leave readers queued in the kernel
            self._fail_open(f"reader thread crashed: {type(exc).__name__}: {exc}")
            raise
        finally:
            petter, self._petter = self._petter, None
            if petter is not None:  # nothing is answered here any more: the agent pets
                petter.release()

    def _drain(self) -> None:
        poller = select.poll()
        poller.register(self._fan_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopped:
            petter = self._petter
            # Idle, this thread wakes only to pet the deadman (every timeout/3), or never.
            ready = {fd for fd, _ in poller.poll(-1 if petter is None else petter.interval * 1000)}
            self._pet_if_alive()
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 64)
                continue  # stop (the loop ends) or a deadman was attached (pet from now on)
            if self._fan_fd not in ready:
                continue
            try:
                data = os.read(self._fan_fd, READ_BUFFER)
            except BlockingIOError:
                continue
            except OSError as exc:  # e.g. EMFILE: the kernel could not install an event fd
                log.error("%s read failed: %s", self.name, exc)
                with self._stats_lock:
                    self._lost += 1
                time.sleep(0.01)
                continue
            try:
                events = abi.parse_events(data)
            except abi.FanotifyAbiError as exc:
                for event in exc.events:  # type: ignore[attr-defined]
                    self._handle(event)
                self._fail_open(f"cannot parse fanotify events: {exc}")
                return
            for event in events:
                self._handle(event)

    # -- deadman ----------------------------------------------------------------------------------

    def attach_deadman(self, petter: DeadmanPetter) -> bool:
        """Pet from the reader thread, the one every permission event passes through first."""
        if not self._started or self._stopped or self._fatal is not None:
            return False
        self._petter = petter
        self._next_pet = 0.0
        os.write(self._wake_w, b"p")  # the reader may be asleep in poll() with no timeout
        return True

    def _pet_if_alive(self) -> None:
        """Pet if this thread runs AND the guard keeps its promise (no reader held well past the
        budget): a wedged guard or reader stops the pets, and the deadman kills the process."""
        petter = self._petter
        now = time.monotonic()
        if petter is None or now < self._next_pet:
            return
        self._next_pet = now + petter.interval
        assert self._guard is not None
        late = self._guard.overdue(slack=max(self.budget, DEADMAN_SLACK))
        if late:
            log.error("%s: %d reader(s) held past the fail-open budget; not petting the deadman",
                      self.name, late)  # fmt: skip
            return
        petter.pet()

    def _fail_open(self, reason: str) -> None:
        """Stop sensing loudly and let every held and queued reader through (closing the group)."""
        self._fatal = reason
        log.critical("%s sensor stopped sensing: %s; readers are allowed, reads are NOT recorded",
                     self.name, reason)  # fmt: skip
        if self._guard is not None:
            self._guard.close()  # no response is written after this, so the fd can go
        self._close_group()

    def _close_group(self) -> None:
        # Once only: a second close could hit a reused fd number that is no longer ours.
        with self._fd_lock:
            fd, self._fan_fd = self._fan_fd, -1
        if fd >= 0:
            os.close(fd)

    def _handle(self, event: abi.RawEvent) -> None:
        """Route one record; unless a capture worker took it, answer and close it here, once."""
        handed_off = False
        try:
            handed_off = self._route(event)
        except Exception:  # one bad record must not stop the reader: allow it, go on
            log.exception("%s: handling a record failed", self.name)
        if not handed_off:
            self._finish(event)

    def _route(self, event: abi.RawEvent) -> bool:
        """True if the record went to a capture worker (which then owns answering and closing)."""
        if event.overflow:
            with self._stats_lock:
                self._lost += 1  # the kernel dropped at least one event; never ignored
            log.warning("%s: kernel event queue overflowed; reads were lost", self.name)
            return False
        if event.fd < 0:
            return False
        assert self._guard is not None
        if event.permission:
            self._guard.register(event.fd)  # from now on the reader is answered within budget
        if event.pid == self._own_pid:
            self._own_skipped += 1
            return False
        path = self._marks.lookup(abi.event_inode(event.fd))
        if path is None:  # an inode unmarked a moment ago: nothing of ours
            return False
        access = self._dedupe(event, path)
        if access is None:
            return False
        work = _Work(event, path, access, utcnow())
        try:
            self._work_q.put_nowait(work)
        except queue.Full:  # captures are stalled: report the pid we have, allow now
            self._emit(work, procinfo.ProcContext(pid=event.pid, gone=True))
            return False
        return True

    def _dedupe(self, event: abi.RawEvent, path: str) -> str | None:
        return self._open_books.note(event.pid, path, event.mask)

    def _finish(self, event: abi.RawEvent) -> None:
        """Answer (exactly once, via the guard's books) and close every fd of the record."""
        if event.permission and event.fd >= 0 and self._guard is not None:
            self._guard.answer(event.fd)
        for fd in event.owned_fds():
            try:
                os.close(fd)
            except OSError as exc:
                log.error("closing event fd %d: %s", fd, exc)

    # -- capture and dispatch -------------------------------------------------------------------

    def _capture_loop(self) -> None:
        while (work := self._work_q.get()) is not None:
            try:
                self._capture_one(work)
            except Exception:  # the worker must survive anything one event does
                log.exception("%s: capture worker error", self.name)

    def _capture_one(self, work: _Work) -> None:
        event = work.event
        pidfd = event.pidfd if event.pidfd is not None and event.pidfd >= 0 else None
        try:
            if event.pidfd == abi.FAN_NOPIDFD:  # reaped already: /proc/<pid> may be someone else
                context = procinfo.ProcContext(pid=event.pid, gone=True)
            else:
                context = self._capture(event.pid, pidfd)
        except Exception:
            log.exception("capturing context of pid %d failed", event.pid)
            context = procinfo.ProcContext(pid=event.pid, gone=True)
        finally:
            self._finish(event)  # ALWAYS allow, after the capture
        self._emit(work, context)

    def _emit(self, work: _Work, ctx: procinfo.ProcContext) -> None:
        if ctx.gone or ctx.exe is None:  # exited (or a zombie) before we could read it
            with self._stats_lock:
                self._missing += 1
        read = ReadEvent(
            time=work.time,
            path=work.path,
            pid=work.event.pid,
            sensor=self.name,
            access=work.access,
            ppid=ctx.ppid,
            exe=ctx.exe,
            cmdline=ctx.cmdline,
            uid=ctx.uid,
            user=ctx.user,
            start_time=ctx.start_time,
            cwd=ctx.cwd,
            ancestors=ctx.ancestors,
        )
        try:
            self._dispatch_q.put_nowait(read)
        except queue.Full:
            with self._stats_lock:
                self._lost += 1
            log.error("%s: callback is not keeping up; a read event was dropped", self.name)

    def _dispatch_loop(self) -> None:
        while (read := self._dispatch_q.get()) is not None:
            try:
                self.callback(read)
                self._reported += 1
            except Exception:
                self._cb_errors += 1
                log.exception("%s callback failed for pid %d", self.name, read.pid)

    # -- health ---------------------------------------------------------------------------------

    def health(self) -> FanotifyHealth:
        unwatched = self._marks.problems() if self._started and not self._stopped else ()
        running = self._started and not self._stopped and self._fatal is None
        error = self._fatal or ("cannot watch " + "; ".join(unwatched) if unwatched else None)
        if not self._started:
            error = error or "not started"
        elif self._stopped:
            error = error or "stopped"
        return FanotifyHealth(
            name=self.name,
            mode=self.mode,
            healthy=running and not unwatched,
            error=error,
            lost_events=self._lost,
            weaker=self.capabilities.weaker,
            pidfd=self._pidfd,
            budget_ms=round(self.budget * 1000),
            guard_answered=self._guard.guard_answered if self._guard else 0,
            max_hold_ms=round(self._guard.max_hold * 1000, 3) if self._guard else 0.0,
            events_reported=self._reported,
            own_events_skipped=self._own_skipped,
            context_missing=self._missing,
            callback_errors=self._cb_errors,
            response_errors=self._guard.write_errors if self._guard else 0,
            unwatched=unwatched,
            detail=self._detail(),
        )

    def _detail(self) -> str | None:
        return None if self._pidfd or not self._started else "kernel reports no pidfd (Linux < 5.15)"


class FanotifyNotifySensor(FanotifySensor):
    """Notification-only fanotify for hosts that forbid permission events: weaker by design.

    The reader is not held, so a short-lived one may exit before its context is read; such
    events keep the pid (and whatever else could be read) and are counted in context_missing.
    """

    name = "fanotify-notify"
    mode = "notify"
    capabilities = Capabilities(
        has_pid=True, has_cmdline=True, has_ancestors=True, blocks_reader=False, weaker=True
    )
    _init_class = abi.FAN_CLASS_NOTIF
    _mark_mask = abi.FAN_OPEN | abi.FAN_CLOSE_NOWRITE | abi.FAN_CLOSE_WRITE

    def attach_deadman(self, petter: DeadmanPetter) -> bool:
        """No reader is ever held: the agent pets (on the deadman's relaxed timeout)."""
        return False

    def _detail(self) -> str | None:
        base = "notification-only (weaker): readers are not held, context may be missing for short-lived ones"
        extra = super()._detail()
        return f"{base}; {extra}" if extra else base
