"""Bad input gets a 4xx JSON error with a clear message, never a 500 (live issuer, real HTTP)."""

from __future__ import annotations

import secrets
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

PLACEMENT = {"local_user": "alice", "path": "/home/alice/.aws/credentials", "profile": "prod-backup"}


@pytest.fixture
def world(live_issuer: Any) -> dict[str, Any]:
    device_id, token = live_issuer.enroll()
    return {
        "issuer": live_issuer,
        "device_id": device_id,
        "device": token,
        "enroll": live_issuer.create_token("enroll"),
        "responder": live_issuer.create_token("responder"),
    }


def _error(response: requests.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["message"]
    for word in words:
        assert word in error["message"], (word, error["message"])
    return str(error["code"])


def _event(**overrides: Any) -> dict[str, Any]:
    event = {
        "event_id": str(uuid.uuid4()),
        "kind": "read",
        "time": "2026-11-22T10:00:00Z",
        "path": "/home/alice/.aws/credentials",
        "read": {"pid": 1, "sensor": "fanotify"},
    }
    event.update(overrides)
    return event


def _enroll_body(**overrides: Any) -> dict[str, Any]:
    return {"device_key": secrets.token_urlsafe(32), "hostname": "h", "os": "linux", **overrides}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (_enroll_body(colour="blue"), ["colour", "unknown field"]),
        (_enroll_body(hostname=123), ["hostname"]),
        (_enroll_body(users="alice"), ["users"]),
        (_enroll_body(device_key="short"), ["device_key"]),
        (_enroll_body(hostname="a\x00b"), ["hostname", "NUL"]),
        ({"hostname": "h", "os": "linux"}, ["device_key", "required"]),
        ([], ["body"]),
        ("a string", ["body"]),
    ],
)
def test_enroll_rejects_bad_bodies(world: dict[str, Any], body: Any, words: list[str]) -> None:
    response = world["issuer"].request("POST", "/v1/enroll", world["enroll"], json=body)
    assert _error(response, 422, *words) == "invalid_request"


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (_event(kind="telepathy"), ["events.1.kind"]),
        (_event(read=None), ["read"]),
        (_event(tamper={"action": "file_deleted"}), ["tamper"]),
        (_event(time="yesterday"), ["time"]),
        (_event(time="0001-01-01T00:00:00+01:00"), ["time"]),
        (_event(read={"pid": 2**40, "sensor": "x"}), ["pid"]),
        (_event(read={"pid": "one", "sensor": "x"}), ["pid"]),
        (_event(read={"pid": 1, "sensor": "x", "flavour": 1}), ["flavour", "unknown field"]),
        (_event(event_id=""), ["event_id"]),
        ("not an event", ["events.1", "dictionary"]),
    ],
)
def test_a_bad_event_is_refused_alone_and_its_neighbours_are_stored(
    world: dict[str, Any], bad: Any, words: list[str]
) -> None:
    url = f"/v1/devices/{world['device_id']}/events"
    events = [_event(), bad, _event()]
    response = world["issuer"].request("POST", url, world["device"], json={"events": events})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (2, 1)
    [error] = answer["errors"]
    assert error["index"] == 1
    for word in words:
        assert word in error["message"], (word, error["message"])


def test_a_batch_over_the_limit_is_refused_whole(world: dict[str, Any]) -> None:
    url = f"/v1/devices/{world['device_id']}/events"
    events = [_event() for _ in range(1001)]
    _error(
        world["issuer"].request("POST", url, world["device"], json={"events": events}), 422, "events", "1000"
    )


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({**PLACEMENT, "profile": "evil]\n[default"}, ["profile"]),
        ({**PLACEMENT, "extra": True}, ["extra", "unknown field"]),
        ({"local_user": "alice"}, ["path", "profile"]),
        ({**PLACEMENT, "path": ""}, ["path"]),
    ],
)
def test_credentials_reject_bad_bodies(world: dict[str, Any], body: Any, words: list[str]) -> None:
    url = f"/v1/devices/{world['device_id']}/credentials"
    _error(world["issuer"].request("POST", url, world["device"], json=body), 422, *words)


def test_heartbeat_and_selftest_reject_bad_bodies(world: dict[str, Any]) -> None:
    base = f"/v1/devices/{world['device_id']}"
    bad_beat = {"sensor": {"name": "x", "healthy": "very"}}
    _error(
        world["issuer"].request("POST", f"{base}/heartbeat", world["device"], json=bad_beat), 422, "healthy"
    )
    negative = {"sensor": {"name": "x", "healthy": True}, "spool_pending": -1}
    _error(world["issuer"].request("POST", f"{base}/heartbeat", world["device"], json=negative), 422, "spool")
    _error(
        world["issuer"].request("POST", f"{base}/selftest", world["device"], json={}), 422, "credential_id"
    )


def test_malformed_json_and_wrong_content_type(world: dict[str, Any]) -> None:
    issuer = world["issuer"]
    headers = {"Content-Type": "application/json"}
    broken = issuer.request("POST", "/v1/enroll", world["enroll"], data=b'{"device_key": ', headers=headers)
    _error(broken, 422, "not valid JSON")
    binary = issuer.request(
        "POST", "/v1/enroll", world["enroll"], data=b"\xff\xfe\x00garbage", headers=headers
    )
    assert 400 <= binary.status_code < 500 and binary.json()["error"]["code"]
    text = issuer.request(
        "POST", "/v1/enroll", world["enroll"], data=b"hello", headers={"Content-Type": "text/plain"}
    )
    assert 400 <= text.status_code < 500 and text.json()["error"]["message"]
    empty = issuer.request("POST", "/v1/enroll", world["enroll"], data=b"", headers=headers)
    assert 400 <= empty.status_code < 500 and empty.json()["error"]["message"]


