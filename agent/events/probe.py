"""Establish a reader's provenance (agent.events.provenance) from the file system, cheaply.

Runs on the agent's consumer thread, after the reader was allowed (never in a sensor's capture path),
and only behind agent.events.probe_deadline, whose deadline guarantees a stuck file system (a FUSE
mount that never answers) costs one abandoned worker thread, never the agent's read log.

Cost is bounded: the SHA-256 of a file is cached by (device, inode, mtime, ctime, size), so a hot
reader (every `aws` run opens the file) is hashed once; files above `max_hash_bytes` are not hashed
and a hash that takes longer than `hash_seconds` is abandoned (both said in `hash_error`, and cached,
so a huge IDE binary costs one attempt). Package lookups are cached per path (agent.events.packages).

Hostile files: the path a reader reports is opened with O_NONBLOCK|O_NOFOLLOW (a FIFO planted in
place of the executable cannot block the agent, a symlink swapped in cannot redirect it), must be a
regular file, and is read through that one descriptor (what is hashed is what was examined).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from agent import osflags
from agent.events.bounds import NAME_BUDGET, PATH_BUDGET, TEXT_BUDGET, bound_optional, bound_text
from agent.events.model import ReadEvent, user_name
from agent.events.packages import NoPackages, PackageDb
from agent.events.provenance import FileProvenance, ReaderProvenance
from agent.events.scripts import script_of

DEFAULT_MAX_HASH_BYTES = 256 * 1024 * 1024
DEFAULT_HASH_SECONDS = 2.0
CHUNK = 1024 * 1024
CACHE_SIZE = 4096
_ON_WINDOWS = os.name == "nt"
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_BINARY", 0)
)
_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/private/tmp", "/private/var/tmp")
_HOME_ROOTS = ("/home/", "/Users/", "/var/home/")


@dataclasses.dataclass(frozen=True, slots=True)
class _Digest:
    sha256: str | None
    md5: str | None
    error: str | None


class _Lru:
    def __init__(self, size: int) -> None:
        self._data: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def _homes() -> tuple[str, ...]:
    """Home directories of non-root accounts (root's home is root's to write)."""
    if not osflags.POSIX:  # Windows: profiles are found by agent.planting.winusers
        return ()
    import pwd

    homes = set()
    with contextlib.suppress(OSError):
        for entry in pwd.getpwall():
            home = entry.pw_dir.rstrip("/")
            system = home in ("", "/nonexistent") or home.startswith(("/bin", "/usr", "/var", "/proc"))
            if entry.pw_uid != 0 and not system:
                homes.add(home + "/")
    return tuple(sorted(homes))


def user_place(path: str, homes: Sequence[str] = ()) -> str | None:
    """Which user-writable place `path` lies in (see provenance.USER_PLACES), or None."""
    text = path.replace("\\", "/")
    lowered = text.lower()
    if "/downloads/" in lowered:
        return "Downloads"
    if _ON_WINDOWS or (len(text) > 2 and text[1] == ":"):
        if "/appdata/local/temp/" in lowered or "/windows/temp/" in lowered:
            return "temp"
        return "home" if lowered[2:].startswith("/users/") and "/users/public/" not in lowered else None
    if any(text.startswith(h) for h in homes):  # a user's own home, wherever it is
        return "home"
    for temp in _TEMP_DIRS:
        if text == temp or text.startswith(temp + "/"):
            return temp.removeprefix("/private")
    if text.startswith("/private/var/folders/"):
        return "temp"
    if text.startswith("/run/user/"):
        return "/run/user"
    if any(text.startswith(root) for root in _HOME_ROOTS):
        return "home"
    return None


_SEARCH_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def argv0_leads_to(argv0: str, exe: str | None, cwd: str | None) -> bool | None:
    """Does the name a process gave itself lead to its executable? `exec -a trufflehog /bin/cat`
    gives argv[0] "trufflehog" to cat; a symlink (`vi` -> vim.basic) or a PATH lookup still leads
    there. None when it cannot be told (no exe, Windows)."""
    if not exe or _ON_WINDOWS or exe.endswith(" (deleted)"):
        return None
    try:
        target = os.path.realpath(exe)
        if "/" in argv0:
            candidates = [argv0 if argv0.startswith("/") else os.path.join(cwd or "/", argv0)]
        else:
            candidates = [os.path.join(d, argv0) for d in _SEARCH_PATH]
        return any(os.path.realpath(c) == target for c in candidates if os.path.lexists(c))
    except (OSError, ValueError):
        return None


def _group_name(gid: int) -> str:
    if not osflags.POSIX:
        return str(gid)
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _has_acl(path: str, follow: bool) -> bool:
    listxattr = getattr(os, "listxattr", None)
    if listxattr is None:
        return False
    try:
        return "system.posix_acl_access" in listxattr(path, follow_symlinks=follow)
    except OSError:
        return False


def _writable_by(st: os.stat_result, path: str, *, is_dir: bool, child_uid: int | None) -> str | None:
    """Why a non-root user could change `path` (a file, or a directory above the file), or None."""
    mode = st.st_mode
    if st.st_uid != 0:
        return f"{path}: owner {user_name(st.st_uid) or st.st_uid}"
    if mode & stat.S_IWGRP and st.st_gid != 0:
        return f"{path}: writable by group {_group_name(st.st_gid)}"
    # In a sticky directory (/tmp) others can add entries but replace only their own.
    if mode & stat.S_IWOTH and not (is_dir and mode & stat.S_ISVTX and child_uid == 0):
        return f"{path}: writable by everyone"
    if _has_acl(path, follow=is_dir):
        return f"{path}: has a POSIX ACL (not evaluated, so assumed writable)"
    return None


class ProvenanceProbe:
    """Examines reader executables and scripts; thread-safe; caches what is costly."""

    def __init__(
        self,
        *,
        packages: PackageDb | None = None,
        max_hash_bytes: int = DEFAULT_MAX_HASH_BYTES,
        hash_seconds: float = DEFAULT_HASH_SECONDS,
        skip_paths: Iterable[str] = (),
        homes: Callable[[], Sequence[str]] = _homes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.packages: PackageDb = packages if packages is not None else NoPackages()
        self.max_hash_bytes = max_hash_bytes
        self.hash_seconds = hash_seconds
        self._skip: frozenset[str] = frozenset()
        self.set_skip_paths(skip_paths)
        self._homes_source = homes
        self._homes: tuple[str, ...] = ()
        self._homes_at = -1e9
        self._clock = clock
        self._digests = _Lru(CACHE_SIZE)
        self.hashed = 0  # files actually read (the rest came from the cache); tests and bench read it

    def set_skip_paths(self, paths: Iterable[str]) -> None:
        """The planted files: a 'script' that is a planted file is never opened by the agent."""
        paths = list(paths)
        self._skip = frozenset(paths) | frozenset(os.path.realpath(p) for p in paths)

    def homes(self) -> tuple[str, ...]:
        now = self._clock()
        if now - self._homes_at > 300:
            self._homes, self._homes_at = tuple(self._homes_source()), now
        return self._homes

    # ------------------------------------------------------------------ a reader

    def reader(self, event: ReadEvent) -> ReaderProvenance:
        exe = self.file(event.exe, pid=event.pid) if event.exe else None
        kind, name, path = script_of(event.cmdline, event.exe, event.cwd)
        script = self.file(path) if path else None
        if script is None and kind == "module" and name:
            script = FileProvenance(path=bound_text(name, PATH_BUDGET), error="module not found on disk")
        return ReaderProvenance(
            exe=exe,
            script=script,
            script_kind=kind,
            script_name=bound_optional(name, PATH_BUDGET),
            signing=event.signing,
            argv0_is_exe=argv0_leads_to(event.cmdline[0], event.exe, event.cwd) if event.cmdline else None,
        )

    # ------------------------------------------------------------------ one file

    def file(self, path: str, *, pid: int | None = None) -> FileProvenance:
        shown = bound_text(path, PATH_BUDGET)
        deleted = path.endswith(" (deleted)")
        if deleted and pid is not None:
            # The executable was replaced or removed after exec: examine the image the process runs.
            return self._examine(f"/proc/{pid}/exe", shown, replaced=True, follow=True)
        # Resolve symlinks once (`/usr/bin/aws` may be one); the final open refuses a symlink, so
        # one swapped in afterwards cannot send the agent elsewhere.
        real = path if _ON_WINDOWS else os.path.realpath(path)
        if path in self._skip or real in self._skip:
            return FileProvenance(path=shown, error="a planted canary file; never opened by the agent")
        prov = self._examine(real, shown, replaced=False, follow=False)
        if pid is not None and prov.error is None and not _ON_WINDOWS:
            prov = self._check_replaced(prov, path, pid)
        return prov

    def _check_replaced(self, prov: FileProvenance, path: str, pid: int) -> FileProvenance:
        """Compare the file at `path` with the image process `pid` runs, while it still runs."""
        try:
            if os.readlink(f"/proc/{pid}/exe") != path:
                return prov  # another process has the pid now, or not Linux: nothing to compare
            image = os.stat(f"/proc/{pid}/exe")
            current = os.stat(path)
        except OSError:
            return prov
        if (image.st_dev, image.st_ino) != (current.st_dev, current.st_ino):
            return dataclasses.replace(prov, replaced=True)
        return prov

    def _examine(self, path: str, shown: str, *, replaced: bool, follow: bool) -> FileProvenance:
        try:
            fd = os.open(path, _OPEN_FLAGS & ~(getattr(os, "O_NOFOLLOW", 0) if follow else 0))
        except OSError as exc:
            return FileProvenance(path=shown, error=_os_error("cannot open", exc), replaced=replaced)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return FileProvenance(path=shown, error="not a regular file", replaced=replaced)
            writable, via = (None, None) if _ON_WINDOWS or replaced else self._writability(path, st)
            owner = self.packages.owner(path) if not replaced else None
            digest = self._digest(fd, st, want_md5=bool(owner and owner.md5))
        finally:
            os.close(fd)
        verified = None
        if owner is not None and owner.md5 and digest.md5:
            verified = owner.md5 == digest.md5
        return FileProvenance(
            path=shown,
            uid=None if _ON_WINDOWS else st.st_uid,
            owner=None if _ON_WINDOWS else bound_optional(user_name(st.st_uid), NAME_BUDGET),
            gid=None if _ON_WINDOWS else st.st_gid,
            mode=f"{stat.S_IMODE(st.st_mode):04o}",
            size=st.st_size,
            user_writable=writable,
            writable_via=bound_optional(via, TEXT_BUDGET),
            user_place=user_place(shown.removesuffix(" (deleted)") if replaced else path, self.homes()),
            package=owner.package if owner else None,
            package_db=self.packages.name,
            package_verified=verified,
            sha256=digest.sha256,
            hash_error=digest.error,
            replaced=replaced,
        )

    def _writability(self, path: str, st: os.stat_result) -> tuple[bool | None, str | None]:
        """Could a non-root user have written the file, or replaced it through a directory above?"""
        via = _writable_by(st, path, is_dir=False, child_uid=None)
        if via:
            return True, via
        child_uid = st.st_uid
        current = path
        for _ in range(256):  # deeper than any real path; a loop cannot keep us here
            parent = os.path.dirname(current)
            if parent == current:
                return False, None
            try:
                parent_st = os.stat(parent)
            except OSError as exc:
                return None, _os_error(f"cannot examine {parent}", exc)
            via = _writable_by(parent_st, parent, is_dir=True, child_uid=child_uid)
            if via:
                return True, via
            child_uid, current = parent_st.st_uid, parent
        return None, "path too deep"

    def _digest(self, fd: int, st: os.stat_result, *, want_md5: bool) -> _Digest:
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        cached: _Digest | None = self._digests.get(key)
        if cached is not None and (cached.md5 or not want_md5 or cached.error):
            return cached
        if st.st_size > self.max_hash_bytes:
            digest = _Digest(
                None, None, f"larger than {self.max_hash_bytes // (1024 * 1024)} MiB; not hashed"
            )
            self._digests.put(key, digest)
            return digest
        self.hashed += 1
        sha = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False) if want_md5 else None
        deadline = self._clock() + self.hash_seconds
        try:
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                sha.update(chunk)
                if md5 is not None:
                    md5.update(chunk)
                if self._clock() > deadline:
                    digest = _Digest(
                        None, None, f"hashing took longer than {self.hash_seconds:g} s; not hashed"
                    )
                    self._digests.put(key, digest)
                    return digest
        except OSError as exc:
            return _Digest(None, None, _os_error("cannot read", exc))
        digest = _Digest(sha.hexdigest(), md5.hexdigest() if md5 else None, None)
        self._digests.put(key, digest)
        return digest


def with_provenance(event: ReadEvent, provenance: ReaderProvenance) -> ReadEvent:
    """`event` carrying `provenance`, without running ReadEvent.__post_init__ again (its text was
    already made printable and redacted at birth; see agent.events.bounds)."""
    clone = copy.copy(event)
    object.__setattr__(clone, "provenance", provenance)
    return clone


def _os_error(what: str, exc: OSError) -> str:
    return f"{what}: {exc.strerror or type(exc).__name__}"


__all__ = [
    "DEFAULT_HASH_SECONDS",
    "DEFAULT_MAX_HASH_BYTES",
    "ProvenanceProbe",
    "user_place",
]
