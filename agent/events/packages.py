"""Which system package owns a file: the dpkg database (Debian, Ubuntu) or rpm (Fedora, RHEL, SUSE).

dpkg: `/var/lib/dpkg/info/<package>[:arch].list` lists every path a package installed and
`<package>.md5sums` the checksum of each regular file, so ownership *and* whether the file still
has the content the package shipped can be told without running a process. `dpkg -S` is not used:
it costs ~0.1 s per call and, on a merged-/usr system, misses `/usr/bin/cat` (the package lists
`/bin/cat`); here both spellings are tried. Lookups are cached per path and the cache is dropped
when the database changes (the info directory's mtime moves on every install and removal).

rpm: `rpm -qf` per path (with a timeout), cached the same way; rpm keeps no md5 list we read, so
`verified` is None there.

Diversions (dpkg-divert) are not followed: a diverted path reports the package that lists it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

DPKG_INFO = Path("/var/lib/dpkg/info")
RPM_DBS = (Path("/var/lib/rpm/rpmdb.sqlite"), Path("/var/lib/rpm/Packages"), Path("/usr/lib/sysimage/rpm"))
CACHE_SIZE = 4096
RPM_TIMEOUT = 5.0
# Merged /usr: /bin, /sbin and /lib* are symlinks into /usr, and packages list either spelling.
_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclasses.dataclass(frozen=True, slots=True)
class PackageOwner:
    package: str | None  # None: no package owns the path
    md5: str | None = None  # the checksum the package database records for it (dpkg), if any


class PackageDb(Protocol):
    @property
    def name(self) -> str | None:
        """ "dpkg" | "rpm" | None when the system has no package database."""

    def owner(self, path: str) -> PackageOwner: ...


def spellings(path: str) -> tuple[str, ...]:
    """`path` and its merged-/usr twin (`/usr/bin/cat` <-> `/bin/cat`)."""
    parts = path.split("/", 3)  # "", "usr", "bin", rest
    if len(parts) >= 3 and parts[1] == "usr" and parts[2] in _MERGED:
        return (path, path[len("/usr") :])
    if len(parts) >= 2 and parts[1] in _MERGED:
        return (path, "/usr" + path)
    return (path,)


class _Cache:
    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._data: OrderedDict[str, PackageOwner] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()
        self.generation: int | None = None

    def get(self, key: str, generation: int | None) -> PackageOwner | None:
        with self._lock:
            if generation != self.generation:
                self._data.clear()
                self.generation = generation
                return None
            found = self._data.get(key)
            if found is not None:
                self._data.move_to_end(key)
            return found

    def put(self, key: str, value: PackageOwner) -> None:
        with self._lock:
            self._data[key] = value
            while len(self._data) > self._size:
                self._data.popitem(last=False)


class NoPackages:
    """A system without a package database we read (macOS, Windows, a container)."""

    name: str | None = None

    def owner(self, path: str) -> PackageOwner:
        return PackageOwner(None)


class DpkgDb:
    name: str | None = "dpkg"

    def __init__(self, info_dir: Path = DPKG_INFO) -> None:
        self.info_dir = Path(info_dir)
        self._cache = _Cache()
        self.scans = 0  # database scans made (the benchmark and tests read it)

    def _generation(self) -> int | None:
        try:
            return self.info_dir.stat().st_mtime_ns
        except OSError:
            return None

    def owner(self, path: str) -> PackageOwner:
        generation = self._generation()
        cached = self._cache.get(path, generation)
        if cached is not None:
            return cached
        found = self._scan(path)
        self._cache.put(path, found)
        return found

    def _scan(self, path: str) -> PackageOwner:
        self.scans += 1
        needles = [b"\n" + os.fsencode(p) + b"\n" for p in spellings(path)]
        try:
            entries = sorted(os.scandir(self.info_dir), key=lambda e: e.name)
        except OSError:
            return PackageOwner(None)
        for entry in entries:
            if not entry.name.endswith(".list"):
                continue
            try:
                with open(entry.path, "rb") as handle:
                    data = b"\n" + handle.read()
            except OSError:
                continue
            if not data.endswith(b"\n"):
                data += b"\n"
            if any(needle in data for needle in needles):
                stem = entry.name[: -len(".list")]
                return PackageOwner(stem.split(":", 1)[0], self._md5(stem, path))
        return PackageOwner(None)

    def _md5(self, stem: str, path: str) -> str | None:
        """The checksum `<package>.md5sums` records for `path` (paths there have no leading /)."""
        wanted = {os.fsencode(p.lstrip("/")) for p in spellings(path)}
        try:
            with open(self.info_dir / f"{stem}.md5sums", "rb") as handle:
                for line in handle:
                    digest, _, name = line.rstrip(b"\n").partition(b"  ")
                    if name in wanted:
                        return digest.decode("ascii", "replace")
        except OSError:
            return None
        return None


class RpmDb:
    name: str | None = "rpm"

    def __init__(self, rpm: str = "rpm", db: Path | None = None) -> None:
        self.rpm = rpm
        self.db = db
        self._cache = _Cache()

    def _generation(self) -> int | None:
        try:
            return self.db.stat().st_mtime_ns if self.db else None
        except OSError:
            return None

    def owner(self, path: str) -> PackageOwner:
        generation = self._generation()
        cached = self._cache.get(path, generation)
        if cached is not None:
            return cached
        try:
            done = subprocess.run(
                [self.rpm, "-qf", "--queryformat", "%{NAME}\n", "--", path],
                capture_output=True,
                text=True,
                timeout=RPM_TIMEOUT,
                check=False,
            )
            lines = done.stdout.strip().splitlines() if done.returncode == 0 else []
            name = lines[0] if lines else None
        except (OSError, subprocess.TimeoutExpired):
            return PackageOwner(None)  # not cached: the next read tries again
        found = PackageOwner(name)
        self._cache.put(path, found)
        return found


def detect() -> PackageDb:
    """The package database of this system: dpkg, then rpm, else none."""
    if (DPKG_INFO.parent / "status").is_file() and DPKG_INFO.is_dir():
        return DpkgDb()
    rpm = shutil.which("rpm")
    if rpm:
        for db in RPM_DBS:
            if db.exists():
                return RpmDb(rpm, db)
    return NoPackages()


__all__ = ["DpkgDb", "NoPackages", "PackageDb", "PackageOwner", "RpmDb", "detect", "spellings"]
