"""Safe, atomic, symlink-proof writes by root into a user's home (POSIX).

Root writing into a directory a user controls must not be turned against the host, so:

* Every path is walked from ``/`` one component at a time with directory file descriptors
  (``O_DIRECTORY | O_NOFOLLOW``, ``dir_fd=``); nothing is ever resolved by path string.
* Each directory on the way must be owned by root or by the file's owner; a directory writable by
  group/others is refused unless the owner owns it or it is a root-owned sticky directory (``/tmp``).
* A symlink on the way is followed only if root made it and it sits in a directory only root can
  write (e.g. ``/home -> /data/home``); a symlink anywhere the user (or anyone else) could have made
  it is refused — so a symlinked ``~/.aws`` or credentials file is never followed.
* The file itself is opened ``O_NOFOLLOW | O_NONBLOCK`` and must be a regular file owned by the
  owner with exactly one link (a hard link to, say, /etc/shadow would otherwise be rewritten).
* A write goes to a fresh temp file in the same directory (``O_CREAT | O_EXCL | O_NOFOLLOW``, 0600,
  fchown'd to the owner), is fsync'd, renamed over the file, and the directory is fsync'd: after a
  crash or kill -9 the file holds the old or the new bytes, never a mix, never nothing.
* ``before_replace(fd)``, if given, is called with the temp file's fd after the fsync and before the
  rename: the new version is a new inode, and a caller that watches inodes (the agent's sensor) must
  watch it before anyone can open it by the file's name. If it raises, nothing is replaced.
* Just before the rename the file is checked to be the one we read (device, inode, size, mtime,
  ctime); if someone changed it meanwhile the edit is redone from the new content.

Mode: the file is always written 0600 (a stricter existing mode is not kept: credentials must be
readable by their owner and nobody else, and one rule is easier to audit). A missing last directory
(``~/.aws``) is created 0700 owned by the owner; anything missing above it is an error.
Temp files are named ``.<name>.tmp-<12 hex>``; leftovers of a killed writer are removed by the next
update_file call, even one that writes nothing (only names of exactly that form, regular files
owned by the owner or by root).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from agent.credfile.errors import ConcurrentChangeError, MissingDirectoryError, UnsafePathError
from agent.osflags import POSIX, WINDOWS

FILE_MODE = 0o600
DIR_MODE = 0o700
MAX_FILE_BYTES = 4 * 1024 * 1024  # credentials files are a few KiB; refuse to slurp a huge file
_MAX_SYMLINKS = 40
# getattr: these flags do not exist on Windows, where the module still imports (credfile's pure
# functions are portable) and read_file/update_file hand over to the ACL-aware safefs_win.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | _CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC

Fingerprint = tuple[int, int, int, int, int] | None  # (dev, ino, size, mtime_ns, ctime_ns); None = absent


@dataclass(frozen=True)
class Snapshot:
    data: bytes | None  # None: the file does not exist
    fingerprint: Fingerprint


def temp_name_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}\.tmp-[0-9a-f]{{12}}")


def read_file(path: os.PathLike[str] | str, *, owner_uid: int) -> bytes | None:
    """The file's bytes, or None if it (or a directory above it) does not exist."""
    if WINDOWS:  # ACL-based owner-only writes, no dir fds: safefs_win
        from agent.credfile import safefs_win

        return safefs_win.read_file(path, owner_uid=owner_uid)
    path = _check_path(path)
    parent = _open_parent(path, owner_uid, create=False, owner_gid=-1)
    if parent is None:
        return None
    try:
        return _read(parent, path, owner_uid).data
    finally:
        os.close(parent)