def test_declared_oversized_body_is_413(world: dict[str, Any]) -> None:
    limit = world["issuer"].settings.max_body_bytes
    url = f"/v1/devices/{world['device_id']}/events"
    body = b'{"events": [' + b" " * limit + b"]}"
    response = world["issuer"].request(
        "POST", url, world["device"], data=body, headers={"Content-Type": "application/json"}
    )
    assert _error(response, 413, str(limit)) == "body_too_large"


def test_chunked_oversized_body_without_content_length_is_413(world: dict[str, Any]) -> None:
    limit = world["issuer"].settings.max_body_bytes

    def chunks() -> Iterator[bytes]:
        yield b'{"events": ['
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536
        yield b"]}"

    url = f"/v1/devices/{world['device_id']}/events"
    response = world["issuer"].request(
        "POST", url, world["device"], data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert _error(response, 413) == "body_too_large"


def test_chunked_body_under_the_limit_is_accepted(world: dict[str, Any]) -> None:
    import json

    payload = json.dumps({"events": [_event()]}).encode()
    url = f"/v1/devices/{world['device_id']}/events"
    response = world["issuer"].request(
        "POST",
        url,
        world["device"],
        data=iter([payload[:10], payload[10:]]),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": 0, "errors": []}


def test_413_on_a_raw_socket_with_a_lying_stream(world: dict[str, Any]) -> None:
    """Chunked upload written by hand: the issuer answers 413 while the client is still sending."""
    issuer = world["issuer"]
    host, port = issuer.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /v1/devices/{world['device_id']}/events HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {world['device']}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(head.encode())
        chunk = b" " * 65536
        try:
            for _ in range(issuer.settings.max_body_bytes // len(chunk) + 2):
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close as soon as it has answered
        answer = b""
        while not answer.endswith(b"}}"):  # headers and body may arrive in separate segments
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"body_too_large" in answer


def test_odd_ids_in_paths_are_404_not_500(world: dict[str, Any]) -> None:
    issuer = world["issuer"]
    for device_id in ("%00", "dev_%00x", "x" * 300, "%F0%9F%92%A3", "..%2F..%2Fetc"):
        response = issuer.request("GET", f"/v1/devices/{device_id}", world["responder"])
        assert response.status_code == 404, (device_id, response.text)
    for key in ("%00", "AKIA%20x", "a" * 500):
        response = issuer.request("GET", f"/v1/credentials/lookup/{key}", world["responder"])
        assert response.status_code == 404, (key, response.text)
    reads = issuer.request(
        "GET", f"/v1/devices/{world['device_id']}/reads", world["responder"], params={"limit": "0"}
    )
    _error(reads, 422, "limit")


def test_unknown_route_and_wrong_method_are_json(world: dict[str, Any]) -> None:
    issuer = world["issuer"]
    assert _error(issuer.request("GET", "/v1/nothing-here", world["responder"]), 404) == "not_found"
    assert _error(issuer.request("PUT", "/v1/enroll", world["enroll"]), 405) == "method_not_allowed"


@pytest.mark.parametrize(
    "since",
    [
        "999999w",
        "999999d",
        "9999-12-31T23:59:59-05:00",
        "0001-01-01T00:00:00+01:00",
        "\x00",
        "24h; drop",
        "ʼ",
    ],
)
def test_reads_since_garbage_is_422_not_500(world: dict[str, Any], since: str) -> None:
    """A relative `since` reaching before year 1 overflows datetime: that is bad input, not a crash."""
    url = f"/v1/devices/{world['device_id']}/reads"
    response = world["issuer"].request("GET", url, world["responder"], params={"since": since})
    assert _error(response, 422, "since") == "invalid_request"


def test_nul_and_odd_ids_in_every_path_are_404_on_both_databases(issuer_factory: Any, db_url: str) -> None:
    """PostgreSQL refuses NUL in text: an id holding one must be "not found", not a database error."""
    issuer = issuer_factory(db_url=db_url)
    device_id, device = issuer.enroll()
    responder = issuer.create_token("responder")
    for odd in ("%00", "a%00b", "%F0%9F%92%A3"):
        for method, path, token in [
            ("GET", f"/v1/devices/{odd}", responder),
            ("GET", f"/v1/devices/{odd}/reads", responder),
            ("GET", f"/v1/devices/{odd}/credentials", responder),
            ("DELETE", f"/v1/devices/{device_id}/credentials/{odd}", responder),
            ("POST", f"/v1/devices/{device_id}/credentials/{odd}/rotate", device),
            ("GET", f"/v1/credentials/lookup/{odd}", responder),
            ("GET", f"/v1/alerts/{odd}", responder),
            ("POST", f"/v1/alerts/{odd}/ack", responder),
            ("POST", f"/v1/alerts/{odd}/resolve", responder),
        ]:
            response = issuer.request(method, path, token)
            assert _error(response, 404) == "not_found", (method, path)
