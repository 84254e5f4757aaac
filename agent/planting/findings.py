"""What took the canary's place: a credentials file the agent must not open, described for a responder.

The credentials-file editor (agent.credfile.safefs) refuses a file it cannot handle safely as root: a
symlink (root following it could read /etc/shadow), a FIFO (opening it blocks), a directory, a device,
a file too large to inspect, a second name for the file (a hard link), a symlinked ~/.aws. Every one of
those also means the canary is gone from where it was planted (or can no longer be checked), so each
is a tamper event and the target's coverage says "not planted" with this sentence.

`examine` only looks: lstat and readlink, never open, never follow a link the user could have made.
The owner of what was found (the uid that created the symlink, FIFO or directory) is who put it there,
as far as the file system knows.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import PurePosixPath
from typing import Any

from agent import osflags
from agent.credfile.safefs import MAX_FILE_BYTES
from agent.planting.users import LocalUser

_KINDS = {
    stat.S_IFIFO: ("fifo", "a FIFO (named pipe)"),
    stat.S_IFDIR: ("directory", "a directory"),
    stat.S_IFSOCK: ("socket", "a socket"),
    stat.S_IFCHR: ("device", "a character device"),
    stat.S_IFBLK: ("device", "a block device"),
}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One reason the canary cannot be inspected where it was planted."""

    action: str  # the tamper event's action: file_replaced | file_too_large | hard_link | ...
    sentence: str  # for status, the heartbeat and the tamper event's detail
    found: dict[str, Any]  # type, path, uid, user, and size / nlink / link_target when known

    @property
    def signature(self) -> str:
        """Equal for the same situation seen again: a new tamper event only when it changes."""
        keys = ("type", "path", "uid", "link_target", "nlink")
        return f"{self.action}:" + "|".join(str(self.found.get(k)) for k in keys)


def _who(uid: int) -> str:
    if not osflags.POSIX:  # Windows: owners are SIDs; the uid is all there is to say
        return str(uid)
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _by(st: os.stat_result) -> str:
    return f"owned by {_who(st.st_uid)} (uid {st.st_uid})"


def _base(kind: str, path: str, st: os.stat_result) -> dict[str, Any]:
    return {"type": kind, "path": path, "uid": st.st_uid, "user": _who(st.st_uid)}


def _link(path: str, st: os.stat_result, *, directory: bool) -> Finding:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    found = {**_base("symlink", path, st), "link_target": target}
    if directory:
        return Finding(
            "directory_replaced",
            f"{path} is a symbolic link to {target} ({_by(st)}); the agent never follows a link a "
            "user could have made, so the canary below it is not planted",
            found,
        )
    return Finding(
        "file_replaced",
        f"the credentials file was replaced by a symbolic link to {target} ({_by(st)})",
        found,
    )


def _directories(path: PurePosixPath) -> list[str]:
    return [str(PurePosixPath(*path.parts[: i + 1])) for i in range(1, len(path.parts) - 1)]


def examine(path: str, owner: LocalUser | None) -> Finding | None:
    """Why `path` cannot be inspected safely, or None if nothing there explains it."""
    pure = PurePosixPath(path)
    for directory in _directories(pure):
        try:
            st = os.lstat(directory)
        except OSError:
            return None  # missing: the planter creates or reports it
        if stat.S_ISLNK(st.st_mode):
            parent = os.lstat(os.path.dirname(directory) or "/")
            trusted = st.st_uid == 0 and parent.st_uid == 0 and not parent.st_mode & 0o022
            if not trusted:  # root's own links in root's directories (/home -> /data/home) are followed
                return _link(directory, st, directory=True)
        elif not stat.S_ISDIR(st.st_mode):
            kind, words = _KINDS.get(stat.S_IFMT(st.st_mode), ("file", "a file"))
            return Finding(
                "directory_replaced",
                f"{directory} is {words}, not a directory ({_by(st)})",
                _base(kind, directory, st),
            )
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return _link(path, st, directory=False)
    if not stat.S_ISREG(st.st_mode):
        kind, words = _KINDS.get(stat.S_IFMT(st.st_mode), ("special", "a special file"))
        sentence = f"the credentials file was replaced by {words} ({_by(st)})"
        return Finding("file_replaced", sentence, _base(kind, path, st))
    found = {**_base("file", path, st), "size": st.st_size, "nlink": st.st_nlink}
    if st.st_size > MAX_FILE_BYTES:
        return Finding(
            "file_too_large",
            f"the credentials file is {st.st_size} bytes, more than the {MAX_FILE_BYTES} the agent "
            f"inspects ({_by(st)})",
            found,
        )
    if st.st_nlink > 1:
        return Finding(
            "hard_link",
            f"the credentials file has {st.st_nlink} names (a hard link was made to it); the agent "
            "will not read or rewrite it until the other name is removed",
            found,
        )
    if owner is not None and st.st_uid != owner.uid:
        return Finding(
            "unsafe_path",
            f"the credentials file is {_by(st)}, not by {owner.name} (uid {owner.uid})",
            found,
        )
    return None


def unexplained(path: str, reason: str) -> Finding:
    """A refusal `examine` could not explain (e.g. loose permissions on a directory)."""
    return Finding("unsafe_path", reason, {"type": "unknown", "path": path})


__all__ = ["Finding", "examine", "unexplained"]
