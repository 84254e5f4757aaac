"""The sts-federation backend through the API, against moto."""

from __future__ import annotations

import datetime as dt
from typing import Any


def _mint(issuer: Any, device_id: str, token: str, path: str) -> Any:
    return issuer.request(
        "POST",
        f"/v1/devices/{device_id}/credentials",
        token,
        json={"local_user": "alice", "path": path, "profile": "prod-backup"},
    )


def test_federation_credential_is_short_lived_and_recorded(issuer_factory: Any) -> None:
    issuer = issuer_factory(minting={"backend": "sts-federation", "federation_duration_seconds": 3600})
    device_id, token = issuer.enroll()
    response = _mint(issuer, device_id, token, "/home/alice/.aws/credentials")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["backend"] == "sts-federation"
    assert body["session_token"]
    expires = dt.datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    left = expires - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=55) < left <= dt.timedelta(hours=1, minutes=1)
    assert len(body["principal_name"]) <= 32


def test_an_access_key_id_aws_repeats_is_a_clear_502_not_a_500(issuer_factory: Any) -> None:
    # moto's GetFederationToken returns the same access key id every time; real AWS never does.
    issuer = issuer_factory(minting={"backend": "sts-federation"})
    device_id, token = issuer.enroll()
    assert _mint(issuer, device_id, token, "/home/alice/.aws/credentials").status_code == 201
    again = _mint(issuer, device_id, token, "/srv/ci/.aws/credentials")
    assert again.status_code == 502
    assert again.json()["error"]["code"] == "aws_error"
    assert "already registered" in again.json()["error"]["message"]
