"""Fixtures for the issuer client tests: a scriptable real HTTP(S) server on loopback.

The scripted server (`cl_server`) is a real `http.server` in a thread: the client talks real TCP,
real HTTP and (with `cl_tls_server`) real TLS to it. It exists to produce the failures a live issuer
cannot be made to produce on demand (503 then 200, a stalled answer, an HTML proxy page). Tests of
the documented routes run against the live issuer (`live_issuer` from tests/conftest.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import json
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.cloudtrail import cloudtrail_event
from tests.support.tls import make_test_tls


@dataclass
class Scripted:
    """One answer of the scripted server."""

    status: int = 200
    body: Any = None  # dict/list → JSON; str/bytes → sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to stall before answering (read-timeout tests)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ScriptedServer:
    """Answers each request with the next scripted answer (or a rule); records every request."""

    def __init__(self) -> None:
        self.answers: queue.Queue[Scripted] = queue.Queue()
        self.rule: Callable[[Received], Scripted] | None = None
        self.received: list[Received] = []
        self.url = ""
        self._httpd: http.server.ThreadingHTTPServer | None = None

    def script(self, *answers: Scripted) -> None:
        for answer in answers:
            self.answers.put(answer)

    def _answer(self, request: Received) -> Scripted:
        self.received.append(request)
        if self.rule is not None:
            return self.rule(request)
        try:
            return self.answers.get_nowait()
        except queue.Empty:
            return Scripted(
                599, {"error": {"code": "unscripted", "message": "test sent an unexpected request"}}
            )

    def start(self, tls: ssl.SSLContext | None = None) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Received(self.command, self.path, dict(self.headers.items()), body)
                answer = owner._answer(request)
                if answer.delay:
                    time.sleep(answer.delay)
                if isinstance(answer.body, (dict, list)):
                    payload = json.dumps(answer.body).encode()
                    content_type = "application/json"
                elif isinstance(answer.body, str):
                    payload, content_type = answer.body.encode(), "text/html"
                else:
                    payload, content_type = answer.body or b"", "application/octet-stream"
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in answer.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test); nothing to answer

            do_GET = do_POST = do_DELETE = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        scheme = "http"
        if tls is not None:
            httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
            scheme = "https"
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


@pytest.fixture
def cl_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cl_tls_server(tmp_path: Path) -> Iterator[tuple[ScriptedServer, Path]]:
    """A scripted HTTPS server whose certificate is signed by a private CA; yields (server, ca_bundle)."""
    pytest.importorskip("cryptography", reason="cryptography (installed with moto) makes the test CA")
    tls = make_test_tls(tmp_path)
    server = ScriptedServer()
    server.start(tls=tls.server_context)
    yield server, tls.ca_bundle
    server.stop()


# ------------------------------------------------------------------------------------------ live issuer


@dataclass
class World:
    """A live issuer seeded through its API: one enrolled device with a planted canary and reads."""

    url: str
    issuer: Any  # tests.support.issuer.LiveIssuer
    responder_token: str
    device_id: str
    device_token: str
    hostname: str
    credential_id: str
    access_key_id: str
    principal_name: str
    path: str
    profile: str
    read_event_ids: list[str]
    idle_device_id: str  # enrolled, never heartbeats: stale

    def alert(self, *, event_name: str = "ListBuckets", source_ip: str = "203.0.113.9") -> str:
        """Report a use of the canary through the issuer's EventBridge ingest route; the alert's id."""
        from server_api_client import IssuerClient

        result = IssuerClient(self.url).ingest_eventbridge(
            INGEST_DESTINATION,
            INGEST_SECRET,
            cloudtrail_event(
                access_key_id=self.access_key_id,
                user_name=self.principal_name,
                event_name=event_name,
                source_ip=source_ip,
            ),
        )
        assert (result.accepted, result.skipped) == (1, 0), result
        responder = IssuerClient(self.url, self.responder_token)
        for summary in responder.list_alerts():  # most recently active first
            if summary.raw.get("access_key_id") == self.access_key_id and summary.status != "resolved":
                return summary.alert_id
        raise AssertionError(f"no alert for {self.access_key_id} after ingest")


INGEST_DESTINATION = "cl-main"
INGEST_SECRET = "cl-ingest-secret-value"


def read_event(path: str, *, pid: int, exe: str, cmdline: list[str], classification: str, user: str) -> dict:
    import uuid

    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    return {
        "event_id": str(uuid.uuid4()),
        "kind": "read",
        "time": now,
        "path": path,
        "read": {
            "pid": pid,
            "ppid": 4200,
            "exe": exe,
            "cmdline": cmdline,
            "uid": 1000,
            "user": user,
            "start_time": now,
            "cwd": "/home/alice",
            "access": "open",
            "sensor": "fanotify",
            "classification": classification,
            "ancestors": [{"pid": 4200, "exe": "/usr/bin/bash", "cmdline": ["bash"], "uid": 1000}],
        },
    }


def backdate_enrollment(issuer: Any, device_id: str, age: dt.timedelta) -> None:
    """Make a never-heartbeating device look enrolled `age` ago (stale) instead of waiting an hour."""
    from issuer.models import Device

    with issuer.session() as session:
        row = session.get(Device, device_id)
        row.enrolled_at = dt.datetime.now(dt.UTC) - age
        session.commit()


def build_world(issuer: Any) -> World:
    import secrets

    from server_api_client import IssuerClient

    path, profile, hostname = "/home/alice/.aws/credentials", "prod-backup", "lap-17"
    enroller = IssuerClient(issuer.url, issuer.create_token("enroll"))
    enrolled = enroller.enroll(
        secrets.token_urlsafe(32),
        hostname,
        "linux",
        os_version="Debian 12",
        serial="ABC123",
        users=["alice"],
        agent_version="0.1.0",
    )
    idle = enroller.enroll(secrets.token_urlsafe(32), "idle-box", "linux")
    backdate_enrollment(issuer, idle.device_id, dt.timedelta(hours=2))
    device = IssuerClient(issuer.url, enrolled.device_token)
    cred = device.mint_credential(enrolled.device_id, "alice", path, profile)
    reads = [
        read_event(
            path,
            pid=4242,
            exe="/usr/bin/cat",
            cmdline=["cat", path],
            classification="shell_utility",
            user="alice",
        ),
        read_event(
            path,
            pid=5151,
            exe="/usr/bin/python3.11",
            cmdline=["python3", "/tmp/.x/steal.py"],
            classification="unknown",
            user="alice",
        ),
    ]
    device.upload_events(enrolled.device_id, reads)
    device.heartbeat(
        enrolled.device_id,
        {
            "agent_version": "0.1.0",
            "sensor": {
                "name": "fanotify",
                "mode": "permission",
                "healthy": True,
                "error": None,
                "lost_events": 0,
            },
            "targets": [
                {
                    "path": path,
                    "local_user": "alice",
                    "profile": profile,
                    "access_key_id": cred.access_key_id,
                    "planted": True,
                    "error": None,
                }
            ],
            "last_event_at": None,
            "spool_pending": 0,
            "spool_dropped": 0,
        },
    )
    return World(
        url=issuer.url,
        issuer=issuer,
        responder_token=issuer.create_token("responder"),
        device_id=enrolled.device_id,
        device_token=enrolled.device_token,
        hostname=hostname,
        credential_id=cred.credential_id,
        access_key_id=cred.access_key_id,
        principal_name=cred.principal_name,
        path=path,
        profile=profile,
        read_event_ids=[r["event_id"] for r in reads],
        idle_device_id=idle.device_id,
    )


@pytest.fixture(scope="module")
def cl_world(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One live issuer (uvicorn, SQLite, minting in the session's moto server) seeded for a module.

    Module-scoped because starting an issuer per CLI invocation would dominate the run time; tests
    that change state (ack, resolve, revoke) make their own alert or credential.
    """
    from tests.support.issuer import running_issuer

    data_dir = tmp_path_factory.mktemp("cl-issuer")
    ingest = [
        {"name": INGEST_DESTINATION, "secret_sha256": hashlib.sha256(INGEST_SECRET.encode()).hexdigest()}
    ]
    with running_issuer(
        data_dir=str(data_dir), aws_endpoint=moto_server, poll_interval=0, ingest_destinations=ingest
    ) as issuer:
        yield build_world(issuer)
