"""The fanotify group's marks: one per target's parent directory, remembered by inode.

A mark belongs to an inode, not a path. If a target directory is deleted (or renamed away) and
made again, the mark stays on the dead inode and nothing in the new directory is seen until the
directory is marked again (the agent's periodic pass calls set_paths, which does that). Until then
`problems()` says so, so status never claims to watch what it does not.

To tell, each marked directory is held open with O_PATH (no read access, no fanotify event): the
held inode cannot be freed, so its number is never reused by a directory made in its place (a
recreated directory often gets the same number otherwise), and a deleted one shows st_nlink 0.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

from agent.sensors import _fanotify_abi as abi

log = logging.getLogger(__name__)


class DirectoryMarks:
    def __init__(self, sensor_name: str, mask: int) -> None:
        self._name = sensor_name
        self._mask = mask
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # marked directory -> O_PATH fd of the inode we marked
        self._failed: dict[str, str] = {}  # directory -> why it could not be marked

    def __len__(self) -> int:
        return len(self._held)

    def apply(self, fan_fd: int, directories: Iterable[str]) -> None:
        """Mark every wanted directory (again: a replaced one is a new inode), unmark the rest."""
        wanted = set(directories)
        held: dict[str, int] = {}
        failed: dict[str, str] = {}
        with self._lock:
            for directory in sorted(wanted):
                try:
                    held[directory] = self._mark(fan_fd, directory)
                except OSError as exc:
                    failed[directory] = exc.strerror or str(exc)
                    log.warning("%s cannot watch %s: %s", self._name, directory, exc.strerror)
            for directory in set(self._held) - wanted:
                try:
                    abi.fanotify_mark(fan_fd, abi.FAN_MARK_REMOVE, self._mask, directory)
                except OSError as exc:  # gone already: its mark went with the inode
                    log.debug("unmark %s: %s", directory, exc)
            old, self._held, self._failed = self._held, held, failed
        for fd in old.values():
            os.close(fd)

    def _mark(self, fan_fd: int, directory: str) -> int:
        before = os.stat(directory)
        abi.fanotify_mark(fan_fd, abi.FAN_MARK_ADD | abi.FAN_MARK_ONLYDIR, self._mask, directory)
        fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if not _same_inode(os.fstat(fd), before):  # swapped while we marked: report, retry later
            os.close(fd)
            raise OSError(0, "replaced while it was being marked")
        return fd

    def close(self) -> None:
        with self._lock:
            held, self._held, self._failed = self._held, {}, {}
        for fd in held.values():
            os.close(fd)

    def problems(self) -> tuple[str, ...]:
        """'directory: why' for every wanted directory that is not watched right now."""
        with self._lock:  # held fds stay open while we look
            out = dict(self._failed)
            for directory, fd in self._held.items():
                why = _why_unwatched(directory, fd)
                if why:
                    out[directory] = why
        return tuple(f"{d}: {why}" for d, why in sorted(out.items()))


def _same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _why_unwatched(directory: str, fd: int) -> str | None:
    marked = os.fstat(fd)
    try:
        now = os.stat(directory)  # a stat is not an open: no event of our own
    except OSError:
        now = None
    if now is None:
        return "removed since it was marked; marked again once it is planted again"
    if marked.st_nlink == 0 or not _same_inode(marked, now):
        return "replaced since it was marked (new inode); marked again at the next check"
    return None
