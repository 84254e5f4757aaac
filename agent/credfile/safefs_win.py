"""Safe, atomic writes by LocalSystem into a user's profile (Windows); safefs.py is the POSIX one.

The same promises as safefs, with Windows' means:

* No reparse point is followed: the credentials file and the `.aws` folder must not be symlinks or
  junctions (FILE_ATTRIBUTE_REPARSE_POINT), so a user cannot redirect the agent's write to, say,
  a system file. The profile folder above is the system's (ProfileList) and trusted.
* The file must be a regular file with exactly one link and at most MAX_FILE_BYTES.
* A write goes to a fresh temp file in the same folder (O_CREAT | O_EXCL), is flushed to disk,
  made owner-only (owner = the user, a protected DACL: the user and SYSTEM; winacl.protect) and
  moved over the file with os.replace (MoveFileEx, replace existing): after a crash the file holds
  the old or the new bytes. Just before the move the file is checked to be the one we read (size,
  mtime, ctime, file index); if not, the edit is redone from the new content.
* A missing `.aws` folder is created and made the user's the same way; a missing profile folder is
  an error.

The owner is named by a uid from winacl.uid_for_sid (planting.users gives Windows users those).
Paths are the OS's own (pathlib.Path), so the file handling runs as is in the Linux contract tests,
where only winacl's Win32 calls are faked.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from agent.credfile import winacl
from agent.credfile.errors import ConcurrentChangeError, MissingDirectoryError, UnsafePathError

MAX_FILE_BYTES = 4 * 1024 * 1024
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
Fingerprint = tuple[int, int, int, int] | None  # (file index, size, mtime_ns, ctime_ns)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _refuse_reparse(st: os.stat_result, where: Path, what: str) -> None:
    if getattr(st, "st_file_attributes", 0) & FILE_ATTRIBUTE_REPARSE_POINT or stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"the {what} is a symlink or junction; refusing to follow it").at(where)


def _fingerprint(st: os.stat_result | None) -> Fingerprint:
    return None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _check_folder(path: Path, owner_sid: str, *, create: bool) -> bool:
    """The `.aws` folder exists (or was made the owner's) and is no reparse point."""
    folder = path.parent
    if _lstat(str(folder.parent)) is None:
        if not create:
            return False  # no profile, so no file
        raise MissingDirectoryError("the profile folder does not exist").at(folder.parent)
    st = _lstat(str(folder))
    if st is None:
        if not create:
            return False
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder)
        st = _lstat(str(folder))
        assert st is not None
        _refuse_reparse(st, folder, "folder")
        winacl.protect(folder, owner_sid)
        return True
    _refuse_reparse(st, folder, "folder")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError("not a folder").at(folder)
    return True


def _read(path: Path) -> tuple[bytes | None, Fingerprint]:
    st = _lstat(str(path))
    if st is None:
        return None, None
    _refuse_reparse(st, path, "file")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError("not a regular file").at(path)
    if st.st_nlink != 1:
        raise UnsafePathError(f"file has {st.st_nlink} hard links; refusing to rewrite it").at(path)
    if st.st_size > MAX_FILE_BYTES:
        raise UnsafePathError(f"file is larger than {MAX_FILE_BYTES} bytes").at(path)
    with open(path, "rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    return data, _fingerprint(st)


def read_file(path: os.PathLike[str] | str, *, owner_uid: int) -> bytes | None:
    pure = Path(os.fspath(path))
    if not _check_folder(pure, winacl.sid_for_uid(owner_uid), create=False):
        return None
    return _read(pure)[0]


def update_file(
    path: os.PathLike[str] | str,
    edit: Callable[[bytes | None], bytes | None],
    *,
    owner_uid: int,
    create_parent: bool,
    attempts: int = 3,
) -> bool:
    """Read, edit, write atomically and owner-only (see the module docstring); True if written."""
    pure = Path(os.fspath(path))
    if not pure.is_absolute() or pure.name in ("", ".", ".."):
        raise UnsafePathError("need an absolute path to a file").at(pure)
    owner_sid = winacl.sid_for_uid(owner_uid)
    if not _check_folder(pure, owner_sid, create=create_parent):
        edit(None)
        return False
    for _ in range(attempts):
        old, fingerprint = _read(pure)
        new = edit(old)
        if new is None or new == old:
            return False
        if _replace(pure, new, owner_sid, fingerprint):
            return True
    raise ConcurrentChangeError(f"the file changed during each of {attempts} attempts").at(pure)


def _replace(path: Path, data: bytes, owner_sid: str, expected: Fingerprint) -> bool:
    temp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    moved = False
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        winacl.protect(temp, owner_sid)  # owner-only before it has the file's name
        if _fingerprint(_lstat(str(path))) != expected:
            return False
        os.replace(temp, path)
        moved = True
        return True
    finally:
        if not moved:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)


__all__ = ["read_file", "update_file"]
