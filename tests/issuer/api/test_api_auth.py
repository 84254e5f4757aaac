"""Role and scope enforcement for every route, table-driven, against a live issuer.

Callers: no token, a garbage token, a revoked token (all → 401), and each role: enroll, the
device's own token, another device's token (→ 403 on device routes), responder.
"""

from __future__ import annotations

import secrets
from typing import Any

PLACEMENT = {"local_user": "alice", "path": "/home/alice/.aws/credentials", "profile": "prod-backup"}
HEARTBEAT = {"sensor": {"name": "fanotify", "healthy": True}}
ROLES = ("enroll", "own_device", "other_device", "responder")
# Load balancers and Prometheus call the health routes and /metrics without a token (no secrets there).
OPEN_ROUTES = {
    ("GET", "/healthz"),
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v1/ingest/eventbridge/{destination}"),
}

# (method, path template, body, roles that may call it). Anything else gets 403.
ROUTE_TABLE: list[tuple[str, str, Any, set[str]]] = [
    ("POST", "/v1/enroll", "ENROLL", {"enroll"}),
    ("GET", "/v1/devices", None, {"responder"}),
    ("GET", "/v1/devices/{device_id}", None, {"own_device", "responder"}),
    ("GET", "/v1/devices/{device_id}/reads", None, {"responder"}),
    ("POST", "/v1/devices/{device_id}/credentials", PLACEMENT, {"own_device"}),
    ("GET", "/v1/devices/{device_id}/credentials", None, {"own_device", "responder"}),
    ("POST", "/v1/devices/{device_id}/credentials/{credential_id}/rotate", None, {"own_device"}),
    ("DELETE", "/v1/devices/{device_id}/credentials/{credential_id}", None, {"own_device", "responder"}),
    ("GET", "/v1/credentials/lookup/{access_key_id}", None, {"responder"}),
    ("GET", "/v1/credentials", None, {"responder"}),
    ("GET", "/v1/coverage", None, {"responder"}),
    ("POST", "/v1/devices/{device_id}/events", {"events": []}, {"own_device"}),
    ("POST", "/v1/devices/{device_id}/heartbeat", HEARTBEAT, {"own_device"}),
    ("POST", "/v1/devices/{device_id}/selftest", {"credential_id": "CRED"}, {"own_device"}),
    ("GET", "/v1/alerts", None, {"responder"}),
    ("GET", "/v1/alerts/{alert_id}", None, {"responder"}),
    ("POST", "/v1/alerts/{alert_id}/ack", {}, {"responder"}),
    ("POST", "/v1/alerts/{alert_id}/resolve", {}, {"responder"}),
    ("GET", "/v1/dead-letters", None, {"responder"}),
    # Last: the responder's call retires device A (its tokens revoked), which the rows above need live.
    ("POST", "/v1/devices/{device_id}/retire", {}, {"responder"}),
]


def _app_routes(issuer: Any) -> set[tuple[str, str]]:
    """Every operation the issuer serves, as its OpenAPI document lists them."""
    paths = issuer.request("GET", "/openapi.json").json()["paths"]
    routes = {(method.upper(), path) for path, operations in paths.items() for method in operations}
    assert ("GET", "/healthz") in routes  # the listing itself works
    return routes


