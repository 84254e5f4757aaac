"""Every IssuerClient method against a live issuer (uvicorn + SQLite + moto as the AWS account)."""

from __future__ import annotations

import datetime as dt
import secrets

import pytest

from server_api_client import Alert, AuthError, IssuerClient, NotFound, RejectedError
from tests.support.client import World, read_event


@pytest.fixture
def responder(cl_world: World) -> IssuerClient:
    return IssuerClient(cl_world.url, cl_world.responder_token)


@pytest.fixture
def device(cl_world: World) -> IssuerClient:
    return IssuerClient(cl_world.url, cl_world.device_token)


def test_health(responder: IssuerClient) -> None:
    health = responder.health()
    assert health.ok is True and health.version


def test_enroll_same_key_same_device_new_token(cl_world: World) -> None:
    client = IssuerClient(cl_world.url, cl_world.issuer.create_token("enroll"))
    key = secrets.token_urlsafe(32)
    first = client.enroll(key, "lap-99", "linux", users=["bob"])
    again = client.enroll(key, "lap-99", "linux", users=["bob"])
    assert first.created is True and again.created is False
    assert again.device_id == first.device_id and again.device_token != first.device_token
    assert first.device_token not in repr(first)
    # the previous device token of that device is revoked
    with pytest.raises(AuthError) as info:
        IssuerClient(cl_world.url, first.device_token).get_device(first.device_id)
    assert info.value.status_code == 401
    assert IssuerClient(cl_world.url, again.device_token).get_device(first.device_id).hostname == "lap-99"


def test_enroll_rejects_short_device_key(cl_world: World) -> None:
    client = IssuerClient(cl_world.url, cl_world.issuer.create_token("enroll"))
    with pytest.raises(RejectedError) as info:
        client.enroll("short", "lap-1", "linux")
    assert info.value.status_code == 422 and info.value.code == "invalid_request"


def test_mint_rotate_list_revoke(cl_world: World, device: IssuerClient, responder: IssuerClient) -> None:
    path = "/srv/ci/.aws/credentials"
    first = device.mint_credential(cl_world.device_id, "ci", path, "ci-deploy")
    assert first.access_key_id.startswith(("AKIA", "ASIA")) and first.secret_access_key
    assert first.secret_access_key not in repr(first)
    second = device.mint_credential(cl_world.device_id, "ci", path, "ci-deploy")
    assert second.retired == (first.credential_id,)
    assert second.placement_id == first.placement_id
    rotated = device.rotate_credential(cl_world.device_id, second.credential_id)
    assert rotated.retired == (second.credential_id,) and rotated.access_key_id != second.access_key_id

    listed = {c.credential_id: c for c in responder.list_credentials(cl_world.device_id)}
    assert listed[first.credential_id].status == "retired"
    assert listed[rotated.credential_id].status == "active"
    assert listed[rotated.credential_id].path == path and listed[rotated.credential_id].local_user == "ci"
    assert isinstance(listed[rotated.credential_id].created_at, dt.datetime)

    revoked = responder.revoke_credential(cl_world.device_id, rotated.credential_id)
    assert revoked.status == "revoked" and revoked.revoked_at is not None
    looked_up = responder.lookup_credential(rotated.access_key_id)
    assert looked_up.status == "revoked"
    assert looked_up.device is not None and looked_up.device.hostname == cl_world.hostname


def test_device_token_cannot_touch_another_device(cl_world: World, device: IssuerClient) -> None:
    with pytest.raises(AuthError) as info:
        device.mint_credential(cl_world.idle_device_id, "alice", "/x", "p")
    assert info.value.status_code == 403


def test_upload_is_idempotent_and_reads_come_back(
    cl_world: World, device: IssuerClient, responder: IssuerClient
) -> None:
    event = read_event(
        cl_world.path,
        pid=777,
        exe="/usr/bin/less",
        cmdline=["less", cl_world.path],
        classification="shell_utility",
        user="alice",
    )
    assert device.upload_events(cl_world.device_id, [event]).accepted == 1
    again = device.upload_events(cl_world.device_id, [event])
    assert (again.accepted, again.duplicates) == (0, 1)
    reads = responder.device_reads(cl_world.device_id, since="1h", path=cl_world.path)
    by_id = {r.event_id: r for r in reads}
    assert by_id[event["event_id"]].exe == "/usr/bin/less"
    assert by_id[event["event_id"]].cmdline == ("less", cl_world.path)
    assert by_id[event["event_id"]].pid == 777
    assert set(cl_world.read_event_ids) <= set(by_id)
    assert len(responder.device_reads(cl_world.device_id, limit=1)) == 1
    assert responder.device_reads(cl_world.device_id, path="/nowhere") == []


