"""Owner-only files on Windows: DACLs instead of modes, SIDs instead of uids.

POSIX code names owners by uid; Windows has SIDs. `uid_for_sid` gives each SID a stable int in a
range no POSIX uid reaches (2**30 and up, from a hash of the SID), and remembers the SID, so the
uid-typed plumbing (planter, self-reports) carries Windows owners unchanged and `sid_for_uid`
turns them back into SIDs where an ACL is written.

`protect(path, owner_sid)` makes `path` its owner's and nobody else's: owner = that SID (setting
another account as owner needs SeRestorePrivilege, which LocalSystem holds), a protected DACL
(nothing inherited) granting full control to the owner and to SYSTEM (the agent) only. The state
directory is protected the same way with SYSTEM and the Administrators group as its only readers.

pywin32's win32security is a module global imported on Windows only (tests replace it).
"""

from __future__ import annotations

import os
import zlib
from typing import TYPE_CHECKING, Any

from agent import osflags

if TYPE_CHECKING or osflags.WINDOWS:
    import ntsecuritycon
    import win32api
    import win32security

SYSTEM_SID = "S-1-5-18"
ADMINISTRATORS_SID = "S-1-5-32-544"
UID_BASE = 1 << 30
_SIDS: dict[int, str] = {}


def uid_for_sid(sid: str) -> int:
    uid = UID_BASE + zlib.crc32(sid.encode()) % UID_BASE
    _SIDS[uid] = sid
    return uid


def sid_for_uid(uid: int) -> str:
    try:
        return _SIDS[uid]
    except KeyError:
        raise LookupError(f"no Windows account is known for owner id {uid}") from None


def enable_restore_privilege() -> None:
    """SeRestorePrivilege: set a file's owner to another account (LocalSystem holds it)."""
    access = ntsecuritycon.TOKEN_ADJUST_PRIVILEGES | ntsecuritycon.TOKEN_QUERY
    token = win32security.OpenProcessToken(win32api.GetCurrentProcess(), access)
    luid = win32security.LookupPrivilegeValue(None, "SeRestorePrivilege")  # type: ignore[arg-type]
    new_state = [(luid, ntsecuritycon.SE_PRIVILEGE_ENABLED)]
    win32security.AdjustTokenPrivileges(token, False, new_state)  # type: ignore[arg-type]


def _dacl(sids: list[str]) -> Any:
    dacl = win32security.ACL()
    for sid in sids:
        dacl.AddAccessAllowedAceEx(
            win32security.ACL_REVISION,
            ntsecuritycon.OBJECT_INHERIT_ACE | ntsecuritycon.CONTAINER_INHERIT_ACE,
            ntsecuritycon.FILE_ALL_ACCESS,
            win32security.ConvertStringSidToSid(sid),
        )
    return dacl


def protect(
    path: str | os.PathLike[str], owner_sid: str, *, readers: tuple[str, ...] = (SYSTEM_SID,)
) -> None:
    """Owner `owner_sid`, and a protected DACL: full control for the owner and `readers` only."""
    sids = [owner_sid, *(s for s in readers if s != owner_sid)]
    info = (
        win32security.OWNER_SECURITY_INFORMATION
        | win32security.DACL_SECURITY_INFORMATION
        | win32security.PROTECTED_DACL_SECURITY_INFORMATION
    )
    owner = win32security.ConvertStringSidToSid(owner_sid)
    win32security.SetNamedSecurityInfo(
        os.fspath(path), win32security.SE_FILE_OBJECT, info, owner, None, _dacl(sids), None
    )


def protect_private_dir(path: str | os.PathLike[str]) -> None:
    """The agent's state directory: SYSTEM's, readable by SYSTEM and Administrators only."""
    protect(path, SYSTEM_SID, readers=(SYSTEM_SID, ADMINISTRATORS_SID))


def owner_of(path: str | os.PathLike[str]) -> str:
    descriptor = win32security.GetNamedSecurityInfo(
        os.fspath(path), win32security.SE_FILE_OBJECT, win32security.OWNER_SECURITY_INFORMATION
    )
    return str(win32security.ConvertSidToStringSid(descriptor.GetSecurityDescriptorOwner()))


__all__ = [
    "ADMINISTRATORS_SID",
    "SYSTEM_SID",
    "enable_restore_privilege",
    "owner_of",
    "protect",
    "protect_private_dir",
    "sid_for_uid",
    "uid_for_sid",
]
