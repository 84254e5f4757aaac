"""Which inodes the eBPF sensor watches, and which planted path each one stands for.

The kernel matches (s_dev, i_ino); a record names only that. This keeps the planted path for each
watched inode, mirrors every change into the `watched` map, and remembers recently unwatched
inodes so a record already in the ring buffer still gets its path.

Inode numbers are reused: after an atomic replace the old inode is freed, and the next new file
on that filesystem (say, the planter's next temp file, or any user's file) may get its number.
So every watched inode is pinned by an O_PATH descriptor held here: while we hold it the inode
cannot be freed, so its number cannot name another file. Watches of inodes no longer linked at
their target path are dropped (and their descriptor closed) at the next set_paths().

Two sources of watches:
  paths      set_paths(): each target path's current inode (opened O_PATH: no read, no open of
             its content, so watching never needs read permission nor counts as an open).
  explicit   watch(): an inode named before it is visible at its path (the planter's temp file,
             watched before the rename makes it the target, so no reader can open it unseen).
             It lasts while its path is a target and the inode is still linked (or until unwatch()).
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from collections.abc import Iterable
from typing import Protocol

from agent.sensors._ebpf_records import file_key, identity_of_fd

Key = tuple[int, int]  # (s_dev in the kernel's encoding, i_ino)
MAX_RETIRED = 1024  # unwatched inodes still named for records already in the ring
_PIN_FLAGS = os.O_PATH | os.O_CLOEXEC


class WatchedMap(Protocol):
    def update(self, key: bytes, value: bytes, flags: int = 0) -> None: ...
    def delete(self, key: bytes) -> bool: ...


def pin(target: str | os.PathLike[str] | int) -> tuple[Key, int]:
    """(kernel identity, an O_PATH descriptor we own) for a path or for an fd the caller keeps."""
    fd = os.open(f"/proc/self/fd/{target}" if isinstance(target, int) else target, _PIN_FLAGS)
    try:
        return identity_of_fd(fd), fd
    except BaseException:
        os.close(fd)
        raise


def _linked(fd: int) -> bool:
    try:
        return os.fstat(fd).st_nlink > 0
    except OSError:
        return False


class Watches:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # writers; the poll thread reads the dicts swapped in whole
        self._inodes: dict[Key, str] = {}
        self._pins: dict[Key, int] = {}  # an O_PATH fd per watched inode (missing: watch_inode)
        self._explicit: set[Key] = set()
        self._retired: collections.OrderedDict[Key, str] = collections.OrderedDict()
        self._map: WatchedMap | None = None
        self.problems: tuple[str, ...] = ()  # targets that could not be watched, with why

    def __len__(self) -> int:
        return len(self._inodes)

    def inode_keys(self) -> list[Key]:
        return list(self._inodes)

    def attach(self, kernel_map: WatchedMap | None) -> None:
        """From now on (None: no longer) every change is written to the kernel's map too."""
        with self._lock:
            self._map = kernel_map

    def set_paths(self, paths: Iterable[str]) -> None:
        targets = frozenset(paths)
        found: dict[Key, tuple[str, int]] = {}
        problems: list[str] = []
        for path in sorted(targets):
            try:
                key, fd = pin(path)
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror or exc}")
                continue
            if key in found:
                os.close(fd)  # two targets, one inode (hard links): the first path names it
            else:
                found[key] = (path, fd)
        with self._lock:
            inodes = {key: path for key, (path, _fd) in found.items()}
            for key in list(self._explicit):
                waiting = self._inodes.get(key)
                pinned = self._pins.get(key)
                if waiting in targets and key not in inodes and pinned is not None and _linked(pinned):
                    inodes[key] = waiting  # still waiting for its rename
                elif key not in inodes:
                    self._explicit.discard(key)
            new_pins = {key: fd for key, (_path, fd) in found.items()}
            self.problems = tuple(problems)
            self._apply(inodes, new_pins)

    def watch(self, key: Key, path: str, fd: int | None) -> None:
        """Watch `key` as `path`; `fd` (ours to keep, or None) pins it. Earlier inodes of the same
        path that have been unlinked since (replaced by a rename) are dropped now."""
        with self._lock:
            self._explicit.add(key)
            inodes = {
                k: p for k, p in self._inodes.items()
                if p != path or k == key or (k in self._pins and _linked(self._pins[k]))
            }  # fmt: skip
            self._explicit &= inodes.keys() | {key}
            self._apply({**inodes, key: path}, {key: fd} if fd is not None else {})

    def unwatch(self, key: Key) -> None:
        with self._lock:
            self._explicit.discard(key)
            self._apply({k: p for k, p in self._inodes.items() if k != key}, {})

    def close(self) -> None:
        with self._lock:
            for fd in self._pins.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pins.clear()

    def path_of(self, dev: int, ino: int) -> str:
        key = (dev, ino)
        path = self._inodes.get(key) or self._retired.get(key)
        return path if path is not None else f"<inode {dev >> 20}:{dev & 0xFFFFF}:{ino}>"

    def _apply(self, inodes: dict[Key, str], new_pins: dict[Key, int]) -> None:
        """Make the watched set (and the kernel's map) equal `inodes`; the caller holds the lock.
        `new_pins` are fresh descriptors: kept for new or unpinned keys, closed otherwise."""
        old = self._inodes
        if self._map is not None:
            for key in inodes.keys() - old.keys():
                self._map.update(file_key(*key), b"\1\0\0\0")
            for key in old.keys() - inodes.keys():
                self._map.delete(file_key(*key))
        for key, fd in new_pins.items():
            if key in inodes and key not in self._pins:
                self._pins[key] = fd
            else:
                os.close(fd)
        for key in old.keys() - inodes.keys():
            # unwatched in the kernel first, then unpinned: the number is free only once unwatched
            pin_fd = self._pins.pop(key, None)
            if pin_fd is not None:
                os.close(pin_fd)
            self._retired[key] = old[key]
            while len(self._retired) > MAX_RETIRED:
                self._retired.popitem(last=False)
        self._inodes = dict(inodes)  # swapped whole: readers never see it half changed