def test_bad_since_is_rejected(cl_world: World, responder: IssuerClient) -> None:
    with pytest.raises(RejectedError) as info:
        responder.device_reads(cl_world.device_id, since="yesterday-ish")
    assert info.value.status_code == 422


def test_heartbeat_and_devices(cl_world: World, device: IssuerClient, responder: IssuerClient) -> None:
    beat = device.heartbeat(
        cl_world.device_id,
        {
            "agent_version": "0.1.0",
            "sensor": {
                "name": "fanotify",
                "mode": "permission",
                "healthy": True,
                "error": None,
                "lost_events": 0,
            },
            "targets": [],
            "last_event_at": None,
            "spool_pending": 0,
            "spool_dropped": 0,
        },
    )
    assert beat.ok is True and beat.server_time is not None
    devices = {d.device_id: d for d in responder.list_devices()}
    assert devices[cl_world.device_id].stale is False
    assert devices[cl_world.idle_device_id].stale is True  # never sent a heartbeat
    shown = responder.get_device(cl_world.device_id)
    assert shown.health["sensor"]["name"] == "fanotify"
    assert shown.last_heartbeat_at is not None


def test_selftest(cl_world: World, device: IssuerClient) -> None:
    info = device.start_selftest(cl_world.device_id, cl_world.credential_id)
    assert info.selftest_id and info.expires_at > dt.datetime.now(dt.UTC)


def test_not_found_and_bad_token(cl_world: World, responder: IssuerClient) -> None:
    with pytest.raises(NotFound) as info:
        responder.lookup_credential("AKIANOTACANARY000000")
    assert info.value.code == "not_found"
    with pytest.raises(NotFound):
        responder.get_device("dev_doesnotexist")
    with pytest.raises(AuthError) as auth:
        IssuerClient(cl_world.url, "not-a-real-token").list_devices()
    assert auth.value.status_code == 401 and auth.value.code == "unauthenticated"
    with pytest.raises(AuthError) as forbidden:
        IssuerClient(cl_world.url, cl_world.device_token).list_devices()  # responder route
    assert forbidden.value.status_code == 403


def test_alert_lifecycle(cl_world: World, responder: IssuerClient) -> None:
    alert_id = cl_world.alert()
    listed = {a.alert_id: a for a in responder.list_alerts(status="open")}
    assert alert_id in listed and listed[alert_id].status == "open"
    alert = responder.get_alert(alert_id)
    assert isinstance(alert, Alert)
    assert alert.enrichment["placement"]["path"] == cl_world.path
    assert "203.0.113.9" in alert.summary["source_ips"]
    acked = responder.ack_alert(alert_id, note="looking")
    assert acked.status == "acknowledged"
    assert alert_id not in {a.alert_id for a in responder.list_alerts(status="open")}
    resolved = responder.resolve_alert(alert_id)
    assert resolved.status == "resolved"
    assert alert_id in {a.alert_id for a in responder.list_alerts(status="resolved")}
    with pytest.raises(RejectedError) as conflict:
        responder.ack_alert(alert_id)  # a resolved alert stays resolved
    assert conflict.value.status_code == 409
    assert [n.get("action") for n in responder.get_alert(alert_id).notes] == ["ack", "resolve"]
    with pytest.raises(NotFound):
        responder.get_alert("al_doesnotexist")


def test_ingest_with_wrong_key_is_refused(cl_world: World) -> None:
    from tests.support.client import INGEST_DESTINATION
    from tests.support.cloudtrail import cloudtrail_event

    event = cloudtrail_event(
        access_key_id=cl_world.access_key_id,
        user_name=cl_world.principal_name,
        event_name="ListBuckets",
        source_ip="192.0.2.1",
    )
    with pytest.raises(AuthError) as info:
        IssuerClient(cl_world.url).ingest_eventbridge(INGEST_DESTINATION, "wrong-key", event)
    assert info.value.status_code == 401
