"""A live issuer with an EventBridge ingest destination, and canaries planted through its API."""

from __future__ import annotations

import hashlib
import json
from typing import Any

INGEST_SECRET = "ingest-" + "h" * 40


def ingest_settings() -> dict[str, Any]:
    """Settings overrides: one ingest destination `eventbridge` whose key is INGEST_SECRET."""
    digest = hashlib.sha256(INGEST_SECRET.encode()).hexdigest()
    return {"ingest_destinations": [{"name": "eventbridge", "secret_sha256": digest}]}


def post_ingest(issuer: Any, body: Any) -> Any:
    """POST `body` (JSON-encoded unless bytes) to the ingest endpoint with the right key."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-Tripkey-Ingest-Key": INGEST_SECRET}
    return issuer.request("POST", "/v1/ingest/eventbridge/eventbridge", data=data, headers=headers)


def plant_canary(issuer: Any, hostname: str = "lap-17", user: str = "alice") -> dict[str, Any]:
    """Enroll a device and mint one canary through the API, as the agent does; the issued credential
    with `device_id` and `device_token` added."""
    device_id, token = issuer.enroll(hostname=hostname, users=[user])
    body = {"local_user": user, "path": f"/home/{user}/.aws/credentials", "profile": "prod-backup"}
    response = issuer.request("POST", f"/v1/devices/{device_id}/credentials", token, json=body)
    assert response.status_code == 201, response.text
    return {**response.json(), "device_id": device_id, "device_token": token}
