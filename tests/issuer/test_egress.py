"""The device's egress address as the issuer sees it (issuer/egress.py): the TCP peer of heartbeats
and uploads, X-Forwarded-For believed only from a configured trusted proxy, and never as a client
writes it (a spoofed header from an untrusted peer, or hops a client prepended)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from issuer.egress import REFRESH, client_address, normalise, record_address, seen_addresses
from issuer.models import DeviceAddress


def test_the_tcp_peer_is_the_address_unless_it_is_a_trusted_proxy() -> None:
    assert client_address("198.51.100.7", "203.0.113.5", []) == "198.51.100.7"  # no proxy configured
    assert client_address("198.51.100.7", "203.0.113.5", ["10.0.0.0/8"]) == "198.51.100.7"  # spoofed
    assert client_address("10.1.2.3", "203.0.113.5", ["10.0.0.0/8"]) == "203.0.113.5"
    # A client prepends a forged hop; the trusted proxy appended the real one last.
    assert client_address("10.1.2.3", "1.2.3.4, 203.0.113.5", ["10.0.0.0/8"]) == "203.0.113.5"
    # Two trusted proxies in a row: the first untrusted hop from the right.
    assert client_address("10.1.2.3", "203.0.113.5, 10.9.9.9", ["10.0.0.0/8"]) == "203.0.113.5"
    assert client_address("10.1.2.3", "garbage", ["10.0.0.0/8"]) == "10.1.2.3"
    assert client_address("::ffff:198.51.100.7", None, []) == "198.51.100.7"
    assert normalise("not an address") is None and normalise("[2001:db8::1]") == "2001:db8::1"


def test_addresses_are_recorded_once_and_refreshed_at_most_hourly(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    device_id = cred.placement_id.replace("plc_", "dev_")
    t0 = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    with det_sessionmaker() as session:
        for minutes in range(3):  # heartbeats from the same place: no write after the first
            record_address(session, device_id, "198.51.100.7", t0 + dt.timedelta(minutes=minutes))
        record_address(session, device_id, "hostile\x00text", t0)  # not an address: ignored
        [row] = session.scalars(select(DeviceAddress)).all()
        assert (row.seen_count, row.first_seen, row.last_seen) == (1, t0, t0)
        later = t0 + REFRESH + dt.timedelta(minutes=1)
        record_address(session, device_id, "198.51.100.7", later)
        session.refresh(row)
        assert (row.seen_count, row.last_seen) == (2, later)
        assert [r.address for r in seen_addresses(session, device_id, t0)] == ["198.51.100.7"]
        assert seen_addresses(session, device_id, later + dt.timedelta(hours=1)) == []


def test_heartbeats_and_uploads_record_the_peer_or_the_trusted_proxys_client(issuer_factory: Any) -> None:
    direct = issuer_factory()
    device_id, token = direct.enroll()
    beat = {"sensor": {"name": "fanotify", "healthy": True}}
    headers = {"X-Forwarded-For": "203.0.113.66"}  # spoofed: the issuer trusts no proxy
    assert direct.request("POST", f"/v1/devices/{device_id}/heartbeat", token, json=beat, headers=headers).ok
    with direct.session() as session:
        assert [
            r.address for r in seen_addresses(session, device_id, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        ] == ["127.0.0.1"]
    proxied = issuer_factory(trusted_proxies=["127.0.0.1"])
    device_id, token = proxied.enroll()
    assert proxied.request(
        "POST", f"/v1/devices/{device_id}/events", token, json={"events": []}, headers=headers
    ).ok
    with proxied.session() as session:
        assert [
            r.address for r in seen_addresses(session, device_id, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        ] == ["203.0.113.66"]