def update_file(
    path: os.PathLike[str] | str,
    edit: Callable[[bytes | None], bytes | None],
    *,
    owner_uid: int,
    owner_gid: int,
    create_parent: bool,
    attempts: int = 3,
    before_replace: Callable[[int], None] | None = None,
) -> bool:
    """Read the file safely, call ``edit(old_bytes_or_None)``, atomically write what it returns.

    ``edit`` returns None (or the same bytes) to leave the file alone; it may raise to abort.
    With ``create_parent`` the last directory is created if missing (a missing file is then
    created); without it a missing directory means "no file". Returns True if it wrote.
    ``before_replace(fd)`` is called with each temp file's fd just before it is renamed into place
    (after the fsync); it may be called again for a retry's temp file if the file changed.
    """
    if WINDOWS:  # owner_gid has no meaning there: the owner's SID comes from owner_uid
        from agent.credfile import safefs_win

        return safefs_win.update_file(
            path, edit, owner_uid=owner_uid, create_parent=create_parent, attempts=attempts
        )
    path = _check_path(path)
    parent = _open_parent(path, owner_uid, create=create_parent, owner_gid=owner_gid)
    if parent is None:
        edit(None)
        return False
    try:
        _remove_leftovers(parent, path.name, owner_uid)
        for _ in range(attempts):
            snapshot = _read(parent, path, owner_uid)
            new = edit(snapshot.data)
            if new is None or new == snapshot.data:
                return False
            if _replace(parent, path, new, owner_uid, owner_gid, snapshot.fingerprint, before_replace):
                return True
        raise ConcurrentChangeError(f"the file changed during each of {attempts} attempts").at(path)
    finally:
        os.close(parent)


def _check_path(path: os.PathLike[str] | str) -> PurePosixPath:
    if not POSIX:
        raise UnsafePathError("safe atomic writes are implemented for POSIX systems only").at(path)
    pure = PurePosixPath(os.fspath(path))
    if not pure.is_absolute() or pure.name in ("", ".", ".."):
        raise UnsafePathError("need an absolute path to a file").at(pure)
    return pure


def _trusted_dir(st: os.stat_result) -> bool:
    """Only root can create entries here."""
    return st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _check_dir(st: os.stat_result, where: str, owner_uid: int) -> None:
    if st.st_uid not in (0, owner_uid):
        raise UnsafePathError(f"directory owned by uid {st.st_uid}, expected {owner_uid} or root").at(where)
    loose = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if loose and st.st_uid != owner_uid and not (st.st_uid == 0 and st.st_mode & stat.S_ISVTX):
        raise UnsafePathError(
            f"directory is writable by group/others (mode {stat.S_IMODE(st.st_mode):o}) "
            "and neither owned by the user nor sticky"
        ).at(where)


def _open_parent(path: PurePosixPath, owner_uid: int, *, create: bool, owner_gid: int) -> int | None:
    """A checked fd of the file's directory; None if missing and not ``create``."""
    todo = list(path.parent.parts[1:])
    where = PurePosixPath("/")
    fd = os.open("/", _DIR_FLAGS)
    hops = 0
    try:
        st = os.fstat(fd)
        _check_dir(st, "/", owner_uid)
        while todo:
            name = todo.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                raise UnsafePathError("'..' in the path").at(path)
            try:
                next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not (create and not todo):
                    if create:
                        raise MissingDirectoryError(
                            "directory does not exist (is the home directory missing?)"
                        ).at(where / name) from None
                    return None
                next_fd = _make_dir(fd, name, owner_uid, owner_gid, where / name)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                link = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(link.st_mode):
                    raise UnsafePathError("not a directory").at(where / name) from None
                if link.st_uid != 0 or not _trusted_dir(st):
                    raise UnsafePathError("refusing to follow a symlink a non-root user could have made").at(
                        where / name
                    ) from None
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise UnsafePathError("too many symlinks").at(path) from None
                # Re-walk from / with the (lexically normalised) target; every step is checked again.
                target = PurePosixPath(os.path.normpath(where / os.readlink(name, dir_fd=fd)))
                todo = list(target.parts[1:]) + todo
                os.close(fd)
                fd = os.open("/", _DIR_FLAGS)
                where = PurePosixPath("/")
                st = os.fstat(fd)
                continue
            os.close(fd)
            fd = next_fd
            where = where / name
            st = os.fstat(fd)
            _check_dir(st, str(where), owner_uid)
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def _make_dir(parent_fd: int, name: str, owner_uid: int, owner_gid: int, where: PurePosixPath) -> int:
    if not POSIX:
        raise UnsafePathError("directory file descriptors are POSIX only").at(where)
    created = True
    try:
        os.mkdir(name, DIR_MODE, dir_fd=parent_fd)
    except FileExistsError:
        created = False  # someone made it meanwhile: it is opened and checked like any other directory
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    if created:
        # Still root's means still the one we made: a replacement would belong to whoever made it.
        if os.fstat(fd).st_uid == 0:
            os.fchown(fd, owner_uid, owner_gid)
            os.fchmod(fd, DIR_MODE)
        os.fsync(parent_fd)
    return fd


