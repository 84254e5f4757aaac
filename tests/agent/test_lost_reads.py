"""Nothing lost silently (issue #10): reads the agent sees but cannot write are counted, still sent
when possible, and shown in status, the heartbeat and the alert.

Hostile input: a FULL state disk (a 4 MiB tmpfs mounted as the state directory, then filled), and a
read log that starts failing (an injected SQLite error: a corrupt database, spool still fine).
The agent is the real service with the real fanotify sensor against a LIVE issuer.
"""

from __future__ import annotations

import errno
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.status import format_status, status_data
from tests.support.agent import running_service, wait_for
from tests.support.paths import requires_root

pytestmark = requires_root
READS = 33  # the count: 33 reads on a full disk vanished with lost_events 0


@pytest.fixture
def small_state_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "state"
    mount.mkdir(mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tripkey-test", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with pytest.raises(OSError):  # really full: not even a small file fits
        (directory / "probe").write_bytes(b"x" * 8192)
    return filler


def _reads(path: Path, count: int) -> list[int]:
    pids = []
    for _ in range(count):
        reader = subprocess.Popen(["cat", str(path)], stdout=subprocess.DEVNULL)
        assert reader.wait(timeout=10) == 0
        pids.append(reader.pid)
    return pids


def _issuer_device(issuer: Any, device_id: str) -> dict[str, Any]:
    response = issuer.request("GET", f"/v1/devices/{device_id}", issuer.create_token("responder"))
    response.raise_for_status()
    return dict(response.json())


def test_a_full_state_disk_counts_every_read_it_cannot_keep(
    tmp_path: Path, live_issuer: Any, small_state_disk: Path
) -> None:
    with running_service(tmp_path, live_issuer, sensor="fanotify", state_dir=str(small_state_disk)) as (
        service,
        users,
    ):
        alice = users[0]
        [control] = _reads(alice.credentials, 1)
        assert wait_for(lambda: [r for r in service.readlog.query() if r["pid"] == control])
        filler = _fill(small_state_disk)

        pids = set(_reads(alice.credentials, READS))

        def accounted() -> bool:
            logged = {r["pid"] for r in service.readlog.query()} & pids
            return len(logged) + service._health()["readlog_failed"] == READS

        assert wait_for(accounted, 20), (service._health(), len(service.readlog.query()))
        health = service._health()
        assert health["readlog_failed"] > 0, "a full disk failed no write?"
        # status (another process would read the same files): the counters survive a full disk.
        data = wait_for(
            lambda: (d := status_data(service.config))["readlog_failed"] == health["readlog_failed"] and d
        )
        assert data, status_data(service.config)
        assert "could not be written to the read log" in format_status(data)
        # The heartbeat carries it to the issuer, and an alert of this device says so.
        device_id = service.store.state.device_id
        device = wait_for(
            lambda: (d := _issuer_device(live_issuer, device_id))["health"].get("readlog_failed") and d, 20
        )
        assert device and device["health"]["readlog_failed"] >= health["readlog_failed"]
        assert device["health"]["deadman"]["kind"] == "off"  # in-process here; armed by `run`
        from issuer.alerts.enrich import agent_health
        from issuer.alerts.verdict import VerdictInput, decide
        from issuer.detection.events import as_utc
        from issuer.models import Device

        with live_issuer.session() as session:
            row = session.get(Device, device_id)
            facts = agent_health(row, as_utc(row.last_heartbeat_at), stale_after_seconds=600)
        assert facts["readlog_failed"] > 0
        verdict = decide(
            VerdictInput(
                first_use=as_utc(row.last_heartbeat_at),
                placement_user=alice.name,
                reads=(),
                lost_events=facts["lost_events"],
                readlog_failed=facts["readlog_failed"],
            )
        )
        assert verdict.hint == "context_incomplete"
        assert any("local read log" in reason.text for reason in verdict.reasons)

        # Space again: reads are written again.
        filler.unlink()
        [after] = _reads(alice.credentials, 1)
        assert wait_for(lambda: [r for r in service.readlog.query() if r["pid"] == after], 20)


def test_a_failing_read_log_still_sends_the_read_and_counts_it(tmp_path: Path, live_issuer: Any) -> None:
    with running_service(tmp_path, live_issuer, sensor="fanotify") as (service, users):
        alice = users[0]
        real_record = service.readlog.record

        def corrupt(event: Any, label: Any) -> str:
            raise sqlite3.DatabaseError("database disk image is malformed")

        service.readlog.record = corrupt
        try:
            [pid] = _reads(alice.credentials, 1)
            assert wait_for(lambda: service._health()["readlog_failed"] == 1)
        finally:
            service.readlog.record = real_record
        device_id = service.store.state.device_id
        token = live_issuer.create_token("responder")

        def uploaded() -> list[dict[str, Any]]:
            response = live_issuer.request("GET", f"/v1/devices/{device_id}/reads?since=1h", token)
            return [r for r in response.json()["reads"] if r["pid"] == pid]

        rows = wait_for(uploaded)
        assert rows and rows[0]["exe"] == "/usr/bin/cat"  # the issuer still got the read
        assert service._health()["spool_failed"] == 0
        assert [r for r in service.readlog.query() if r["pid"] == pid] == []
