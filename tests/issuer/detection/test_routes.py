"""The ingest endpoint and the alerts routes on a live issuer (real HTTP, real DB, moto)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import uuid

import pytest

from issuer.detection.counters import read_counter
from tests.support.cloudtrail import cloudtrail_event, iso

INGEST_SECRET = "ingest-" + "s" * 40
OTHER_SECRET = "other-" + "o" * 40
ALERT_KEYS = {
    "schema_version",
    "alert_id",
    "kind",
    "severity",
    "status",
    "title",
    "selftest",
    "first_seen",
    "last_seen",
    "event_count",
    "summary",
    "enrichment",
    "verdict",
    "deliveries",
    "notes",
    "siem",
}


@pytest.fixture
def det_issuer(issuer_factory, det_webhook):  # type: ignore[no-untyped-def]
    receiver = det_webhook(secret="hook")
    issuer = issuer_factory(
        ingest_destinations=[
            {"name": "eventbridge", "secret_sha256": hashlib.sha256(INGEST_SECRET.encode()).hexdigest()},
            {"name": "other", "secret_sha256": hashlib.sha256(OTHER_SECRET.encode()).hexdigest()},
        ],
        sinks=[{"type": "webhook", "name": "soc", "url": receiver.url, "secret": "hook"}],
    )
    issuer.receiver = receiver
    return issuer


def plant(issuer):  # type: ignore[no-untyped-def]
    """Enroll a device and mint a canary through the API, as the agent does."""
    device_id, device_token = issuer.enroll(hostname="lap-17", users=["alice"])
    response = issuer.request(
        "POST",
        f"/v1/devices/{device_id}/credentials",
        device_token,
        json={"local_user": "alice", "path": "/home/alice/.aws/credentials", "profile": "prod-backup"},
    )
    assert response.status_code == 201, response.text
    return device_id, device_token, response.json()


def ingest(issuer, body, key=INGEST_SECRET, destination="eventbridge"):  # type: ignore[no-untyped-def]
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-Tripkey-Ingest-Key"] = key
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return issuer.request("POST", f"/v1/ingest/eventbridge/{destination}", data=data, headers=headers)


@pytest.mark.parametrize(
    ("key", "destination"),
    [
        (None, "eventbridge"),
        ("wrong", "eventbridge"),
        (INGEST_SECRET, "nope"),
        (OTHER_SECRET, "eventbridge"),
        ("", "eventbridge"),
    ],
    ids=["missing", "wrong", "unknown-destination", "other-destinations-key", "empty"],
)
def test_forged_or_unauthenticated_ingest_is_refused(det_issuer, key, destination) -> None:  # type: ignore[no-untyped-def]
    _, _, cred = plant(det_issuer)
    response = ingest(det_issuer, cloudtrail_event(access_key_id=cred["access_key_id"]), key, destination)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert det_issuer.request("GET", "/v1/alerts", det_issuer.create_token()).json()["alerts"] == []


def test_batch_with_a_malformed_event_still_alerts(det_issuer) -> None:  # type: ignore[no-untyped-def]
    _, _, cred = plant(det_issuer)
    good = cloudtrail_event(access_key_id=cred["access_key_id"], user_name=cred["principal_name"])
    bad = {"detail-type": "AWS API Call via CloudTrail", "detail": {"eventName": "x"}}
    response = ingest(det_issuer, [bad, good])
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1, "skipped": 1}
    alerts = det_issuer.request("GET", "/v1/alerts?status=open", det_issuer.create_token()).json()["alerts"]
    assert len(alerts) == 1 and alerts[0]["access_key_id"] == cred["access_key_id"]
    with det_issuer.session() as session:
        assert read_counter(session, "ingest.malformed") == 1
    assert det_issuer.receiver.event.wait(20), "the alert is delivered off the request path"
    assert det_issuer.receiver.requests[0]["signature_ok"]
    # one event (not an array) is accepted too; a body that is not JSON is refused and counted
    assert ingest(det_issuer, good).json() == {"accepted": 1, "skipped": 0}
    response = ingest(det_issuer, b"{not json")
    assert response.status_code == 422
    with det_issuer.session() as session:
        assert read_counter(session, "ingest.malformed") == 2
    # nested deeper than Python's JSON parser recurses (well under the 256 KiB limit): bad input too
    response = ingest(det_issuer, b"[" * 100_000 + b"]" * 100_000)
    assert response.status_code == 422, response.text
    with det_issuer.session() as session:
        assert read_counter(session, "ingest.malformed") == 3


def test_ingest_body_limit(det_issuer) -> None:  # type: ignore[no-untyped-def]
    response = ingest(det_issuer, b"[" + b" " * (300 * 1024) + b"]")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_alert_shape_refreshed_reads_ack_resolve(det_issuer) -> None:  # type: ignore[no-untyped-def]
    device_id, device_token, cred = plant(det_issuer)
    responder = det_issuer.create_token()
    used = dt.datetime.now(dt.UTC)
    assert (
        ingest(det_issuer, cloudtrail_event(access_key_id=cred["access_key_id"], when=used)).status_code
        == 202
    )
    [summary] = det_issuer.request("GET", "/v1/alerts", responder).json()["alerts"]
    # The agent uploads its reads after the alert opened: showing the alert picks them up.
    read = {
        "event_id": str(uuid.uuid4()),
        "kind": "read",
        "time": iso(used - dt.timedelta(seconds=20)),
        "path": "/home/alice/.aws/credentials",
        "read": {
            "pid": 999,
            "ppid": 1,
            "exe": "/usr/bin/python3",
            "cmdline": ["python3", "/tmp/loot.py"],
            "uid": 1000,
            "user": "alice",
            "access": "open",
            "sensor": "fanotify",
            "classification": "unknown",
        },
    }
    response = det_issuer.request(
        "POST", f"/v1/devices/{device_id}/events", device_token, json={"events": [read]}
    )
    assert response.status_code == 200, response.text
    alert = det_issuer.request("GET", f"/v1/alerts/{summary['alert_id']}", responder).json()
    assert set(alert) >= ALERT_KEYS
    assert set(alert["summary"]) >= {"source_ips", "user_agents", "event_names", "regions", "error_codes"}
    assert set(alert["enrichment"]) >= {
        "device",
        "placement",
        "credential",
        "reads",
        "self_reports",
        "agent_health",
    }
    assert alert["enrichment"]["device"]["device_id"] == device_id
    assert alert["enrichment"]["reads"][0]["cmdline"] == ["python3", "/tmp/loot.py"]
    assert alert["verdict"]["hint"] == "suspicious"
    assert any("/tmp/loot.py" in r["text"] for r in alert["verdict"]["reasons"])
    assert cred["secret_access_key"] not in json.dumps(alert)

    acked = det_issuer.request(
        "POST", f"/v1/alerts/{alert['alert_id']}/ack", responder, json={"note": "on it"}
    )
    assert acked.status_code == 200 and acked.json()["status"] == "acknowledged"
    assert [n["note"] for n in acked.json()["notes"]] == ["on it"]
    assert [
        a["alert_id"]
        for a in det_issuer.request("GET", "/v1/alerts?status=acknowledged", responder).json()["alerts"]
    ] == [alert["alert_id"]]
    resolved = det_issuer.request("POST", f"/v1/alerts/{alert['alert_id']}/resolve", responder)
    assert resolved.status_code == 200 and resolved.json()["status"] == "resolved"
    assert det_issuer.request("POST", f"/v1/alerts/{alert['alert_id']}/ack", responder).status_code == 409
    # a new use after resolution is a new incident
    ingest(det_issuer, cloudtrail_event(access_key_id=cred["access_key_id"]))
    assert len(det_issuer.request("GET", "/v1/alerts?status=open", responder).json()["alerts"]) == 1


def test_alert_routes_auth_and_bad_input(det_issuer) -> None:  # type: ignore[no-untyped-def]
    _, device_token, cred = plant(det_issuer)
    ingest(det_issuer, cloudtrail_event(access_key_id=cred["access_key_id"]))
    responder = det_issuer.create_token()
    [alert] = det_issuer.request("GET", "/v1/alerts", responder).json()["alerts"]
    assert det_issuer.request("GET", "/v1/alerts").status_code == 401
    assert det_issuer.request("GET", "/v1/alerts", device_token).status_code == 403
    assert det_issuer.request("POST", f"/v1/alerts/{alert['alert_id']}/ack", device_token).status_code == 403
    assert det_issuer.request("GET", "/v1/alerts/alr_nope", responder).status_code == 404
    assert det_issuer.request("GET", "/v1/alerts?status=bogus", responder).status_code == 422
    response = det_issuer.request(
        "POST", f"/v1/alerts/{alert['alert_id']}/ack", responder, json={"note": "x", "extra": 1}
    )
    assert response.status_code == 422
    response = det_issuer.request(
        "POST", f"/v1/alerts/{alert['alert_id']}/resolve", responder, json={"note": "n" * 5000}
    )
    assert response.status_code == 422


def test_selftest_use_is_labelled_and_not_paged(issuer_factory, det_webhook) -> None:  # type: ignore[no-untyped-def]
    pager = det_webhook(status=202)
    hook = det_webhook(secret="hook")
    issuer = issuer_factory(
        ingest_destinations=[
            {"name": "eventbridge", "secret_sha256": hashlib.sha256(INGEST_SECRET.encode()).hexdigest()}
        ],
        sinks=[
            {"type": "pagerduty", "name": "pager", "routing_key": "RK", "endpoint": pager.url},
            {"type": "webhook", "name": "soc", "url": hook.url, "secret": "hook"},
        ],
    )
    device_id, device_token, cred = plant(issuer)
    response = issuer.request(
        "POST",
        f"/v1/devices/{device_id}/selftest",
        device_token,
        json={"credential_id": cred["credential_id"]},
    )
    assert response.status_code == 200, response.text
    assert ingest(issuer, cloudtrail_event(access_key_id=cred["access_key_id"])).status_code == 202
    assert hook.event.wait(20)
    payload = json.loads(hook.requests[0]["body"])["alert"]
    assert (payload["kind"], payload["severity"], payload["selftest"]) == ("selftest", "low", True)
    responder = issuer.create_token()
    alert = issuer.request("GET", f"/v1/alerts/{payload['alert_id']}", responder).json()
    deadline = dt.datetime.now() + dt.timedelta(seconds=20)
    while {d["status"] for d in alert["deliveries"]} & {"pending"} and dt.datetime.now() < deadline:
        time.sleep(0.1)
        alert = issuer.request("GET", f"/v1/alerts/{payload['alert_id']}", responder).json()
    statuses = {d["sink"]: d["status"] for d in alert["deliveries"]}
    assert statuses == {"pager": "skipped", "soc": "delivered"}
    assert pager.requests == [], "a self-test never pages"
