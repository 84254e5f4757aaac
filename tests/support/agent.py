"""Helpers for the agent runtime tests: a fake passwd database, configs against a live issuer."""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import datetime as dt
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.planting.planter import Planter
from agent.planting.targets import resolve_targets
from agent.reporting.enroll import ensure_enrolled
from agent.service import make_client
from agent.state import StateStore, TargetState

SEED = (
    b"# my own profiles\r\n[work]\r\naws_access_key_id = AKIAUSERSOWNKEY00001\r\n"
    b"aws_secret_access_key = s3cr3t\r\n\r\n; trailing comment"
)


@dataclasses.dataclass
class FakeUser:
    name: str
    uid: int
    gid: int
    home: Path

    @property
    def credentials(self) -> Path:
        return self.home / ".aws" / "credentials"


def make_users(
    root: Path, names: tuple[str, ...] = ("alice", "bob"), first_uid: int = 23001
) -> tuple[Path, list[FakeUser]]:
    """A passwd-format file with `names` whose homes live under `root` (uids need not exist)."""
    if os.geteuid() != 0:  # planting for other users means chown: root only (as in production)
        pytest.skip("needs root: the agent writes files owned by other users")
    users = []
    lines = ["root:x:0:0:root:/root:/bin/bash"]
    for index, name in enumerate(names):
        home = root / "home" / name
        home.mkdir(parents=True)
        uid = first_uid + index
        os.chown(home, uid, uid)
        users.append(FakeUser(name, uid, uid, home))
        lines.append(f"{name}:x:{uid}:{uid}::{home}:/bin/bash")
    passwd = root / "passwd"
    passwd.write_text("\n".join(lines) + "\n")
    return passwd, users


def agent_config(tmp_path: Path, issuer: Any, passwd: Path, users: list[FakeUser], **extra: Any) -> Any:
    """Explicit targets for `users` (all_users off), state under tmp_path, issuer = the live one."""
    overrides: dict[str, Any] = {
        "issuer_url": issuer.url,
        "enroll_token": issuer.create_token("enroll"),
        "state_dir": str(tmp_path / "state"),
        "all_users": False,
        "passwd_file": str(passwd),
        "target": [{"path": str(u.credentials), "owner": u.name} for u in users],
        "issuer_timeout": 10.0,
        "selfreport_socket": str(tmp_path / "selfreport.sock"),
    }
    overrides.update(extra)
    return load_config(None, env={}, overrides=overrides)


def parse_credentials(path: Path) -> configparser.RawConfigParser:
    """Parse the file exactly as botocore does (its own loader)."""
    from botocore.configloader import raw_config_parse

    parsed = raw_config_parse(str(path))
    parser = configparser.RawConfigParser()
    for section, values in parsed.items():
        parser[section] = values
    return parser


class Clock:
    """An injectable UTC clock."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


def seed(user: FakeUser, data: bytes = SEED) -> None:
    user.credentials.parent.mkdir(exist_ok=True)
    os.chown(user.credentials.parent, user.uid, user.gid)
    user.credentials.write_bytes(data)
    os.chown(user.credentials, user.uid, user.gid)
    os.chmod(user.credentials, 0o600)


class Rig:
    def __init__(self, tmp_path: Path, issuer: Any, **extra: Any) -> None:
        self.passwd, self.users = make_users(tmp_path)
        self.config = agent_config(tmp_path, issuer, self.passwd, self.users, **extra)
        self.issuer = issuer
        self.store = StateStore(self.config.state_dir)
        self.client = make_client(self.config)
        self.events: list[dict[str, Any]] = []
        self.clock = Clock()
        self.targets, self.errors = resolve_targets(self.config)
        ensure_enrolled(self.store, self.client, self.config, [u.name for u in self.users])
        self.planter = Planter(
            self.config, self.store, self.client, emit=self.events.append, clock=self.clock
        )

    def sync(self) -> list[TargetState]:
        return self.planter.sync(self.targets, self.errors)

    def ts(self, user: FakeUser) -> TargetState:
        return self.store.state.targets[str(user.credentials)]

    def target(self, user: FakeUser) -> Any:
        return next(t for t in self.targets if t.path == str(user.credentials))

    def issuer_credentials(self) -> dict[str, dict[str, Any]]:
        return {c.access_key_id: c for c in self.client.list_credentials(self.store.state.device_id)}


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll `predicate` every 0.1 s until it is truthy or `timeout` passes; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


@contextlib.contextmanager
def running_service(tmp_path: Path, issuer: Any, **extra: Any) -> Iterator[tuple[Any, list[FakeUser]]]:
    """An AgentService (agent.service, in a thread) for two fake users, alice's file seeded; stopped
    on exit. `extra` are config keys (e.g. sensor="fanotify")."""
    from agent.service import AgentService

    passwd, users = make_users(tmp_path)
    seed(users[0])
    fast = {"upload_interval": 0.5, "heartbeat_interval": 1.0, "check_interval": 60.0}
    service = AgentService(agent_config(tmp_path, issuer, passwd, users, **{**fast, **extra}))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        assert service.ready.wait(60), "service did not become ready"
        yield service, users
    finally:
        service.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "service did not stop"
