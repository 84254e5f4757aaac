"""Bounded power of a device token: a mint flood gets 429 after the limit, normal planting does not.

Hostile input: a stolen device token minting to new paths in a loop (once: 25 IAM users in 0.4 s),
and the same flood from 12 threads at once.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest

from issuer.errors import TooManyRequests
from issuer.minting import MintLimits, reserve_mint
from issuer.models import Device, Placement
from tests.support.detection import sessionmaker_for


def _mint(issuer: Any, device_id: str, token: str, n: int) -> Any:
    body = {"local_user": "alice", "path": f"/home/alice/{n}/.aws/credentials", "profile": "prod-backup"}
    return issuer.request("POST", f"/v1/devices/{device_id}/credentials", token, json=body)


def test_a_mint_flood_is_refused_after_the_limit_and_counted(issuer_factory: Any) -> None:
    issuer = issuer_factory(device_mint_burst=5)
    device_id, token = issuer.enroll()
    answers = [_mint(issuer, device_id, token, n) for n in range(25)]
    assert [a.status_code for a in answers] == [201] * 5 + [429] * 20
    refused = answers[5]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "limit" in refused.json()["error"]["message"]
    assert 3000 <= int(refused.headers["Retry-After"]) <= 3600
    # nothing was created in AWS for the refused mints
    iam = issuer.app.state.aws_gateway.client("iam")
    assert len(iam.list_users()["Users"]) == 5
    # a responder sees the counter on the device
    device = issuer.request("GET", f"/v1/devices/{device_id}", issuer.create_token()).json()
    assert device["minting"]["refused"] == 20
    assert device["minting"]["minted_in_window"] == 5 and device["minting"]["window_limit"] == 5
    assert device["minting"]["last_refused_at"]


def test_normal_planting_and_rotation_fit_the_default_budget(live_issuer: Any) -> None:
    """Two targets planted, then each rotated four times (ten mints) within the default budget."""
    device_id, token = live_issuer.enroll()
    creds = [_mint(live_issuer, device_id, token, n).json() for n in range(2)]
    for _ in range(4):
        for index, cred in enumerate(creds):
            url = f"/v1/devices/{device_id}/credentials/{cred['credential_id']}/rotate"
            response = live_issuer.request("POST", url, token)
            assert response.status_code == 201, response.text
            creds[index] = response.json()
    device = live_issuer.request("GET", f"/v1/devices/{device_id}", live_issuer.create_token()).json()
    assert device["minting"]["refused"] == 0 and device["minting"]["minted_in_window"] == 10


def test_placements_per_device_are_capped_but_rotation_goes_on(issuer_factory: Any) -> None:
    issuer = issuer_factory(device_max_placements=3)
    device_id, token = issuer.enroll()
    creds = [_mint(issuer, device_id, token, n) for n in range(4)]
    assert [c.status_code for c in creds] == [201, 201, 201, 429]
    assert "3 placements" in creds[3].json()["error"]["message"]
    url = f"/v1/devices/{device_id}/credentials/{creds[0].json()['credential_id']}/rotate"
    assert issuer.request("POST", url, token).status_code == 201
    assert _mint(issuer, device_id, token, 0).status_code == 201  # a known placement again is fine


@pytest.fixture
def store(db_url: str):  # type: ignore[no-untyped-def]
    engine, maker = sessionmaker_for(db_url)
    with maker() as session:
        device = Device(id="dev_1", device_key_hash="0" * 64, hostname="h", os="linux", users=[], health={})
        session.add(device)
        session.add_all(
            Placement(id=f"plc_{n}", device_id="dev_1", local_user="a", path=f"/p{n}", profile="p")
            for n in range(2)
        )
        session.commit()
    yield maker
    engine.dispose()


def test_concurrent_mints_never_overshoot_the_window(store: Any) -> None:
    """12 threads at once (within the engine's pool of 15 connections) against a budget of 3 + 2 x 2
    placements: exactly 7 pass, on SQLite and PostgreSQL."""
    limits = MintLimits(burst=3, window_seconds=3600, max_placements=100)
    passed: list[bool] = []
    start = threading.Barrier(12, timeout=30)

    def mint() -> None:
        with store() as session:
            device = session.get(Device, "dev_1")
            start.wait()
            try:
                reserve_mint(session, device, limits, new_placement=False)
                passed.append(True)
            except TooManyRequests:
                passed.append(False)

    threads = [threading.Thread(target=mint) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert passed.count(True) == 7 and passed.count(False) == 5
    with store() as session:
        assert session.get(Device, "dev_1").mints_refused == 5


def test_a_new_window_opens_with_a_fresh_budget(store: Any) -> None:
    limits = MintLimits(burst=1, window_seconds=60, max_placements=100)
    t0 = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)
    with store() as session:
        device = session.get(Device, "dev_1")
        for _ in range(5):  # 1 + 2 x 2 placements
            reserve_mint(session, device, limits, new_placement=False, now=t0)
        with pytest.raises(TooManyRequests) as refused:
            reserve_mint(session, device, limits, new_placement=False, now=t0 + dt.timedelta(seconds=20))
        assert refused.value.retry_after == 40
        reserve_mint(session, device, limits, new_placement=False, now=t0 + dt.timedelta(seconds=61))
