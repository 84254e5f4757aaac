"""The documented flows against a live issuer minting in the moto server (real HTTP, real boto3)."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from issuer import registry

PLACEMENT = {"local_user": "alice", "path": "/home/alice/.aws/credentials", "profile": "prod-backup"}


def _iam(moto_url: str) -> Any:
    return boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1")


def _read_event(
    path: str = PLACEMENT["path"], when: dt.datetime | None = None, **read: Any
) -> dict[str, Any]:
    when = when or dt.datetime.now(dt.UTC)
    return {
        "event_id": str(uuid.uuid4()),
        "kind": "read",
        "time": when.isoformat(),
        "path": path,
        "read": {
            "pid": 4242,
            "ppid": 4200,
            "exe": "/usr/bin/cat",
            "cmdline": ["cat", path],
            "uid": 1000,
            "user": "alice",
            "sensor": "fanotify",
            "classification": "shell_utility",
            "ancestors": [{"pid": 4200, "exe": "/usr/bin/bash", "cmdline": ["bash"], "uid": 1000}],
            **read,
        },
    }


def test_enroll_same_key_same_device_fresh_token_old_revoked(live_issuer: Any) -> None:
    enroll = live_issuer.create_token("enroll")
    key = secrets.token_urlsafe(32)
    body = {
        "device_key": key,
        "hostname": "lap-17",
        "os": "linux",
        "users": ["alice"],
        "agent_version": "0.1.0",
    }
    first = live_issuer.request("POST", "/v1/enroll", enroll, json=body)
    assert first.status_code == 200, first.text
    again = live_issuer.request("POST", "/v1/enroll", enroll, json={**body, "agent_version": "0.1.1"})
    other = live_issuer.request(
        "POST", "/v1/enroll", enroll, json={**body, "device_key": secrets.token_urlsafe(32)}
    )
    assert first.json()["created"] is True
    assert again.json()["created"] is False
    assert again.json()["device_id"] == first.json()["device_id"]
    assert again.json()["device_token"] != first.json()["device_token"]
    assert other.json()["created"] is True and other.json()["device_id"] != first.json()["device_id"]
    device_id = first.json()["device_id"]
    old = live_issuer.request("GET", f"/v1/devices/{device_id}", first.json()["device_token"])
    assert old.status_code == 401 and old.json()["error"]["code"] == "unauthenticated"
    new = live_issuer.request("GET", f"/v1/devices/{device_id}", again.json()["device_token"])
    assert new.status_code == 200 and new.json()["agent_version"] == "0.1.1"
    devices = live_issuer.request("GET", "/v1/devices", live_issuer.create_token("responder")).json()[
        "devices"
    ]
    assert sorted(d["hostname"] for d in devices) == ["lap-17", "lap-17"]


def test_mint_rotate_list_revoke_lookup(live_issuer: Any, moto_url: str) -> None:
    device_id, token = live_issuer.enroll()
    responder = live_issuer.create_token("responder")
    base = f"/v1/devices/{device_id}/credentials"

    minted = live_issuer.request("POST", base, token, json=PLACEMENT)
    assert minted.status_code == 201, minted.text
    first = minted.json()
    assert first["access_key_id"].startswith("AKIA") and first["secret_access_key"]
    assert first["backend"] == "iam-user" and first["retired"] == []
    assert first["principal_name"].startswith("svc-backup-")
    assert "lap-17" not in first["principal_name"] and "alice" not in first["principal_name"]
    assert _iam(moto_url).get_user(UserName=first["principal_name"])["User"]["UserName"]

    # Same placement again: a new credential, the first one retired (and still known).
    second = live_issuer.request("POST", base, token, json=PLACEMENT).json()
    assert second["retired"] == [first["credential_id"]]
    assert second["placement_id"] == first["placement_id"]
    rotated = live_issuer.request("POST", f"{base}/{second['credential_id']}/rotate", token)
    assert rotated.status_code == 201, rotated.text
    third = rotated.json()
    assert third["retired"] == [second["credential_id"]] and third["placement_id"] == first["placement_id"]

    listed = live_issuer.request("GET", base, responder).json()["credentials"]
    status = {c["credential_id"]: c["status"] for c in listed}
    assert status == {
        first["credential_id"]: "retired",
        second["credential_id"]: "retired",
        third["credential_id"]: "active",
    }
    assert all("secret_access_key" not in c for c in listed)

    lookup = live_issuer.request("GET", f"/v1/credentials/lookup/{first['access_key_id']}", responder)
    assert lookup.status_code == 200
    info = lookup.json()
    assert info["status"] == "retired" and info["device"]["device_id"] == device_id
    assert (info["local_user"], info["path"], info["profile"]) == tuple(PLACEMENT.values())
    unknown = live_issuer.request("GET", "/v1/credentials/lookup/AKIAUNKNOWNUNKNOWN00", responder)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"

    revoked = live_issuer.request("DELETE", f"{base}/{third['credential_id']}", token)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked" and revoked.json()["revoked_at"]
    with pytest.raises(ClientError):
        _iam(moto_url).get_user(UserName=third["principal_name"])
    # Revoked keys are still found (a responder may ask about an old key).
    again = live_issuer.request("GET", f"/v1/credentials/lookup/{third['access_key_id']}", responder).json()
    assert again["status"] == "revoked"
    # Idempotent: revoking twice is fine.
    assert live_issuer.request("DELETE", f"{base}/{third['credential_id']}", responder).status_code == 200
    missing = live_issuer.request("DELETE", f"{base}/cred_doesnotexist", token)
    assert missing.status_code == 404


def test_find_credential_by_key_and_principal(live_issuer: Any) -> None:
    device_id, token = live_issuer.enroll()
    minted = live_issuer.request("POST", f"/v1/devices/{device_id}/credentials", token, json=PLACEMENT).json()
    with live_issuer.session() as session:
        by_key = registry.find_credential(session, access_key_id=minted["access_key_id"])
        by_name = registry.find_credential(session, principal_name=minted["principal_name"])
        assert (
            by_key is not None and by_name is not None and by_key.id == by_name.id == minted["credential_id"]
        )
        assert by_key.placement.device.id == device_id
        assert registry.find_credential(session, access_key_id="AKIANOPE") is None
        assert registry.find_credential(session) is None


def test_the_issuer_never_stores_the_secret(live_issuer: Any) -> None:
    device_id, token = live_issuer.enroll()
    secrets_seen = []
    for index in range(3):
        body = {**PLACEMENT, "path": f"/home/alice/.aws/credentials{index}"}
        minted = live_issuer.request("POST", f"/v1/devices/{device_id}/credentials", token, json=body).json()
        secrets_seen.append(minted["secret_access_key"])
    db_files = [p for p in Path(live_issuer.db_path).parent.iterdir() if p.name.startswith("issuer.db")]
    assert any(p.name.endswith("-wal") for p in db_files), db_files  # WAL mode is on
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in db_files if not p.name.endswith("lock")}
    assert set(modes.values()) == {"0o600"}, modes
    for path in db_files:
        content = path.read_bytes()
        for secret in secrets_seen:
            assert secret.encode() not in content, f"secret found in {path.name}"
    # The stored token hashes are not the tokens either.
    assert token.encode() not in b"".join(p.read_bytes() for p in db_files)


def test_events_are_idempotent_and_reads_are_queryable(live_issuer: Any) -> None:
    device_id, token = live_issuer.enroll()
    responder = live_issuer.create_token("responder")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    events = [
        _read_event(),
        _read_event(exe="/usr/bin/python3"),
        _read_event(when=old),
        _read_event(path="/srv/ci/.aws/credentials"),
        {
            "event_id": str(uuid.uuid4()),
            "kind": "tamper",
            "time": "2026-11-22T10:00:00Z",
            "path": PLACEMENT["path"],
            "tamper": {"action": "section_removed", "detail": "profile gone", "replanted": True},
        },
        {
            "event_id": str(uuid.uuid4()),
            "kind": "self_report",
            "time": "2026-11-22T10:00:00Z",
            "path": PLACEMENT["path"],
            "self_report": {"user": "alice", "note": "I opened it by mistake"},
        },
    ]
    url = f"/v1/devices/{device_id}/events"
    first = live_issuer.request("POST", url, token, json={"events": events})
    assert first.json() == {"accepted": 6, "duplicates": 0, "rejected": 0, "errors": []}, first.text
    again = live_issuer.request("POST", url, token, json={"events": [*events[:2], _read_event(), events[0]]})
    assert again.json() == {"accepted": 1, "duplicates": 3, "rejected": 0, "errors": []}

    reads = live_issuer.request("GET", f"/v1/devices/{device_id}/reads", responder, params={"since": "24h"})
    assert reads.status_code == 200, reads.text
    records = reads.json()["reads"]
    assert len(records) == 4  # 3 recent reads of the first upload + 1 from the second; not the old one
    assert all(r["device_id"] == device_id and r["event_id"] for r in records)
    assert {r["exe"] for r in records} == {"/usr/bin/cat", "/usr/bin/python3"}
    assert records[0]["ancestors"][0]["exe"] == "/usr/bin/bash"
    week = live_issuer.request("GET", f"/v1/devices/{device_id}/reads", responder, params={"since": "7d"})
    assert len(week.json()["reads"]) == 5
    iso = (old - dt.timedelta(minutes=1)).isoformat()
    only_path = live_issuer.request(
        "GET",
        f"/v1/devices/{device_id}/reads",
        responder,
        params={"since": iso, "path": "/srv/ci/.aws/credentials"},
    )
    assert [r["path"] for r in only_path.json()["reads"]] == ["/srv/ci/.aws/credentials"]
    limited = live_issuer.request(
        "GET", f"/v1/devices/{device_id}/reads", responder, params={"since": "7d", "limit": 2}
    )
    assert len(limited.json()["reads"]) == 2
    bad = live_issuer.request(
        "GET", f"/v1/devices/{device_id}/reads", responder, params={"since": "yesterday"}
    )
    assert bad.status_code == 422 and "since" in bad.json()["error"]["message"]


def test_heartbeat_and_selftest(live_issuer: Any) -> None:
    device_id, token = live_issuer.enroll()
    responder = live_issuer.create_token("responder")
    before = live_issuer.request("GET", f"/v1/devices/{device_id}", responder).json()
    assert before["last_heartbeat_at"] is None and before["health"] == {}
    beat = {
        "agent_version": "0.2.0",
        "sensor": {
            "name": "fanotify",
            "mode": "permission",
            "healthy": True,
            "error": None,
            "lost_events": 0,
        },
        "targets": [
            {
                "path": PLACEMENT["path"],
                "local_user": "alice",
                "profile": "prod-backup",
                "access_key_id": "AKIAEXAMPLE",
                "planted": True,
                "error": None,
            }
        ],
        "last_event_at": None,
        "spool_pending": 0,
        "spool_dropped": 0,
    }
    ack = live_issuer.request("POST", f"/v1/devices/{device_id}/heartbeat", token, json=beat)
    assert ack.status_code == 200 and ack.json()["ok"] is True
    after = live_issuer.request("GET", f"/v1/devices/{device_id}", responder).json()
    assert after["last_heartbeat_at"] and after["agent_version"] == "0.2.0" and after["stale"] is False
    assert after["health"]["sensor"]["mode"] == "permission"

    cred = live_issuer.request("POST", f"/v1/devices/{device_id}/credentials", token, json=PLACEMENT).json()
    test = live_issuer.request(
        "POST", f"/v1/devices/{device_id}/selftest", token, json={"credential_id": cred["credential_id"]}
    )
    assert test.status_code == 200, test.text
    expires = dt.datetime.fromisoformat(test.json()["expires_at"])
    window = (expires - dt.datetime.now(dt.UTC)).total_seconds()
    assert 800 < window <= 900
    other = live_issuer.request(
        "POST", f"/v1/devices/{device_id}/selftest", token, json={"credential_id": "cred_x"}
    )
    assert other.status_code == 404


def test_aws_failure_is_a_502_and_nothing_is_stored(issuer_factory: Any) -> None:
    # Port 9 (discard) on loopback: nothing listens, every AWS call fails fast.
    issuer = issuer_factory(aws_endpoint="http://127.0.0.1:9")
    device_id, token = issuer.enroll()
    response = issuer.request("POST", f"/v1/devices/{device_id}/credentials", token, json=PLACEMENT)
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "aws_error"
    listed = issuer.request("GET", f"/v1/devices/{device_id}/credentials", token).json()
    assert listed == {"credentials": [], "next_cursor": None}


def test_detection_runner_is_started_when_detection_is_configured(issuer_factory: Any) -> None:
    from issuer.detection.runner import DetectionRunner

    quiet = issuer_factory()
    assert quiet.app.state.detection_runner is None
    issuer = issuer_factory(poll_interval=3600)
    assert isinstance(issuer.app.state.detection_runner, DetectionRunner)


@pytest.mark.postgres
def test_the_api_on_postgresql(issuer_factory: Any, postgres_url: str) -> None:
    issuer = issuer_factory(db_url=postgres_url)
    assert issuer.db_path is None and issuer.settings.db_url.startswith("postgresql+psycopg://")
    device_id, token = issuer.enroll(users=["alice", "bob"])
    responder = issuer.create_token("responder")
    minted = issuer.request("POST", f"/v1/devices/{device_id}/credentials", token, json=PLACEMENT)
    assert minted.status_code == 201, minted.text
    events = {"events": [_read_event(), _read_event()]}
    uploaded = issuer.request("POST", f"/v1/devices/{device_id}/events", token, json=events)
    assert uploaded.json()["accepted"] == 2
    reads = issuer.request("GET", f"/v1/devices/{device_id}/reads", responder).json()["reads"]
    assert len(reads) == 2 and reads[0]["time"].endswith(("Z", "+00:00"))
    key_id = minted.json()["access_key_id"]
    lookup = issuer.request("GET", f"/v1/credentials/lookup/{key_id}", responder).json()
    assert lookup["device"]["users"] == ["alice", "bob"] and lookup["status"] == "active"
    # PostgreSQL text cannot hold NUL: such ids must be a clean 404, not a driver error.
    assert issuer.request("GET", f"/v1/devices/{device_id}%00", responder).status_code == 404
    assert issuer.request("GET", "/v1/credentials/lookup/AKIA%00", responder).status_code == 404