def _fingerprint(parent_fd: int, name: str) -> Fingerprint:
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read(parent_fd: int, path: PurePosixPath, owner_uid: int) -> Snapshot:
    try:
        # lstat first so a device or FIFO is never even opened (opening some devices has effects).
        mode = os.stat(path.name, dir_fd=parent_fd, follow_symlinks=False).st_mode
        if not stat.S_ISREG(mode):
            kind = "a symlink; refusing to follow it" if stat.S_ISLNK(mode) else "not a regular file"
            raise UnsafePathError(f"the file is {kind}").at(path)
        fd = os.open(path.name, _READ_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return Snapshot(None, None)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError("the file is a symlink; refusing to follow it").at(path) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError("not a regular file").at(path)
        if st.st_uid != owner_uid:
            raise UnsafePathError(f"file owned by uid {st.st_uid}, expected {owner_uid}").at(path)
        if st.st_nlink != 1:
            raise UnsafePathError(f"file has {st.st_nlink} hard links; refusing to rewrite it").at(path)
        if st.st_size > MAX_FILE_BYTES:
            raise UnsafePathError(f"file is larger than {MAX_FILE_BYTES} bytes").at(path)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        fingerprint = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return Snapshot(b"".join(chunks), fingerprint)
    finally:
        os.close(fd)


def _remove_leftovers(parent_fd: int, name: str, owner_uid: int) -> None:
    """Remove temp files a killed writer left (our exact pattern, regular, owned by owner or root)."""
    pattern = temp_name_pattern(name)
    for entry in os.listdir(parent_fd):
        if not pattern.fullmatch(entry):
            continue
        try:
            st = os.stat(entry, dir_fd=parent_fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_uid in (owner_uid, 0):
                os.unlink(entry, dir_fd=parent_fd)
        except FileNotFoundError:
            continue


def _replace(
    parent_fd: int,
    path: PurePosixPath,
    data: bytes,
    owner_uid: int,
    owner_gid: int,
    expected: Fingerprint,
    before_replace: Callable[[int], None] | None = None,
) -> bool:
    """Atomically put ``data`` at ``path.name``; False if the file is no longer ``expected``."""
    if not POSIX:
        raise UnsafePathError("directory file descriptors are POSIX only").at(path)
    name = path.name
    temp = f".{name}.tmp-{secrets.token_hex(6)}"
    fd = os.open(temp, _TEMP_FLAGS, FILE_MODE, dir_fd=parent_fd)
    renamed = False
    try:
        try:
            os.fchown(fd, owner_uid, owner_gid)
            os.fchmod(fd, FILE_MODE)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            if before_replace is not None:
                before_replace(fd)
        finally:
            os.close(fd)
        if _fingerprint(parent_fd, name) != expected:
            return False
        os.rename(temp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        renamed = True
        os.fsync(parent_fd)
        return True
    finally:
        if not renamed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=parent_fd)
