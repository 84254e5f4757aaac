"""The fanotify group's marks: one per planted file's INODE, and the (device, inode) -> path table.

A mark belongs to an inode, not to a name. Marking the planted file itself (never its directory)
means that every name it has is watched — a hard link, a renamed (and renamed back) ~/.aws, a bind
mount, a reopen through /proc/self/fd — and that no other file of the directory (~/.aws/config is
opened by every AWS command) is ever held or even reported. Events are matched to a target by the
(st_dev, st_ino) of the event fd, never by its path.

An atomic replace (temp file, rename) puts a NEW inode at the path. The planter tells us about it
before the rename (`add_new`, with the temp file's fd), so the new version is watched before it is
visible. A replace by anyone else (an editor saving the file) is picked up by `refresh` (the agent
calls it on every change the repair watcher sees, and on every periodic pass).

Each marked inode is pinned with an O_PATH fd (no read access, no fanotify event): it names the
inode for FAN_MARK_REMOVE once it is no longer reachable by path, and it tells whether the inode
still has a name (st_nlink). Per target we keep the inode at the path, a new one being written and
inodes that still have another name (the file renamed away); an inode with no name left (replaced,
deleted, a temp file that was abandoned) is unmarked and unpinned at the next refresh, and at most
MAX_INODES_PER_PATH are kept, oldest dropped first, so stale marks never accumulate.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable

from agent.sensors import _fanotify_abi as abi

log = logging.getLogger(__name__)

MAX_INODES_PER_PATH = 4  # the file at the path, one being written, two renamed away
InodeKey = tuple[int, int]  # (st_dev, st_ino)


@dataclasses.dataclass(slots=True)
class _Mark:
    path: str
    pin: int  # O_PATH fd of the marked inode
    added: float  # monotonic


def _proc_fd(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _key(st: os.stat_result) -> InodeKey:
    return (st.st_dev, st.st_ino)


class InodeMarks:
    """Thread-safe: `lookup` (the reader thread) reads an immutable snapshot, writers hold a lock."""

    def __init__(self, sensor_name: str, mask: int) -> None:
        self._name = sensor_name
        self._mask = mask
        self._lock = threading.Lock()
        self._marks: dict[InodeKey, _Mark] = {}
        self._failed: dict[str, str] = {}  # path -> why its file is not marked right now
        self._paths: frozenset[str] = frozenset()
        self._fan_fd = -1
        self._table: dict[InodeKey, str] = {}  # replaced, never mutated: read without the lock

    def __len__(self) -> int:
        return len(self._table)

    def lookup(self, key: InodeKey) -> str | None:
        """The target path of a marked inode, or None (not ours)."""
        return self._table.get(key)

    def inodes(self) -> dict[InodeKey, str]:
        return dict(self._table)

    def bind(self, fan_fd: int) -> None:
        self._fan_fd = fan_fd

    # -- changes ----------------------------------------------------------------------------------

    def set_paths(self, paths: Iterable[str]) -> None:
        """Watch exactly these targets: unmark what belongs to dropped ones, mark the rest now."""
        wanted = frozenset(paths)
        with self._lock:
            for key, mark in list(self._marks.items()):
                if mark.path not in wanted:
                    self._drop(key)
            self._failed = {p: why for p, why in self._failed.items() if p in wanted}
            self._paths = wanted
            for path in sorted(wanted):
                self._refresh(path)
            self._publish()

    def refresh(self, paths: Iterable[str] | None = None) -> None:
        """Mark the inode now at each path (a replace by someone else) and drop inodes with no name."""
        with self._lock:
            for path in sorted(self._paths if paths is None else set(paths) & self._paths):
                self._refresh(path)
            self._publish()

    def add_new(self, path: str, fd: int) -> None:
        """Mark the file open as `fd` (about to be renamed onto `path`) before anyone can open it."""
        with self._lock:
            self._paths = self._paths | {path}  # a target planted for the first time
            pin = os.open(_proc_fd(fd), os.O_PATH | os.O_CLOEXEC)
            try:
                key = _key(os.fstat(pin))
                if key in self._marks:
                    os.close(pin)
                    return
                self._mark(pin)
            except BaseException:
                os.close(pin)
                raise
            self._marks[key] = _Mark(path, pin, time.monotonic())
            self._failed.pop(path, None)
            self._cap(path)
            self._publish()

    def close(self) -> None:
        """Forget every mark (the group is being closed, which removes the marks themselves)."""
        with self._lock:
            marks, self._marks = self._marks, {}
            self._failed, self._paths, self._table = {}, frozenset(), {}
        for mark in marks.values():
            os.close(mark.pin)

    # -- internals (lock held) --------------------------------------------------------------------

    def _refresh(self, path: str) -> None:
        current = self._mark_path(path)
        for key, mark in list(self._marks.items()):
            if mark.path != path or key == current:
                continue
            try:
                nlink = os.fstat(mark.pin).st_nlink
            except OSError:
                nlink = 0
            if nlink == 0:  # replaced or deleted: nobody can open it by a name any more
                self._drop(key)
        self._cap(path)

    def _mark_path(self, path: str) -> InodeKey | None:
        """Mark the regular file at `path` (never following a symlink there); its key, or None."""
        try:
            pin = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            self._failed.pop(path, None)  # not planted (yet), or renamed away: problems() says which
            return None
        except OSError as exc:
            self._failed[path] = exc.strerror or str(exc)
            return None
        try:
            st = os.fstat(pin)
            if not stat.S_ISREG(st.st_mode):
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                raise OSError(errno.EINVAL, f"{what}; not watched")
            key = _key(st)
            if key in self._marks:
                os.close(pin)
                self._failed.pop(path, None)
                self._marks[key].path = path
                return key
            self._mark(pin)
        except OSError as exc:
            os.close(pin)
            self._failed[path] = exc.strerror or str(exc)
            log.warning("%s cannot watch %s: %s", self._name, path, self._failed[path])
            return None
        self._marks[key] = _Mark(path, pin, time.monotonic())
        self._failed.pop(path, None)
        return key

    def _mark(self, pin: int) -> None:
        # The magic link names exactly the pinned inode, whatever happens to its path meanwhile.
        abi.fanotify_mark(self._fan_fd, abi.FAN_MARK_ADD, self._mask, _proc_fd(pin))

    def _drop(self, key: InodeKey) -> None:
        mark = self._marks.pop(key)
        try:
            abi.fanotify_mark(self._fan_fd, abi.FAN_MARK_REMOVE, self._mask, _proc_fd(mark.pin))
        except OSError as exc:  # ENOENT: no mark left on it (the group was closed, or never marked)
            log.debug("unmark %s (inode %d): %s", mark.path, key[1], exc)
        os.close(mark.pin)

    def _cap(self, path: str) -> None:
        keys = sorted((m.added, k) for k, m in self._marks.items() if m.path == path)
        for _added, key in keys[: max(0, len(keys) - MAX_INODES_PER_PATH)]:
            self._drop(key)

    def _publish(self) -> None:
        self._table = {key: mark.path for key, mark in self._marks.items()}

    # -- health -----------------------------------------------------------------------------------

    def problems(self) -> tuple[str, ...]:
        """'path: why' for every target whose file at the path is not watched right now."""
        with self._lock:
            out = dict(self._failed)
            for path in self._paths - set(out):
                why = self._why_unwatched(path)
                if why:
                    out[path] = why
        return tuple(f"{p}: {why}" for p, why in sorted(out.items()))

    def _why_unwatched(self, path: str) -> str | None:
        try:
            now = os.stat(path, follow_symlinks=False)  # a stat is not an open: no event of our own
        except OSError:
            renamed = any(m.path == path and _has_name(m.pin) for m in self._marks.values())
            if renamed:
                return "missing (renamed away?); the file it named is still watched under its new name"
            return "missing; marked once it is planted again"
        if _key(now) not in self._marks:
            return "replaced since it was marked (new inode); marked again at the next check"
        return None


def _has_name(pin: int) -> bool:
    try:
        return os.fstat(pin).st_nlink > 0
    except OSError:
        return False
