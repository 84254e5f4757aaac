"""Lists for large fleets against a live issuer with thousands of devices, on SQLite and PostgreSQL:
cursor pages that cover everything exactly once (also while devices enroll between pages), the
filters a responder needs, the coverage report, and the CLI following pages (--json, --jsonl).

The devices are inserted in bulk as enrollment and heartbeats write them (tests/support/fleet.py);
a few more go through the real enroll and heartbeat routes, so the derived columns the filters use
are proven to be written by the API too.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import threading
from collections import Counter
from typing import Any

import pytest

from server_api_client import IssuerClient
from server_api_client.cli import main as tripkey
from server_api_client.errors import RejectedError
from tests.support.fleet import health_document, seed_alerts, seed_credentials, seed_devices

DEVICES = 3000
ALERTS = 1200


@pytest.fixture
def fleet_issuer(issuer_factory: Any, db_url: str) -> Any:
    return issuer_factory(db_url=db_url)


def _responder(issuer: Any) -> IssuerClient:
    return IssuerClient(issuer.url, issuer.create_token("responder"), timeout=60)


def _cli(issuer: Any, token: str, *argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    code = tripkey(["--issuer", issuer.url, "--token", token, *argv], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    return out.getvalue()


def test_device_pages_filters_and_coverage(fleet_issuer: Any) -> None:
    with fleet_issuer.session() as session:
        seeded = seed_devices(session, DEVICES)
    # Through the API as well: an enrolled device that reports an unhealthy sensor and one
    # unplanted target of two must show up under those filters (the heartbeat route fills them).
    api_device, api_token = fleet_issuer.enroll("api-host-unhealthy", serial="API-SERIAL-1")
    beat = health_document("linux", healthy=False, expected=2, planted=1, lost=7, version="0.9.0")
    response = fleet_issuer.request("POST", f"/v1/devices/{api_device}/heartbeat", api_token, json=beat)
    assert response.status_code == 200, response.text
    responder = _responder(fleet_issuer)

    # Every device exactly once, in enrollment order, 250 at a time.
    listed = list(responder.iter_devices(page_size=250))
    ids = [d.device_id for d in listed]
    assert len(ids) == len(set(ids)) == DEVICES + 1
    assert ids[:DEVICES] == [d.device_id for d in sorted(seeded, key=lambda d: (d.enrolled_at, d.device_id))]

    # Devices enrolling while a responder pages: no device is returned twice or skipped.
    first = responder.devices_page(limit=400)
    for n in range(50):
        fleet_issuer.enroll(f"late-{n}")
    rest = list(responder.iter_devices(page_size=400))  # a fresh walk for the expected full set
    seen = [d.device_id for d in first.items]
    cursor = first.next_cursor
    while cursor:
        page = responder.devices_page(limit=400, cursor=cursor)
        seen += [d.device_id for d in page.items]
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)) == len(rest) == DEVICES + 51

    # Filters: each one equals the same selection made in Python from what was seeded.
    now = dt.datetime.now(dt.UTC)

    def expect(predicate: Any) -> set[str]:
        return {d.device_id for d in seeded if predicate(d)}

    seeded_ids = {d.device_id for d in seeded}

    def got(**filters: Any) -> set[str]:
        """The seeded devices the filters select (the API-enrolled ones are checked separately)."""
        return {d.device_id for d in responder.iter_devices(page_size=1000, **filters)} & seeded_ids

    def is_stale(d: Any) -> bool:
        return (now - (d.last_heartbeat_at or d.enrolled_at)).total_seconds() > 3600

    assert got(stale=True) == expect(is_stale)
    assert got(os="windows") == expect(lambda d: d.os == "windows")
    assert got(os="WINDOWS", agent_version="0.2.0") == expect(
        lambda d: d.os == "windows" and d.agent_version == "0.2.0"
    )
    assert got(sensor_healthy=False) == expect(lambda d: d.sensor_healthy is not True)
    assert got(planted=False) == expect(
        lambda d: d.targets_expected == 0 or d.targets_planted < d.targets_expected
    )
    assert got(planted=True, sensor="eslogger") == expect(
        lambda d: d.os == "darwin" and 0 < d.targets_expected == d.targets_planted
    )
    assert got(q="-000123") == expect(lambda d: "-000123" in d.hostname)
    assert got(q="sn0000077") == expect(lambda d: "sn0000077" in d.serial.lower())
    assert got(q="100%_") == set(), "LIKE wildcards in the search are literal characters"
    unhealthy_api = {
        d.device_id for d in responder.iter_devices(sensor_healthy=False, planted=False, q="api-")
    }
    assert unhealthy_api == {api_device}

    # A cursor only continues the query that made it.
    page = responder.devices_page(limit=10, os="linux")
    with pytest.raises(RejectedError, match="other filters"):
        responder.devices_page(limit=10, os="darwin", cursor=page.next_cursor)
    assert page.next_cursor
    forged = base64.urlsafe_b64encode(json.dumps({"l": "devices", "f": "x", "k": [1, 2]}).encode()).decode()
    for bad in ("%%%", "bm90IGpzb24", forged, page.next_cursor[:-3]):
        with pytest.raises(RejectedError) as caught:
            responder.devices_page(limit=10, os="linux", cursor=bad)
        assert caught.value.status_code == 422
    alerts_cursor = responder.alerts_page(limit=1).next_cursor
    assert alerts_cursor is None or alerts_cursor != page.next_cursor

    # Coverage: the same numbers as the seed (+ the API device, + 50 late enrollments).
    report = responder.coverage()
    devices = report["devices"]
    assert devices["total"] == DEVICES + 51
    assert devices["stale"] == len(expect(is_stale))
    assert devices["never_reported"] == sum(d.last_heartbeat_at is None for d in seeded) + 50
    by_os = Counter(d.os for d in seeded)
    assert devices["by_os"] == {
        "linux": by_os["linux"] + 51,
        "darwin": by_os["darwin"],
        "windows": by_os["windows"],
    }
    targets = report["targets"]
    assert targets["expected"] == sum(d.targets_expected for d in seeded) + 2
    assert targets["planted"] == sum(d.targets_planted for d in seeded) + 1
    sensors = report["sensors"]["by_name"]
    assert (
        sensors["fanotify"]["unhealthy"]
        == sum(d.os == "linux" and d.sensor_healthy is False for d in seeded) + 1
    )
    assert sensors["none reported"]["unknown"] == sum(d.sensor_healthy is None for d in seeded) + 50
    assert report["lost_events"]["sensor_lost"] == sum(d.lost for d in seeded) + 7

    # The CLI follows the pages: --jsonl streams one device per line, --json one object.
    token = fleet_issuer.create_token("responder")
    lines = _cli(fleet_issuer, token, "devices", "list", "--jsonl", "--page-size", "700").splitlines()
    assert (
        len(lines) == DEVICES + 51 and len({json.loads(line)["device_id"] for line in lines}) == DEVICES + 51
    )
    stale = json.loads(_cli(fleet_issuer, token, "devices", "list", "--stale", "--json"))["devices"]
    assert {d["device_id"] for d in stale} == expect(is_stale)
    limited = _cli(fleet_issuer, token, "devices", "list", "--os", "darwin", "--jsonl", "--limit", "5")
    assert len(limited.splitlines()) == 5
    assert json.loads(_cli(fleet_issuer, token, "coverage", "--json"))["devices"]["total"] == DEVICES + 51
    text = _cli(fleet_issuer, token, "coverage")
    assert "FLEET COVERAGE" in text and "devices not planted:" in text and "eslogger" in text


def test_alert_read_and_credential_pages(fleet_issuer: Any) -> None:
    with fleet_issuer.session() as session:
        devices = seed_devices(session, 400, prefix="cred")
        credentials = seed_credentials(session, devices, per_device=3)
        alerts = seed_alerts(session, ALERTS)
    responder = _responder(fleet_issuer)

    # Alerts newest first, every one once; a new alert opened while paging sorts before the cursor.
    first = responder.alerts_page(limit=100)
    with fleet_issuer.session() as session:
        newer = seed_alerts(session, 3, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=1), prefix="alr_new")
    listed = [a.alert_id for a in first.items]
    cursor = first.next_cursor
    while cursor:
        page = responder.alerts_page(limit=100, cursor=cursor)
        listed += [a.alert_id for a in page.items]
        cursor = page.next_cursor
    expected = [a["id"] for a in sorted(alerts, key=lambda a: (a["created_at"], a["id"]), reverse=True)]
    assert listed == expected, "alerts opened while paging sort before the cursor; none repeats"
    assert [a.alert_id for a in responder.alerts_page(limit=3).items] == [a["id"] for a in reversed(newer)]
    high_open = {a.alert_id for a in responder.iter_alerts(status="open", severity="high", page_size=50)}
    assert high_open == {a["id"] for a in alerts + newer if a["status"] == "open" and a["severity"] == "high"}
    window = {a.alert_id for a in responder.iter_alerts(since="100h", kind="selftest")}
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(hours=100)
    assert window == {a["id"] for a in alerts + newer if a["kind"] == "selftest" and a["last_seen"] >= cutoff}
    assert len(responder.list_alerts()) == ALERTS + 3, "the old call follows every page"

    # Credentials of the fleet and of one device, with the status filter.
    everything = [c.credential_id for c in responder.iter_credentials(page_size=333)]
    assert sorted(everything) == sorted(c["id"] for c in credentials) and len(set(everything)) == len(
        everything
    )
    revoked = {c.credential_id for c in responder.iter_credentials(status="revoked")}
    assert revoked == {c["id"] for c in credentials if c["revoked_at"] is not None}
    active = {c.credential_id for c in responder.iter_credentials(status="active", backend="sts-federation")}
    assert active == {
        c["id"]
        for c in credentials
        if not c["revoked_at"] and not c["retired_at"] and c["backend"] == "sts-federation"
    }
    one = devices[7]
    assert [c.status for c in responder.list_credentials(one.device_id)] == ["retired", "retired", "active"]

    # Reads of one device: 2,500 uploaded through the API, paged newest first while more arrive.
    device_id, token = fleet_issuer.enroll("reader-host")
    agent = IssuerClient(fleet_issuer.url, token, timeout=60)
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=5)

    def read(i: int) -> dict[str, Any]:
        when = base + dt.timedelta(seconds=i // 2)  # pairs share a time: ties broken by event id
        return {
            "event_id": f"ev-{i:06d}",
            "kind": "read",
            "time": when.isoformat(),
            "path": "/home/a/.aws/credentials",
            "read": {"pid": 1000 + i, "exe": "/usr/bin/cat", "cmdline": ["cat"], "sensor": "fanotify"},
        }

    assert agent.upload_events(device_id, [read(i) for i in range(2500)]).accepted == 2500
    page = responder.device_reads_page(device_id, since="24h", limit=300)
    late = threading.Thread(
        target=agent.upload_events, args=(device_id, [read(i) for i in range(2500, 2600)])
    )
    late.start()
    late.join()
    seen = [r.event_id for r in page.items]
    cursor = page.next_cursor
    while cursor:
        page = responder.device_reads_page(device_id, since="24h", limit=300, cursor=cursor)
        seen += [r.event_id for r in page.items]
        cursor = page.next_cursor
    newest_first = [
        f"ev-{i:06d}" for i in sorted(range(2500), key=lambda i: (i // 2, f"ev-{i:06d}"), reverse=True)
    ]
    assert seen == newest_first, "the 100 newer reads sort before the cursor; none repeats, none is lost"
    assert len(responder.device_reads(device_id, since="24h")) == 2600
    assert len(responder.device_reads(device_id, since="24h", limit=1234)) == 1234
    lines = _cli(
        fleet_issuer, fleet_issuer.create_token("responder"), "reads", "--device", device_id, "--jsonl"
    )
    assert len(lines.splitlines()) == 2600
