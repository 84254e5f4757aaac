"""Fixtures for the detection and alert tests (all prefixed `det_`).

The database is a real SQLite file built from the models; AWS is the moto server (`moto_url`);
sinks deliver to real receivers on loopback.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.server
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from issuer.db import create_db_engine, make_sessionmaker
from issuer.models import AgentEvent, Base, Credential, Device, Placement
from tests.support.cloudtrail import now

CANARY_SECRET = "tKsEcReT/" + "x" * 31  # what a planted secret looks like; must never surface


@pytest.fixture
def det_sessionmaker(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'issuer.db'}")
    Base.metadata.create_all(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


CredentialFactory = Callable[..., Credential]


@pytest.fixture
def det_credential(det_sessionmaker: sessionmaker[Session]) -> CredentialFactory:
    """Create device + placement + credential rows; returns the credential (detached)."""

    def make(
        *,
        access_key_id: str | None = None,
        principal_name: str | None = None,
        backend: str = "iam-user",
        account: str = "default",
        hostname: str = "lap-17",
        local_user: str = "alice",
        path: str = "/home/alice/.aws/credentials",
        created_at: dt.datetime | None = None,
        heartbeat_at: dt.datetime | None = None,
        sensor_healthy: bool = True,
        retired: bool = False,
        revoked: bool = False,
    ) -> Credential:
        created = created_at or now() - dt.timedelta(hours=2)
        suffix = secrets.token_hex(4)
        with det_sessionmaker() as session:
            device = Device(
                id=f"dev_{suffix}",
                device_key_hash=hashlib.sha256(suffix.encode()).hexdigest(),
                hostname=hostname,
                os="linux",
                os_version="Debian 12",
                serial="SER" + suffix,
                users=[local_user],
                agent_version="0.1.0",
                enrolled_at=created - dt.timedelta(minutes=5),
                last_heartbeat_at=heartbeat_at if heartbeat_at is not None else now(),
                health={
                    "sensor": {
                        "name": "fanotify",
                        "mode": "permission",
                        "healthy": sensor_healthy,
                        "error": None,
                        "lost_events": 0,
                    }
                },
            )
            placement = Placement(
                id=f"plc_{suffix}",
                device=device,
                local_user=local_user,
                path=path,
                profile="prod-backup",
                created_at=created,
            )
            credential = Credential(
                id=f"cred_{suffix}",
                placement=placement,
                backend=backend,
                account=account,
                account_id="123456789012",
                principal_name=principal_name or f"svc-backup-{suffix}",
                principal_arn=f"arn:aws:iam::123456789012:user/{principal_name or 'svc-backup-' + suffix}",
                access_key_id=access_key_id or f"AKIA{suffix.upper()}TESTKEY0",
                created_at=created,
                retired_at=created + dt.timedelta(minutes=30) if retired else None,
                revoked_at=created + dt.timedelta(minutes=40) if revoked else None,
            )
            session.add_all([device, placement, credential])
            session.commit()
            session.refresh(credential)
            session.expunge_all()
            return credential

    return make


@pytest.fixture
def det_add_read(det_sessionmaker: sessionmaker[Session]) -> Callable[..., str]:
    """Store an agent read (or self-report) event the way the registry does."""

    def add(
        credential: Credential,
        *,
        when: dt.datetime,
        exe: str = "/usr/bin/cat",
        cmdline: list[str] | None = None,
        user: str = "alice",
        classification: str = "shell_utility",
        kind: str = "read",
        note: str | None = None,
    ) -> str:
        event_id = str(uuid.uuid4())
        with det_sessionmaker() as session:
            placement = session.get(Placement, credential.placement_id)
            assert placement is not None
            if kind == "read":
                detail = {
                    "pid": 4242,
                    "ppid": 4200,
                    "exe": exe,
                    "cmdline": cmdline or [exe.rsplit("/", 1)[-1], placement.path],
                    "uid": 1000,
                    "user": user,
                    "classification": classification,
                    "sensor": "fanotify",
                    "ancestors": [{"pid": 4200, "exe": "/usr/bin/bash", "cmdline": ["bash"], "uid": 1000}],
                }
                row = AgentEvent(
                    event_id=event_id,
                    device_id=placement.device_id,
                    kind="read",
                    time=when,
                    path=placement.path,
                    pid=4242,
                    exe=exe,
                    user=user,
                    classification=classification,
                    detail=detail,
                )
            else:
                row = AgentEvent(
                    event_id=event_id,
                    device_id=placement.device_id,
                    kind="self_report",
                    time=when,
                    path=placement.path,
                    user=user,
                    detail={"user": user, "note": note or "I opened it by mistake"},
                )
            session.add(row)
            session.commit()
        return event_id

    return add


class WebhookReceiver:
    """A tiny HTTP server on loopback that records requests and can fail the first N of them."""

    def __init__(self, *, secret: str | None = None, fail_first: int = 0, status: int = 200) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.status = status
        self.requests: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.event = threading.Event()
        self.received_at: list[float] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                record = {"path": self.path, "headers": dict(self.headers), "body": body}
                if receiver.secret is not None:
                    stamp = self.headers.get("X-Tripkey-Timestamp", "")
                    expected = (
                        "sha256="
                        + hmac.new(
                            receiver.secret.encode(), stamp.encode() + b"." + body, hashlib.sha256
                        ).hexdigest()
                    )
                    record["signature_ok"] = hmac.compare_digest(
                        expected, self.headers.get("X-Tripkey-Signature", "")
                    )
                    if not record["signature_ok"]:
                        receiver.bad_signatures += 1
                receiver.requests.append(record)
                if len(receiver.requests) <= receiver.fail_first:
                    code = 503
                else:
                    code = receiver.status
                    receiver.received_at.append(time.monotonic())
                    receiver.event.set()
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def json_bodies(self) -> list[Any]:
        return [json.loads(r["body"]) for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def det_webhook() -> Iterator[Callable[..., WebhookReceiver]]:
    made: list[WebhookReceiver] = []

    def make(**kwargs: Any) -> WebhookReceiver:
        receiver = WebhookReceiver(**kwargs)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def det_gateway(moto_url: str) -> Any:
    """The issuer's AWS gateway pointed at the (reset) moto server."""
    from issuer.aws.gateway import AwsGateway, MintingConfig

    return AwsGateway(MintingConfig(endpoint_url=moto_url))


