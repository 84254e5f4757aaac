"""The service keeps its inode-keyed sensor (eBPF, fanotify) on the planted INODE through every
rewrite (real kernel, LIVE issuer): the planter's re-plant is watched before it is visible, a replace
by the user's editor is picked up from the repair watcher, a hard link is attributed, and
~/.aws/config is never recorded."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import SEED, running_service, wait_for
from tests.support.paths import requires_root

pytestmark = requires_root


def _read(path: Path) -> int:
    reader = subprocess.Popen(["cat", str(path)], stdout=subprocess.DEVNULL)
    assert reader.wait(timeout=10) == 0
    return reader.pid


def _recorded(service: Any, pid: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    return wait_for(lambda: [r for r in service.readlog.query() if r["pid"] == pid], timeout)


@pytest.mark.parametrize("sensor", ["ebpf", "fanotify"])
def test_rewrites_by_the_agent_and_by_the_user_stay_watched(
    tmp_path: Path, live_issuer: Any, sensor: str
) -> None:
    with running_service(tmp_path, live_issuer, sensor=sensor) as (service, users):
        alice = users[0]
        first = alice.credentials.stat().st_ino
        assert _recorded(service, _read(alice.credentials))
        # The user removes our profile: the agent re-plants, a new inode marked before the rename.
        alice.credentials.write_bytes(SEED)
        assert wait_for(lambda: b"[prod-backup]" in alice.credentials.read_bytes(), 15)
        assert alice.credentials.stat().st_ino != first
        rows = _recorded(service, _read(alice.credentials))
        assert rows and rows[0]["path"] == str(alice.credentials)
        # The user's editor saves the file (a new inode, our profile kept): watched again at once.
        edited = alice.credentials.with_name(".credentials.swp")
        edited.write_bytes(alice.credentials.read_bytes() + b"\n# note\n")
        os.chown(edited, alice.uid, alice.gid)
        os.chmod(edited, 0o600)
        os.rename(edited, alice.credentials)
        # Someone else's rename is seen by the repair watcher, which refreshes the sensor: a read of
        # the editor's version is recorded once that happened (within a few seconds).
        assert wait_for(lambda: _recorded(service, _read(alice.credentials), 0.5), 10), "not watched"
        # A hard link made by the user is the same file.
        link = alice.home / "notes"
        os.link(alice.credentials, link)
        rows = _recorded(service, _read(link))
        assert rows and rows[0]["path"] == str(alice.credentials)
        # ~/.aws/config is never marked: no record, whatever reads it.
        config = alice.credentials.with_name("config")
        config.write_text("[default]\nregion = eu-west-1\n")
        other = _read(config)
        control = _read(alice.credentials)
        assert _recorded(service, control)
        assert [r for r in service.readlog.query() if r["pid"] == other] == []
        assert service.sensor.health().healthy  # type: ignore[union-attr]
