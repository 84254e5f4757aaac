"""`POST /v1/devices/{id}/retire`: offboarding a device against a live issuer minting in moto."""

from __future__ import annotations

import secrets
from typing import Any

from issuer.aws.config import AwsError
from issuer.aws.gateway import AwsGateway
from tests.support.aws import inspector


def _enroll_with_keys(issuer: Any, count: int = 2) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    body = {"device_key": secrets.token_urlsafe(32), "hostname": "lap-leaver", "os": "linux"}
    enrolled = issuer.request("POST", "/v1/enroll", issuer.create_token("enroll"), json=body).json()
    minted = [
        issuer.request(
            "POST",
            f"/v1/devices/{enrolled['device_id']}/credentials",
            enrolled["device_token"],
            json={"local_user": f"u{i}", "path": f"/home/u{i}/.aws/credentials", "profile": "prod-backup"},
        ).json()
        for i in range(count)
    ]
    return body, enrolled["device_id"], minted


def _users(moto_url: str) -> set[str]:
    return {u["UserName"] for u in inspector(moto_url, "iam").list_users()["Users"]}


def test_retire_revokes_keys_and_tokens_and_refuses_re_enrollment(live_issuer: Any, moto_url: str) -> None:
    body, device_id, minted = _enroll_with_keys(live_issuer)
    responder = live_issuer.create_token("responder")
    assert {m["principal_name"] for m in minted} <= _users(moto_url)

    assert live_issuer.request("POST", f"/v1/devices/{device_id}/retire", "not-a-token").status_code == 401
    # A device token (even the device's own) may not retire it.
    enrolled_again = live_issuer.request("POST", "/v1/enroll", live_issuer.create_token("enroll"), json=body)
    token = enrolled_again.json()["device_token"]
    assert live_issuer.request("POST", f"/v1/devices/{device_id}/retire", token).status_code == 403

    retired = live_issuer.request("POST", f"/v1/devices/{device_id}/retire", responder)
    assert retired.status_code == 200, retired.text
    data = retired.json()
    assert data["device"]["device_id"] == device_id and data["device"]["retired_at"]
    assert data["device"]["stale"] is False
    assert sorted(c["access_key_id"] for c in data["revoked"]) == sorted(m["access_key_id"] for m in minted)
    assert {c["status"] for c in data["revoked"]} == {"revoked"}
    assert not {m["principal_name"] for m in minted} & _users(moto_url)
    assert live_issuer.request("GET", f"/v1/devices/{device_id}", token).status_code == 401

    again = live_issuer.request("POST", f"/v1/devices/{device_id}/retire", responder)
    assert again.status_code == 200 and again.json()["revoked"] == []
    assert again.json()["device"]["retired_at"] == data["device"]["retired_at"]

    refused = live_issuer.request("POST", "/v1/enroll", live_issuer.create_token("enroll"), json=body)
    assert refused.status_code == 409
    assert "was retired" in refused.json()["error"]["message"]
    assert "remove the agent's state directory" in refused.json()["error"]["message"]
    # A reinstalled host (new device key) enrolls as a new device.
    fresh = {**body, "device_key": secrets.token_urlsafe(32)}
    new = live_issuer.request("POST", "/v1/enroll", live_issuer.create_token("enroll"), json=fresh)
    assert new.status_code == 200 and new.json()["device_id"] != device_id


class _FailsOnce:
    """The real gateway, except that one revoke fails as AWS would (a throttled DeleteUser)."""

    def __init__(self, real: AwsGateway, fail_on_call: int) -> None:
        self._real = real
        self._calls = 0
        self._fail_on_call = fail_on_call

    def revoke(self, **kwargs: Any) -> None:
        self._calls += 1
        if self._calls == self._fail_on_call:
            raise AwsError("iam:DeleteUser failed: Throttling: Rate exceeded", code="Throttling")
        self._real.revoke(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_retire_interrupted_by_aws_is_finished_by_calling_again(issuer_factory: Any, moto_url: str) -> None:
    from issuer.settings import load_settings

    probe = load_settings(env={}, overrides={"aws_endpoint": moto_url})
    gateway = _FailsOnce(AwsGateway(probe.minting_config()), fail_on_call=2)
    issuer = issuer_factory(aws_gateway=gateway)
    _body, device_id, minted = _enroll_with_keys(issuer, count=3)
    responder = issuer.create_token("responder")

    failed = issuer.request("POST", f"/v1/devices/{device_id}/retire", responder)
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "aws_error"
    device = issuer.request("GET", f"/v1/devices/{device_id}", responder).json()
    assert device["retired_at"] is None  # not retired while a key is still live
    statuses = [
        c["status"]
        for c in issuer.request("GET", f"/v1/devices/{device_id}/credentials", responder).json()[
            "credentials"
        ]
    ]
    assert statuses.count("revoked") == 1

    finished = issuer.request("POST", f"/v1/devices/{device_id}/retire", responder)
    assert finished.status_code == 200, finished.text
    assert len(finished.json()["revoked"]) == 2 and finished.json()["device"]["retired_at"]
    assert not {m["principal_name"] for m in minted} & _users(moto_url)
