"""Tamper watcher: notices when a planted section is removed or changed, and has it re-planted.

A watchdog observer watches each target's DIRECTORY (not the file): an atomic replace or a delete
changes the directory entry, and a watch on the file itself would die with the old inode. Only
write-side events are subscribed (create, modify, close-after-write, delete, move); open and
close-without-write are not, so reads of the file never wake the watcher. inotify reports events
about the file without opening it; the inspection that follows is done by the agent's own process,
which the fanotify sensor deliberately skips.

Judging a file costs CPU in proportion to its size, and its owner decides how often it changes: each
file is judged again no sooner than 0.5 s, and no sooner than 10 times the CPU its last judgement
took, so one user appending to a huge file cannot keep the agent busy (and starve its capture
threads of the interpreter); the last change is always judged, only later.

Every change of a target's directory entry is also passed at once to `on_change` (the service
points it at the sensor's `refresh`: a file someone else replaced is a new inode to watch).

The directory itself can be swapped too (`mv ~/.aws elsewhere; ln -s /tmp/x ~/.aws`): inotify tells a
watch that its own directory moved (IN_MOVE_SELF), but watchdog does not pass that on, so the
directory ABOVE each target directory is watched as well (entries only, not recursive), and any
create, delete or move of the target directory's name there counts as losing it.

Our own writes are ignored twice over: nothing is judged while the planter is writing a path, and
afterwards a file whose bytes hash to what the agent last wrote is "ours" (no event). Everything
else is handed to `Planter.ensure`, which decides (tamper? conflict? the user only edited their own
profiles?) and applies the re-plant backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from agent.planting.planter import Planter

log = logging.getLogger(__name__)

MIN_GAP = 0.5  # seconds between two judgements of one file, however cheap
COST_FACTOR = 10.0  # ... and at least this many times the CPU its last judgement took
SLOW_GAP = 5.0  # a gap longer than this is logged (a huge file that keeps changing)
# In the directory above a target directory: its name being created, deleted or moved.
_NAME_EVENTS = [
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
]

_WRITE_EVENTS = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]


def _fs(path: str | bytes) -> str:
    return os.fsdecode(path)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: RepairWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = _fs(event.src_path)
        dest = _fs(getattr(event, "dest_path", "") or "")
        w = self.watcher
        if event.is_directory:
            if event.event_type in ("deleted", "moved") and src in w.watched_dirs:
                w.directory_lost(src)
            return
        if src in w.paths:
            hint = {"deleted": "deleted", "moved": "moved"}.get(event.event_type, "modified")
            w.changed(src)
            w.notify(src, hint)
        if dest and dest in w.paths:
            w.changed(dest)
            w.notify(dest, "modified")  # something was renamed onto the target (atomic replace)


class _ParentHandler(FileSystemEventHandler):
    """Events in the directory above target directories: only their names matter."""

    def __init__(self, watcher: RepairWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        names = {_fs(event.src_path), _fs(getattr(event, "dest_path", "") or "")}
        for directory in names & self.watcher.target_dirs:
            self.watcher.directory_lost(directory)


class RepairWatcher:
    """Watches the targets' directories and asks the planter to repair; one worker thread."""

    def __init__(
        self,
        planter: Planter,
        *,
        debounce: float = 0.2,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.planter = planter
        self.debounce = debounce
        # Told at once (watchdog's thread, before the debounce) that a target's directory entry
        # changed: the sensor re-checks which inode is there now (a replace by someone else).
        self.on_change = on_change
        self.paths: frozenset[str] = frozenset()
        self._watches: dict[str, ObservedWatch] = {}
        self._parent_watches: dict[str, ObservedWatch] = {}
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._pending: dict[str, str] = {}
        self._not_before: dict[str, float] = {}  # monotonic time a path may be judged again
        self._cond = threading.Condition()
        self._watch_lock = threading.RLock()  # set_paths (main thread) vs. the worker's refresh
        self._stale: set[str] = set()  # watched directories that were deleted or moved away
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.handled = 0  # events judged (tests and status)

    @property
    def watched_dirs(self) -> frozenset[str]:
        return frozenset(self._watches)

    @property
    def target_dirs(self) -> frozenset[str]:
        return frozenset(os.path.dirname(p) for p in self.paths)

    def start(self, paths: Iterable[str] = ()) -> None:
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()
        self._thread = threading.Thread(target=self._work, name="tripkey-repair", daemon=True)
        self._thread.start()
        self.set_paths(paths)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._observer is not None:
            with contextlib.suppress(Exception):
                self._observer.stop()
                self._observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def set_paths(self, paths: Iterable[str]) -> None:
        """Watch the directories of these target files (directories that do not exist yet are
        picked up by the next call, e.g. after the planter created ~/.aws)."""
        self.paths = frozenset(os.path.normpath(p) for p in paths)
        with self._cond:
            self._not_before = {p: t for p, t in self._not_before.items() if p in self.paths}
        self._refresh_watches()

    def _refresh_watches(self) -> None:
        with self._watch_lock:
            self._refresh_watches_locked()

    def _refresh_watches_locked(self) -> None:
        if self._observer is None:
            return
        wanted = {os.path.dirname(p) for p in self.paths}
        stale, self._stale = self._stale, set()
        for directory in list(self._watches):
            if directory not in wanted or directory in stale or not os.path.isdir(directory):
                watch = self._watches.pop(directory)
                with contextlib.suppress(Exception):
                    self._observer.unschedule(watch)
        for directory in sorted(wanted - set(self._watches)):
            # A symlinked ~/.aws is refused by the planter (reported there); watching it would
            # put an inotify watch wherever the user pointed it (e.g. /root/.aws).
            if os.path.islink(directory) or not os.path.isdir(directory):
                continue
            try:
                self._watches[directory] = self._observer.schedule(
                    _Handler(self), directory, recursive=False, event_filter=_WRITE_EVENTS
                )
            except OSError as exc:
                log.error("cannot watch %s for tampering: %s", directory, exc)
        self._refresh_parent_watches(wanted)

    def _refresh_parent_watches(self, wanted: set[str]) -> None:
        assert self._observer is not None
        parents = {os.path.dirname(d) for d in wanted} - {""}
        for parent in list(self._parent_watches):
            if parent not in parents or not os.path.isdir(parent):
                with contextlib.suppress(Exception):
                    self._observer.unschedule(self._parent_watches.pop(parent))
        for parent in sorted(parents - set(self._parent_watches)):
            if os.path.islink(parent) or not os.path.isdir(parent):
                continue  # never watch where a user's link points
            try:
                self._parent_watches[parent] = self._observer.schedule(
                    _ParentHandler(self), parent, recursive=False, event_filter=_NAME_EVENTS
                )
            except OSError as exc:
                log.warning("cannot watch %s for a swapped target directory: %s", parent, exc)

    def directory_lost(self, directory: str) -> None:
        """The watched directory itself was deleted or moved: every target in it is gone.

        Runs on watchdog's dispatch thread, so the dead watch is only marked here; the worker
        replaces it (a re-created directory is a new inode that needs a new watch)."""
        with self._watch_lock:
            self._stale.add(directory)
        for path in self.paths:
            if os.path.dirname(path) == directory:
                self.changed(path)
                self.notify(path, "deleted")

    def changed(self, path: str) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(path)
        except Exception:
            log.exception("change hook for %s failed", path)

    def notify(self, path: str, hint: str) -> None:
        with self._cond:
            # A delete/move is more telling than a later "modified" for the same burst.
            if self._pending.get(path) not in ("deleted", "moved"):
                self._pending[path] = hint
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._ready_locked():
                    self._cond.wait(self._wait_locked())
                if self._stopping:
                    return
            time.sleep(self.debounce)  # let a burst (temp write + rename) settle
            with self._cond:
                now = time.monotonic()
                batch = {p: h for p, h in self._pending.items() if self._not_before.get(p, 0.0) <= now}
                for path in batch:
                    del self._pending[path]
            for path, hint in batch.items():
                started = time.thread_time()
                try:
                    self._judge(path, hint)
                except Exception:  # the watcher must survive anything one file throws at it
                    log.exception("repair of %s failed", path)
                self._space_out(path, time.thread_time() - started)
            self._refresh_watches()

    def _ready_locked(self) -> bool:
        now = time.monotonic()
        return any(self._not_before.get(p, 0.0) <= now for p in self._pending)

    def _wait_locked(self) -> float | None:
        """Until the earliest deferred change may be judged (None: nothing pending)."""
        if not self._pending:
            return None
        return max(0.0, min(self._not_before.get(p, 0.0) for p in self._pending) - time.monotonic())

    def _space_out(self, path: str, cpu_seconds: float) -> None:
        """Judge this file again no sooner than max(MIN_GAP, COST_FACTOR x what judging it cost).

        Inspecting a file costs CPU in proportion to its size (2 s for 10,000 profiles), and the
        file's owner decides how often it changes. Spaced out like this, one user appending to a
        huge file three times a second costs the agent at most ~1/COST_FACTOR of a core, and the
        last change is always judged (it waits in `_pending`), only later."""
        gap = max(MIN_GAP, COST_FACTOR * cpu_seconds)
        with self._cond:
            self._not_before[path] = time.monotonic() + gap
        if gap > SLOW_GAP:
            log.info("%s took %.2f s of CPU to inspect; inspecting it at most every %.0f s", path,
                     cpu_seconds, gap)  # fmt: skip

    def _judge(self, path: str, hint: str) -> None:
        if self.planter.is_writing(path):
            return  # our own write in progress; its digest is recorded when it finishes
        if self.planter.is_own_content(path):
            return
        target = self.planter.target(path)
        if target is None:
            return
        self.handled += 1
        log.info("%s changed (%s); inspecting", path, hint)
        self.planter.ensure(target, hint=hint)


__all__ = ["RepairWatcher"]
