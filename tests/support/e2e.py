"""End-to-end fixtures (prefixed `e2e_`): real local users made with useradd, removed afterwards."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import is_root

E2E_USER_NAMES = ("tk-e2e-a", "tk-e2e-b")


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
def e2e_users() -> Iterator[list[E2EUser]]:
    """Two real system users `tk-e2e-a` and `tk-e2e-b` (useradd -M), removed afterwards.

    Their homes (0700, owned by them) live in a fresh directory under /tmp that every user may
    traverse: pytest's tmp_path is root-only (0700), so a process running AS the user could not
    reach its own home there. The directory is removed afterwards.
    """
    if not is_root() or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to create real local users")
    base = Path(tempfile.mkdtemp(prefix="tripkey-e2e-homes-"))
    os.chmod(base, 0o755)
    users = []
    try:
        for name in E2E_USER_NAMES:
            _delete_user(name)  # a leftover of an interrupted run
            home = base / name
            subprocess.run(
                ["useradd", "-M", "-U", "-d", str(home), "-s", "/bin/bash", name],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(name)
            home.mkdir(mode=0o700)
            shutil.chown(home, entry.pw_uid, entry.pw_gid)
            users.append(E2EUser(name, entry.pw_uid, entry.pw_gid, home))
        yield users
    finally:
        for name in E2E_USER_NAMES:
            _delete_user(name)
        shutil.rmtree(base, ignore_errors=True)


def wait_for_agent(
    check: Callable[[], Any], timeout: float, what: str, agent: subprocess.Popen[Any] | None = None
) -> Any:
    """Poll `check` until it returns something true; fail at once if the agent under test exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent is not None and agent.poll() is not None:
            raise AssertionError(f"the agent exited ({agent.returncode}) while waiting for {what}")
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
