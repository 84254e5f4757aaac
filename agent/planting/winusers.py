r"""Windows users from the profile list: who has a profile on this machine, and where.

`HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList\<SID>\ProfileImagePath` names every
profile Windows created (local and domain accounts alike), which is what `pwd` is on Linux. A human
user is an account SID (S-1-5-21-...) with a RID of at least 1000 (500, the built-in
Administrator, and the other well-known RIDs below 1000 are not people's accounts), whose profile
folder exists, and that is not a temporary or backup profile (a ".bak" key or a TEMP folder).
Their target is `<profile>\.aws\credentials`. Accounts are named DOMAIN\user by LookupAccountSid;
a SID that no longer resolves (a deleted account whose profile stayed) is skipped.

The registry and the account lookup are passed in (`ProfileSource`); `default_source()` is the real
one (winreg, pywin32), used on Windows only.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator
from typing import Protocol

from agent import osflags
from agent.credfile.winacl import uid_for_sid

PROFILE_LIST = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList"
MIN_RID = 1000
_ACCOUNT_SID = re.compile(r"^S-1-5-21-\d+-\d+-\d+-(\d+)$")


class ProfileSource(Protocol):
    def profiles(self) -> list[tuple[str, str]]:
        """(SID, ProfileImagePath with environment variables expanded) of every profile key."""
        ...

    def account(self, sid: str) -> str | None:
        """DOMAIN\\user of `sid`, or None if it does not resolve."""
        ...

    def sid_of(self, name: str) -> str | None:
        """The SID of the account `name` (user or DOMAIN\\user), or None."""
        ...


@dataclasses.dataclass(frozen=True)
class WindowsUser:
    sid: str
    name: str
    home: str

    @property
    def uid(self) -> int:
        return uid_for_sid(self.sid)


def is_person(sid: str, home: str, exists: Callable[[str], bool] = os.path.isdir) -> bool:
    match = _ACCOUNT_SID.match(sid)
    if match is None or int(match.group(1)) < MIN_RID:
        return False
    if not home or home.upper().rstrip("\\").endswith(("\\TEMP", ".BAK")):
        return False
    return exists(home)


def windows_users(
    source: ProfileSource, exists: Callable[[str], bool] = os.path.isdir
) -> Iterator[WindowsUser]:
    """Every person with a profile here, in the order of the profile list."""
    for sid, home in source.profiles():
        if not is_person(sid, home, exists):
            continue
        name = source.account(sid)
        if name:
            yield WindowsUser(sid, name, home)


def find_user(source: ProfileSource, name: str) -> WindowsUser | None:
    sid = source.sid_of(name)
    if sid is None:
        return None
    for candidate_sid, home in source.profiles():
        if candidate_sid == sid:
            return WindowsUser(sid, source.account(sid) or name, home)
    return None


class RegistryProfiles:
    """The real source: winreg for the profile list, LookupAccountSid/Name for names."""

    def profiles(self) -> list[tuple[str, str]]:
        if not osflags.WINDOWS:
            raise OSError("the profile list exists only on Windows")
        import winreg

        found: list[tuple[str, str]] = []
        access = winreg.KEY_READ | winreg.KEY_WOW64_64KEY
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, PROFILE_LIST, 0, access) as root:
            index = 0
            while True:
                try:
                    sid = winreg.EnumKey(root, index)
                except OSError:  # ERROR_NO_MORE_ITEMS
                    return found
                index += 1
                try:
                    with winreg.OpenKey(root, sid) as key:
                        path, _kind = winreg.QueryValueEx(key, "ProfileImagePath")
                except OSError:
                    continue
                found.append((sid, os.path.expandvars(str(path))))

    def account(self, sid: str) -> str | None:
        if not osflags.WINDOWS:
            raise OSError("accounts exist only on Windows")
        import pywintypes
        import win32security

        try:
            name, domain, _kind = win32security.LookupAccountSid(
                None, win32security.ConvertStringSidToSid(sid)
            )
        except pywintypes.error:
            return None
        return f"{domain}\\{name}" if domain else name

    def sid_of(self, name: str) -> str | None:
        if not osflags.WINDOWS:
            raise OSError("accounts exist only on Windows")
        import pywintypes
        import win32security

        try:
            sid, _domain, _kind = win32security.LookupAccountName(None, name)
        except pywintypes.error:
            return None
        return str(win32security.ConvertSidToStringSid(sid))


__all__ = [
    "PROFILE_LIST",
    "ProfileSource",
    "RegistryProfiles",
    "WindowsUser",
    "find_user",
    "is_person",
    "windows_users",
]
