"""Uploading the spool to a LIVE issuer: batches, idempotence, outages, poison events, heartbeat."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.events.model import ProcessInfo, ReadEvent
from agent.reporting.payloads import heartbeat_payload, read_event_payload
from agent.reporting.spool import Spool
from agent.reporting.uploader import Backoff, Periodic, Uploader
from agent.sensors.base import SensorHealth
from server_api_client import IssuerClient
from tests.support.net import free_port


def make_read(i: int) -> dict[str, Any]:
    event = ReadEvent(
        time=dt.datetime(2026, 11, 22, 10, 0, i % 60, tzinfo=dt.UTC),
        path="/home/alice/.aws/credentials",
        pid=4000 + i,
        sensor="fanotify",
        ppid=1,
        exe="/usr/bin/cat",
        cmdline=("cat", "credentials"),
        uid=1000,
        user="alice",
        cwd="/home/alice",
        ancestors=(ProcessInfo(pid=1, exe="/sbin/init", cmdline=("init",), uid=0),),
    )
    return read_event_payload(event, str(uuid.uuid4()), "shell_utility")


@pytest.fixture
def device(live_issuer: Any) -> tuple[str, IssuerClient]:
    device_id, token = live_issuer.enroll(hostname="uploader-test")
    client = IssuerClient(live_issuer.url, token, timeout=10)
    yield device_id, client
    client.close()


def issuer_reads(live_issuer: Any, device_id: str) -> list[dict[str, Any]]:
    token = live_issuer.create_token("responder")
    response = live_issuer.request("GET", f"/v1/devices/{device_id}/reads?since=3650d&limit=5000", token)
    response.raise_for_status()
    return response.json()["reads"]


def test_batches_are_idempotent_and_only_acked_events_leave(
    tmp_path: Path, live_issuer: Any, device: tuple[str, IssuerClient]
) -> None:
    device_id, client = device
    events = [make_read(i) for i in range(1100)]
    with Spool(tmp_path / "spool.db") as spool:
        for e in events:
            spool.put(e)
        result = Uploader(client, spool, device_id, batch_size=500).flush()
        assert result.ok and result.sent == 1100
        assert (result.accepted, result.duplicates) == (1100, 0)
        assert spool.pending() == 0
        # The same events again (e.g. the answer was lost): the issuer de-duplicates.
        for e in events[:10]:
            spool.put(e)
        again = Uploader(client, spool, device_id).flush()
        assert (again.accepted, again.duplicates) == (0, 10)
        assert spool.pending() == 0
    reads = issuer_reads(live_issuer, device_id)
    assert len(reads) == 1100
    assert {r["classification"] for r in reads} == {"shell_utility"}


def test_unreachable_issuer_keeps_everything(tmp_path: Path) -> None:
    client = IssuerClient(f"http://127.0.0.1:{free_port()}", "tok", timeout=2, retries=0)
    with Spool(tmp_path / "spool.db") as spool:
        spool.put(make_read(1))
        result = Uploader(client, spool, "dev_x").flush()
        assert not result.ok and "unreachable" in (result.error or "")
        assert spool.pending() == 1


def test_invalid_event_is_discarded_and_counted_without_blocking_others(
    tmp_path: Path, live_issuer: Any, device: tuple[str, IssuerClient]
) -> None:
    device_id, client = device
    with Spool(tmp_path / "spool.db") as spool:
        spool.put(make_read(1))
        spool.put({"event_id": "bad-1", "kind": "nonsense", "time": "not a time", "path": "/p"})
        spool.put(make_read(2))
        result = Uploader(client, spool, device_id).flush()
        assert result.ok and result.rejected == 1 and result.accepted == 2
        assert spool.pending() == 0 and spool.rejected() == 1


def test_tamper_event_is_accepted(tmp_path: Path, live_issuer: Any, device: tuple[str, IssuerClient]) -> None:
    from agent.reporting.payloads import tamper_payload

    device_id, client = device
    with Spool(tmp_path / "spool.db") as spool:
        spool.put(tamper_payload("/p", "section_removed", "gone", True, dt.datetime.now(dt.UTC)))
        assert Uploader(client, spool, device_id).flush().accepted == 1


def test_heartbeat_payload_matches_the_contract(
    tmp_path: Path, live_issuer: Any, device: tuple[str, IssuerClient]
) -> None:
    device_id, client = device
    health = SensorHealth(
        name="fanotify", mode="permission", healthy=False, error="no CAP_SYS_ADMIN", lost_events=3
    )
    with Spool(tmp_path / "spool.db", max_events=1) as spool:
        spool.put(make_read(1))
        spool.put(make_read(2))  # one dropped
        deadman = {"armed": True, "kind": "supervisor", "timeout_ms": 1500, "petted_by": "x", "detail": "y"}
        payload = heartbeat_payload(
            sensor_health={**health.to_dict(), "readlog_failed": 33, "spool_failed": 2, "deadman": deadman},
            targets=[
                {
                    "path": "/p",
                    "local_user": "alice",
                    "profile": "prod-backup",
                    "access_key_id": "AKIAX",
                    "planted": True,
                    "error": None,
                }
            ],
            last_event_at="2026-11-22T10:00:00Z",
            spool=spool,
        )
    assert set(payload) == {
        "schema_version",
        "agent_version",
        "sensor",
        "targets",
        "last_event_at",
        "spool_pending",
        "spool_dropped",
        "spool_rejected",
        "readlog_failed",
        "spool_failed",
        "deadman",
    }
    sensor_keys = {"name", "mode", "healthy", "error", "lost_events", "detail", "uncovered"}
    assert set(payload["sensor"]) == sensor_keys
    assert payload["spool_pending"] == 1 and payload["spool_dropped"] == 1
    assert (payload["readlog_failed"], payload["spool_failed"], payload["deadman"]) == (33, 2, deadman)
    assert client.heartbeat(device_id, payload).ok
    token = live_issuer.create_token("responder")
    device_info = live_issuer.request("GET", f"/v1/devices/{device_id}", token).json()
    assert device_info["last_heartbeat_at"] is not None
    assert device_info["health"]["readlog_failed"] == 33 and device_info["health"]["deadman"] == deadman


def test_backoff_doubles_and_caps() -> None:
    backoff = Backoff(initial=5, cap=60, jitter=False)
    assert [backoff.next_delay() for _ in range(6)] == [5, 10, 20, 40, 60, 60]
    backoff.reset()
    assert backoff.next_delay() == 5


def test_periodic_due_and_failure() -> None:
    now = [100.0]
    job = Periodic(30, Backoff(5, 300, jitter=False), clock=lambda: now[0])
    assert job.due()
    job.succeeded()
    assert not job.due() and job.seconds_until_due() == 30
    assert job.failed() == 5
    now[0] += 5
    assert job.due()
    job.trigger_now()
    assert job.due()


def test_read_payload_never_carries_a_planted_secret() -> None:
    """The sensor's generic redaction is a heuristic (it keeps a 40-character value that starts with
    '/'); the planted secrets are known exactly and are scrubbed from what goes to the spool too."""
    secret = "/bcdEFGH1234567890abcdefghijklmnopqrstuvw"  # a real IAM secret may start with '/'
    token = "FwoGZXIvYXdzEJr//session+token=="
    event = ReadEvent(
        time=dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC),
        path="/home/alice/.aws/credentials",
        pid=4000,
        sensor="fanotify",
        cmdline=("grep", "-c", secret, "credentials"),
        cwd=f"/tmp/{token}",
        ancestors=(ProcessInfo(pid=1, exe="/bin/sh", cmdline=("sh", "-c", f"grep {secret} x"), uid=0),),
    )
    assert secret in repr(event)  # the heuristic did not catch it: this test is not vacuous
    payload = read_event_payload(event, str(uuid.uuid4()), "shell_utility", secrets={secret, token})
    text = repr(payload)
    assert secret not in text and token not in text
    assert payload["read"]["cmdline"] == ["grep", "-c", "[REDACTED]", "credentials"]
    assert payload["read"]["ancestors"][0]["cmdline"] == ["sh", "-c", "grep [REDACTED] x"]
