"""Human-user discovery and owner lookup.

A human user (Linux) has uid in [UID_MIN, UID_MAX] from /etc/login.defs (1000..60000 when absent),
a login shell that is not nologin/false, and an existing home directory. Their target is
`<home>/.aws/credentials`: AWS_SHARED_CREDENTIALS_FILE is a per-process setting, not a system one,
so it is deliberately not consulted.

Everything reads either the system database (`pwd`) or, for tests, a passwd-format file. On
Windows the system database is the profile list (planting.winusers): users get a uid from their
SID (credfile.winacl.uid_for_sid), no gid (0) and no shell.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

from agent import osflags

if osflags.POSIX:
    import pwd

DEFAULT_UID_MIN = 1000
DEFAULT_UID_MAX = 60000
NO_LOGIN_SHELLS = frozenset({"nologin", "false", "sync", "shutdown", "halt"})


class UnknownUser(LookupError):
    """The named owner of a target does not exist on this host."""


@dataclasses.dataclass(frozen=True, slots=True)
class LocalUser:
    name: str
    uid: int
    gid: int
    home: str
    shell: str

    @property
    def credentials_path(self) -> str:
        return os.path.join(self.home, ".aws", "credentials")


def read_uid_range(login_defs: str = "/etc/login.defs") -> tuple[int, int]:
    """UID_MIN and UID_MAX from login.defs, the distribution defaults when absent or unreadable."""
    uid_min, uid_max = DEFAULT_UID_MIN, DEFAULT_UID_MAX
    try:
        with open(login_defs, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] in ("UID_MIN", "UID_MAX") and parts[1].isdigit():
                    if parts[0] == "UID_MIN":
                        uid_min = int(parts[1])
                    else:
                        uid_max = int(parts[1])
    except OSError:
        pass
    return uid_min, uid_max


def iter_passwd(passwd_file: str | None = None) -> Iterator[LocalUser]:
    """Every account, from the system database or a passwd-format file (malformed lines skipped)."""
    if passwd_file is None:
        if osflags.WINDOWS:
            yield from _windows_accounts()
        else:
            for entry in pwd.getpwall():
                yield LocalUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)
        return
    with open(passwd_file, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            fields = line.rstrip("\n").split(":")
            if len(fields) != 7 or line.startswith("#"):
                continue
            name, _pw, uid, gid, _gecos, home, shell = fields
            if not (uid.isdigit() and gid.isdigit()):
                continue
            yield LocalUser(name, int(uid), int(gid), home, shell)


def _windows_accounts() -> Iterator[LocalUser]:
    from agent.planting.winusers import RegistryProfiles, windows_users

    for user in windows_users(RegistryProfiles()):
        yield LocalUser(user.name, user.uid, 0, user.home, "")


def is_human(user: LocalUser, uid_min: int, uid_max: int) -> bool:
    if osflags.WINDOWS and not user.shell:  # the profile list: winusers already chose the people
        return True
    if not uid_min <= user.uid <= uid_max:
        return False
    if os.path.basename(user.shell or "") in NO_LOGIN_SHELLS or not user.shell:
        return False
    if user.home in ("", "/", "/nonexistent"):
        return False
    return os.path.isdir(user.home)


def discover_human_users(
    passwd_file: str | None = None, login_defs: str = "/etc/login.defs"
) -> list[LocalUser]:
    """Human users, sorted by uid; duplicates of a name (NSS + files) keep the first entry."""
    uid_min, uid_max = read_uid_range(login_defs)
    seen: set[str] = set()
    users = []
    for user in iter_passwd(passwd_file):
        if user.name in seen or not is_human(user, uid_min, uid_max):
            continue
        seen.add(user.name)
        users.append(user)
    return sorted(users, key=lambda u: (u.uid, u.name))


def lookup_user(name: str, passwd_file: str | None = None) -> LocalUser:
    """The account of a target's owner; UnknownUser when it does not exist."""
    if passwd_file is None:
        if osflags.WINDOWS:
            from agent.planting.winusers import RegistryProfiles, find_user

            found = find_user(RegistryProfiles(), name)
            if found is None:
                raise UnknownUser(f"owner {name!r} is not an account with a profile on this host")
            return LocalUser(found.name, found.uid, 0, found.home, "")
        else:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                raise UnknownUser(f"owner {name!r} is not a user on this host") from None
            return LocalUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)
    for user in iter_passwd(passwd_file):
        if user.name == name:
            return user
    raise UnknownUser(f"owner {name!r} is not in {passwd_file}")


__all__ = [
    "LocalUser",
    "UnknownUser",
    "discover_human_users",
    "is_human",
    "iter_passwd",
    "lookup_user",
    "read_uid_range",
]