class _World:
    """Two enrolled devices, one credential on device A, tokens of every role."""

    def __init__(self, issuer: Any) -> None:
        self.issuer = issuer
        self.device_id, self.own = issuer.enroll("host-a")
        self.other_id, self.other = issuer.enroll("host-b")
        self.enroll = issuer.create_token("enroll")
        self.responder = issuer.create_token("responder")
        revoked = issuer.create_token("responder")
        issuer.revoke_token(revoked)
        self.unauthenticated = {
            "missing": None,
            "garbage": "tkr_" + secrets.token_urlsafe(32),
            "revoked": revoked,
        }
        self.tokens = {
            "enroll": self.enroll,
            "own_device": self.own,
            "other_device": self.other,
            "responder": self.responder,
        }

    def new_credential(self) -> dict[str, Any]:
        url = f"/v1/devices/{self.device_id}/credentials"
        response = self.issuer.request("POST", url, self.own, json=PLACEMENT)
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def call(self, method: str, template: str, body: Any, token: str | None) -> Any:
        needs_cred = any(f"{{{name}}}" in template for name in ("credential_id", "access_key_id"))
        cred = self.new_credential() if needs_cred or body == {"credential_id": "CRED"} else {}
        path = template.format(
            device_id=self.device_id,
            credential_id=cred.get("credential_id"),
            access_key_id=cred.get("access_key_id", "AKIANOTHING"),
            alert_id="alr_doesnotexist",
        )
        if body == "ENROLL":
            body = {"device_key": secrets.token_urlsafe(32), "hostname": "host-c", "os": "linux"}
        elif body == {"credential_id": "CRED"}:
            body = {"credential_id": cred["credential_id"]}
        return self.issuer.request(method, path, token, json=body)


def test_the_table_covers_every_route(live_issuer: Any) -> None:
    table = {(method, path) for method, path, _, _ in ROUTE_TABLE}
    routes = _app_routes(live_issuer) - {("GET", "/openapi.json"), ("GET", "/docs"), ("HEAD", "/docs")}
    missing = {
        r for r in routes - table - OPEN_ROUTES if not r[1].startswith(("/docs", "/redoc", "/openapi"))
    }
    assert not missing, f"routes without an auth expectation in ROUTE_TABLE: {sorted(missing)}"


def test_every_route_enforces_roles_and_device_scope(issuer_factory: Any) -> None:
    # Every call on a credential route mints a fresh credential for device A: far beyond a real
    # device's minting budget (test_mint_limits.py tests the budget itself).
    live_issuer = issuer_factory(device_mint_burst=1000)
    world = _World(live_issuer)
    present = _app_routes(live_issuer)
    problems = []
    for method, template, body, allowed in ROUTE_TABLE:
        if (method, template) not in present:
            if template.startswith("/v1/alerts"):
                continue  # helper E's routes: checked once they exist (the coverage test lists extras)
            problems.append(f"{method} {template}: route is missing")
            continue
        for name, token in world.unauthenticated.items():
            response = world.call(method, template, body, token)
            if response.status_code != 401 or response.json()["error"]["code"] != "unauthenticated":
                problems.append(
                    f"{method} {template} with {name} token: {response.status_code} {response.text}"
                )
        for role in ROLES:
            response = world.call(method, template, body, world.tokens[role])
            error = (
                response.json().get("error")
                if response.headers.get("content-type") == "application/json"
                else None
            )
            if role in allowed:
                ok = response.status_code < 400 or (response.status_code == 404 and "alerts" in template)
            else:
                ok = response.status_code == 403 and error is not None and error["code"] == "forbidden"
            if not ok:
                problems.append(
                    f"{method} {template} as {role}: {response.status_code} {response.text[:200]}"
                )
    assert not problems, "\n".join(problems)


def test_device_token_on_unknown_device_is_403_not_404(live_issuer: Any) -> None:
    _, token = live_issuer.enroll()
    for path in ("/v1/devices/dev_nosuchdevice", "/v1/devices/dev_nosuchdevice/credentials"):
        response = live_issuer.request("GET", path, token)
        assert response.status_code == 403, response.text


def test_a_wrong_role_is_named_in_a_sentence_that_reads(live_issuer: Any) -> None:
    response = live_issuer.request("GET", "/v1/devices", live_issuer.create_token("enroll"))
    assert response.status_code == 403
    assert response.json()["error"]["message"] == (
        "this route needs a responder token, not a token with the enroll role"
    )


def test_other_schemes_and_malformed_headers_are_401(live_issuer: Any) -> None:
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "tkr_abc", "Token abc"):
        response = live_issuer.request("GET", "/v1/devices", headers={"Authorization": header})
        assert response.status_code == 401, (header, response.text)
        assert response.json()["error"]["code"] == "unauthenticated"
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_healthz_needs_no_token(live_issuer: Any) -> None:
    response = live_issuer.request("GET", "/healthz")
    assert response.status_code == 200 and response.json()["ok"] is True