@pytest.fixture
def det_settings(tmp_path: Path) -> Callable[..., Any]:
    from issuer.settings import Settings

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"data_dir": tmp_path, "poll_interval": 0, "stale_after_seconds": 3600}
        values.update(overrides)
        return Settings(**values)

    return make


def sessionmaker_for(url: str) -> tuple[Any, sessionmaker[Session]]:
    """(engine, sessionmaker) on `url` with the schema built from the models."""
    engine = create_db_engine(url)
    Base.metadata.create_all(engine)
    return engine, make_sessionmaker(engine)


ALERT = {
    "alert_id": "alr_test",
    "kind": "canary_use",
    "severity": "high",
    "status": "open",
    "title": "Canary credential AKIAX used: s3:ListBuckets",
    "selftest": False,
    "first_seen": "2026-11-22T10:00:00Z",
    "event_count": 1,
    "summary": {"source_ips": ["203.0.113.9"], "event_names": ["s3.amazonaws.com:ListBuckets"]},
    "enrichment": {
        "device": {"hostname": "lap-17", "device_id": "dev_1"},
        "placement": {"local_user": "alice", "path": "/home/alice/.aws/credentials", "profile": "p"},
        "reads": [
            {
                "event_id": "r1",
                "time": "2026-11-22T09:59:00Z",
                "exe": "/usr/bin/cat",
                "cmdline": ["cat", "f"],
                "user": "alice",
                "classification": "shell_utility",
            }
        ],
    },
    "verdict": {
        "hint": "suspicious",
        "reasons": [
            {
                "rule": "untrusted_reader",
                "hint": "suspicious",
                "text": "suspicious: cat read it",
                "evidence": {},
                "read_event_id": "r1",
                "aws_event_ids": [],
            }
        ],
    },
    "siem": {"alert_id": "alr_test", "host": "lap-17", "attack_technique_ids": ["T1552.001", "T1078.004"]},
}
