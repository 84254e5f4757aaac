"""End-to-end fixtures (prefixed `e2e_`): real local users made with useradd, removed afterwards."""

from __future__ import annotations

import contextlib
import dataclasses
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import is_root


@dataclasses.dataclass(frozen=True)
class E2EUser:
    name: str
    uid: int
    gid: int
    home: Path


def _delete_user(name: str) -> None:
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def e2e_users(tmp_path: Path) -> Iterator[list[E2EUser]]:
    """Two real system users `tk-e2e-a` and `tk-e2e-b` (useradd -M), homes under tmp_path."""
    if not is_root() or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to create real local users")
    users = []
    try:
        for name in ("tk-e2e-a", "tk-e2e-b"):
            _delete_user(name)  # a leftover of an interrupted run
            home = tmp_path / "home" / name
            subprocess.run(
                ["useradd", "-M", "-U", "-d", str(home), "-s", "/bin/bash", name],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(name)
            home.mkdir(parents=True)
            shutil.chown(home, entry.pw_uid, entry.pw_gid)
            users.append(E2EUser(name, entry.pw_uid, entry.pw_gid, home))
        yield users
    finally:
        for name in ("tk-e2e-a", "tk-e2e-b"):
            _delete_user(name)
