"""Every client error says what was wrong, in the documented JSON shape (live issuer, real HTTP).

Hostile inputs: a body that is not UTF-8, nested deeper than the JSON parser recurses, an integer of
5,000 digits, headers over the limit (in one packet and dripped in pieces, which uvicorn's parser
refuses before the app sees them), and a request line that is not HTTP at all.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from issuer.api.errors import MAX_HEADER_BYTES


def _json_error(status: int, body: bytes | str) -> dict[str, Any]:
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"}
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"hostname": "\xff\xfe"}', ["not valid UTF-8", "0xff", "offset 14"]),
        (b"[" * 3000 + b"]" * 3000, ["nested too deeply"]),
        (b'{"users": [' + b"9" * 5000 + b"]}", ["integer too long", "4,300 digits"]),
    ],
    ids=["invalid-utf8", "deep-nesting", "huge-integer"],
)
def test_unparseable_bodies_say_what_is_wrong(live_issuer: Any, body: bytes, words: list[str]) -> None:
    token = live_issuer.create_token("enroll")
    response = live_issuer.request(
        "POST", "/v1/enroll", token, data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = _json_error(400, response.content)
    assert error["code"] == "bad_request"
    for word in words:
        assert word in error["message"], error["message"]
    assert "There was an error parsing the body" not in error["message"]


def _raw(issuer: Any, chunks: list[bytes]) -> bytes:
    host, port = issuer.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                break  # the server answered and closed while we were still sending
            time.sleep(0.02)  # separate packets: the parser sees an incomplete head growing
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            answer += data
            if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                break
    return answer


def _status_and_error(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, _json_error(status, body)


def test_headers_over_the_limit_in_one_packet(live_issuer: Any) -> None:
    big = b"X-Padding: " + b"a" * (MAX_HEADER_BYTES + 100) + b"\r\n"
    answer = _raw(live_issuer, [b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n"])
    status, error = _status_and_error(answer)
    assert (status, error["code"]) == (431, "headers_too_large")
    assert str(MAX_HEADER_BYTES) in error["message"]


def test_headers_over_the_limit_dripped_in_pieces(live_issuer: Any) -> None:
    """uvicorn's parser refuses an incomplete head past its limit before the app is called: its
    plain-text 400 is replaced by the issuer's protocol class (issuer.api.server)."""
    pieces = [b"GET /healthz HTTP/1.1\r\nHost: x\r\n"] + [b"X-P: " + b"a" * 4000 + b"\r\n"] * 12
    status, error = _status_and_error(_raw(live_issuer, [*pieces, b"\r\n"]))
    assert (status, error["code"]) == (431, "headers_too_large")


def test_a_request_that_is_not_http(live_issuer: Any) -> None:
    status, error = _status_and_error(_raw(live_issuer, [b"\x16\x03\x01 hello TLS?\r\n\r\n"]))
    assert (status, error["code"]) == (400, "bad_request")
    assert "not valid HTTP/1.1" in error["message"]
    # the server is still serving
    assert live_issuer.request("GET", "/healthz").json()["ok"] is True
