"""Human-user discovery from a passwd-format file: uid range, login shells, home directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.planting.users import UnknownUser, discover_human_users, lookup_user, read_uid_range


@pytest.fixture
def homes(tmp_path: Path) -> Path:
    for name in ("alice", "bob", "carol", "svc", "daemon", "nobody"):
        (tmp_path / "home" / name).mkdir(parents=True)
    return tmp_path / "home"


def passwd(tmp_path: Path, homes: Path) -> Path:
    lines = [
        "root:x:0:0:root:/root:/bin/bash",
        f"daemon:x:1:1:daemon:{homes}/daemon:/usr/sbin/nologin",
        f"alice:x:1000:1000:Alice:{homes}/alice:/bin/bash",
        f"bob:x:1001:1001::{homes}/bob:/usr/bin/zsh",
        f"carol:x:1002:1002::{homes}/carol:/usr/sbin/nologin",  # no login shell
        f"dave:x:1003:1003::{homes}/dave:/bin/bash",  # home does not exist
        f"svc:x:1004:1004::{homes}/svc:/bin/false",
        f"nobody:x:65534:65534::{homes}/nobody:/bin/sh",  # above UID_MAX
        "erin:x:1005:1005::/:/bin/bash",  # home is /
        "# a comment line",
        "broken line without fields",
        f"frank:x:notanumber:1:::{homes}/alice:/bin/bash",
        f"alice:x:1006:1006:dup:{homes}/bob:/bin/bash",  # same name again: first entry wins
    ]
    path = tmp_path / "passwd"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_discovers_only_human_users(tmp_path: Path, homes: Path) -> None:
    users = discover_human_users(str(passwd(tmp_path, homes)), login_defs="/nonexistent")
    assert [u.name for u in users] == ["alice", "bob"]
    alice = users[0]
    assert (alice.uid, alice.gid) == (1000, 1000)
    assert alice.credentials_path == f"{homes}/alice/.aws/credentials"


def test_uid_min_from_login_defs(tmp_path: Path, homes: Path) -> None:
    defs = tmp_path / "login.defs"
    defs.write_text("# comment\nUID_MIN\t\t 1001\nUID_MAX 1001\n")
    assert read_uid_range(str(defs)) == (1001, 1001)
    users = discover_human_users(str(passwd(tmp_path, homes)), login_defs=str(defs))
    assert [u.name for u in users] == ["bob"]


def test_uid_range_defaults_when_missing() -> None:
    assert read_uid_range("/nonexistent/login.defs") == (1000, 60000)


def test_lookup_user(tmp_path: Path, homes: Path) -> None:
    path = str(passwd(tmp_path, homes))
    assert lookup_user("carol", path).uid == 1002  # explicit owners need not be "human"
    with pytest.raises(UnknownUser, match="'zed'"):
        lookup_user("zed", path)


def test_lookup_system_user() -> None:
    assert lookup_user("root").uid == 0
    with pytest.raises(UnknownUser):
        lookup_user("tk-no-such-user-xyz")


def test_new_user_appears_on_rescan(tmp_path: Path, homes: Path) -> None:
    path = passwd(tmp_path, homes)
    before = {u.name for u in discover_human_users(str(path), "/nonexistent")}
    (homes / "gina").mkdir()
    with path.open("a") as fh:
        fh.write(f"gina:x:1010:1010::{homes}/gina:/bin/bash\n")
    after = {u.name for u in discover_human_users(str(path), "/nonexistent")}
    assert after - before == {"gina"}
