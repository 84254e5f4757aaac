"""Which inodes the eBPF sensor watches, and which planted path each one stands for.

The kernel matches (s_dev, i_ino); a record names only that. This keeps the planted path for each
watched inode, mirrors every change into the `watched` map, and remembers recently unwatched
inodes so a record already in the ring buffer still gets its path.

Two sources of watches:
  paths      set_paths(): each target path's current inode (resolved by O_PATH, no open).
  explicit   watch(): an inode named before it is visible at its path: the planter's temp file,
             watched before the rename makes it the target, so no reader can open the new file
             unseen. An explicit watch lasts while its path is a target (or until unwatch()).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable
from typing import Protocol

from agent.sensors._ebpf_records import file_key, identity_of_path

Key = tuple[int, int]  # (s_dev in the kernel's encoding, i_ino)
MAX_RETIRED = 1024  # unwatched inodes still named for records already in the ring


class WatchedMap(Protocol):
    def update(self, key: bytes, value: bytes, flags: int = 0) -> None: ...
    def delete(self, key: bytes) -> bool: ...


class Watches:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # writers; the poll thread reads the dicts swapped in whole
        self._inodes: dict[Key, str] = {}
        self._explicit: dict[Key, str] = {}
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
        inodes: dict[Key, str] = {}
        problems: list[str] = []
        for path in sorted(targets):
            try:
                inodes[identity_of_path(path)] = path
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror or exc}")
        with self._lock:
            self._explicit = {k: p for k, p in self._explicit.items() if p in targets}
            for key, path in self._explicit.items():
                inodes.setdefault(key, path)
            self.problems = tuple(problems)
            self._apply(inodes)

    def watch(self, key: Key, path: str) -> None:
        with self._lock:
            self._explicit[key] = path
            self._apply({**self._inodes, key: path})

    def unwatch(self, key: Key) -> None:
        with self._lock:
            self._explicit.pop(key, None)
            self._apply({k: p for k, p in self._inodes.items() if k != key})

    def path_of(self, dev: int, ino: int) -> str:
        key = (dev, ino)
        path = self._inodes.get(key) or self._retired.get(key)
        return path if path is not None else f"<inode {dev >> 20}:{dev & 0xFFFFF}:{ino}>"

    def _apply(self, inodes: dict[Key, str]) -> None:
        """Make the watched set (and the kernel's map) equal `inodes`; the caller holds the lock."""
        old = self._inodes
        if self._map is not None:
            for key in inodes.keys() - old.keys():
                self._map.update(file_key(*key), b"\1\0\0\0")
            for key in old.keys() - inodes.keys():
                self._map.delete(file_key(*key))
        for key in old.keys() - inodes.keys():
            self._retired[key] = old[key]
            while len(self._retired) > MAX_RETIRED:
                self._retired.popitem(last=False)
        self._inodes = dict(inodes)  # swapped whole: readers never see it half changed
