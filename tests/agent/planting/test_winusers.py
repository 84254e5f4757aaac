"""Windows users from the profile list (agent/planting/winusers.py), with the registry and the
account lookup faked (ProfileSource): which profiles are people, and how they are named."""

from __future__ import annotations

from agent.credfile.winacl import sid_for_uid
from agent.planting.winusers import find_user, windows_users

DOMAIN = "S-1-5-21-1377283216-344919071-3415362939"


class Profiles:
    """ProfileList as `reg query` shows it on a typical domain-joined laptop."""

    def __init__(self) -> None:
        self.keys = [
            ("S-1-5-18", r"C:\Windows\system32\config\systemprofile"),
            ("S-1-5-19", r"C:\Windows\ServiceProfiles\LocalService"),
            (f"{DOMAIN}-500", r"C:\Users\Administrator"),
            (f"{DOMAIN}-1104", r"C:\Users\dadmin"),
            (f"{DOMAIN}-1105", r"C:\Users\TEMP"),  # a temporary profile
            (f"{DOMAIN}-1106", r"C:\Users\gone"),  # folder deleted
            (f"{DOMAIN}-1107", r"C:\Users\deleted-account"),  # the account no longer resolves
            (f"{DOMAIN}-1108.bak", r"C:\Users\alice"),  # a backup key of a broken profile
            (f"{DOMAIN}-1109", r"C:\Users\alice"),
        ]
        self.names = {f"{DOMAIN}-1104": "CONTOSO\\dadmin", f"{DOMAIN}-1109": "CONTOSO\\alice"}

    def profiles(self) -> list[tuple[str, str]]:
        return self.keys

    def account(self, sid: str) -> str | None:
        return self.names.get(sid)

    def sid_of(self, name: str) -> str | None:
        return next((sid for sid, n in self.names.items() if n.lower().endswith(name.lower())), None)


def exists(path: str) -> bool:
    return not path.endswith("gone")


def test_people_are_account_sids_with_a_profile_folder_and_a_name() -> None:
    users = list(windows_users(Profiles(), exists))
    assert [(u.name, u.home) for u in users] == [
        ("CONTOSO\\dadmin", r"C:\Users\dadmin"),
        ("CONTOSO\\alice", r"C:\Users\alice"),
    ]
    assert sid_for_uid(users[1].uid) == f"{DOMAIN}-1109"  # the uid the planter carries maps back
    assert users[0].uid != users[1].uid


def test_an_owner_named_in_a_target_is_found_by_account_name() -> None:
    found = find_user(Profiles(), "alice")
    assert found is not None and (found.name, found.home, found.sid) == (
        "CONTOSO\\alice",
        r"C:\Users\alice",
        f"{DOMAIN}-1109",
    )
    assert find_user(Profiles(), "mallory") is None
