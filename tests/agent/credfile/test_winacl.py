"""Owner-only ACLs on Windows (agent/credfile/winacl.py) against a fake win32security surface:
the exact SetNamedSecurityInfo call (owner, protected DACL, who gets access) is what is checked;
that Windows enforces it is the Windows runner's part."""

from __future__ import annotations

import types
from typing import Any

import pytest

from agent.credfile import winacl

USER = "S-1-5-21-1-2-3-1109"


class Acl:
    def __init__(self) -> None:
        self.aces: list[tuple[int, int, int, str]] = []

    def AddAccessAllowedAceEx(self, revision: int, flags: int, mask: int, sid: str) -> None:
        self.aces.append((revision, flags, mask, sid))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    recorded: list[tuple[Any, ...]] = []
    fake = types.SimpleNamespace(
        ACL=Acl,
        ACL_REVISION=2,
        ConvertStringSidToSid=lambda text: text,
        SetNamedSecurityInfo=lambda *args: recorded.append(args),
        SE_FILE_OBJECT=1,
        OWNER_SECURITY_INFORMATION=0x1,
        DACL_SECURITY_INFORMATION=0x4,
        PROTECTED_DACL_SECURITY_INFORMATION=0x80000000,
    )
    monkeypatch.setattr(winacl, "win32security", fake, raising=False)
    monkeypatch.setattr(
        winacl,
        "ntsecuritycon",
        types.SimpleNamespace(OBJECT_INHERIT_ACE=1, CONTAINER_INHERIT_ACE=2, FILE_ALL_ACCESS=0x1F01FF),
        raising=False,
    )
    return recorded


def test_a_credentials_file_belongs_to_its_user_and_only_the_user_and_system_may_open_it(
    calls: list[tuple[Any, ...]],
) -> None:
    winacl.protect(r"C:\Users\alice\.aws\credentials", USER)
    [(path, kind, info, owner, group, dacl, sacl)] = calls
    assert (path, kind, owner, group, sacl) == (r"C:\Users\alice\.aws\credentials", 1, USER, None, None)
    assert info == 0x1 | 0x4 | 0x80000000  # owner, DACL, protected: nothing inherited from the profile
    assert [(sid, mask) for _rev, _flags, mask, sid in dacl.aces] == [
        (USER, 0x1F01FF),
        (winacl.SYSTEM_SID, 0x1F01FF),
    ]


def test_the_state_directory_is_systems_with_administrators_as_the_only_other_readers(
    calls: list[tuple[Any, ...]],
) -> None:
    winacl.protect_private_dir(r"C:\ProgramData\Tripkey")
    [(_path, _kind, _info, owner, _group, dacl, _sacl)] = calls
    assert owner == winacl.SYSTEM_SID
    assert [sid for *_, sid in dacl.aces] == [winacl.SYSTEM_SID, winacl.ADMINISTRATORS_SID]


def test_uids_for_sids_stay_apart_from_posix_uids_and_map_back() -> None:
    uid = winacl.uid_for_sid(USER)
    assert uid >= winacl.UID_BASE and uid == winacl.uid_for_sid(USER)
    assert winacl.sid_for_uid(uid) == USER
    assert winacl.uid_for_sid("S-1-5-21-1-2-3-1110") != uid
