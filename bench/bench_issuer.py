"""The issuer on loopback: enrollment and mint latency, read-event upload rate, detection latency.

A real issuer (uvicorn thread, real HTTP, the agent's IssuerClient) minting iam-user canaries in a
real moto server; the detection runner long-polls an SQS queue in moto and delivers alerts to a
signed webhook receiver on loopback. Detection latency = `SendMessage` of a CloudTrail-shaped
EventBridge event until the webhook has the alert (the AWS side, CloudTrail -> EventBridge -> SQS,
takes minutes in real life and is not in this number). Runs on SQLite, then on PostgreSQL if its
server binaries are installed (that server runs with fsync=off, so its write numbers flatter it).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from issuer.aws.gateway import AwsGateway, MintingConfig
from server_api_client import IssuerClient
from server_api_client.models import IssuedCredential
from tests.support.cloudtrail import cloudtrail_event
from tests.support.detection import WebhookReceiver
from tests.support.issuer import LiveIssuer, start_issuer
from tests.support.moto import run_moto_server
from tests.support.paths import FAKE_AWS_ENV
from tests.support.pg import create_database, postgres_bindir, run_postgres

TITLE = "issuer on loopback (moto as AWS): latency and throughput"
DEVICES = 10
MINTS = 50
EVENTS = 20_000
BATCH = 500
DETECTIONS = 10
HOOK_SECRET = "bench-hook-secret"


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with _fake_aws_env(), run_moto_server() as moto_url:
        rows += _bench_database("sqlite", moto_url, db_url=None)
        if postgres_bindir() is None:
            rows.append({"db": "postgresql", "measure": "not run: PostgreSQL server binaries missing"})
        else:
            with run_postgres() as admin_url:
                rows += _bench_database("postgresql", moto_url, db_url=create_database(admin_url, "bench"))
    return rows


@contextlib.contextmanager
def _fake_aws_env() -> Iterator[None]:
    """The issuer's boto3 must never see a developer's real AWS configuration."""
    saved = {key: os.environ.get(key) for key in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _bench_database(db: str, moto_url: str, db_url: str | None) -> list[dict[str, Any]]:
    requests.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    gateway = AwsGateway(MintingConfig(endpoint_url=moto_url))
    sqs = gateway.client("sqs")
    queue_url = sqs.create_queue(QueueName="tripkey-bench")["QueueUrl"]
    receiver = WebhookReceiver(secret=HOOK_SECRET)
    data_dir = Path(tempfile.mkdtemp(prefix="tripkey-bench-issuer-"))
    settings: dict[str, Any] = {
        "data_dir": str(data_dir),
        "aws_endpoint": moto_url,
        "poll_interval": 0,  # only the SQS path: the GetAccessKeyLastUsed poller would add AWS load
        "sqs_queue_url": queue_url,
        "sinks": [{"type": "webhook", "name": "soc", "url": receiver.url, "secret": HOOK_SECRET}],
    }
    if db_url:
        settings["db_url"] = db_url
    issuer = start_issuer(**settings)
    # The runner long-polls 10 s, which is also how long stop() can wait for it. A moto long poll
    # returns as soon as a message arrives, so a shorter one changes no latency, only the teardown.
    issuer.app.state.detection_runner.sqs_wait_seconds = 2
    try:
        rows, devices, credentials = _enroll_and_mint(issuer)
        rows.append(_upload(issuer, *devices[0]))
        rows.append(_upload_parallel(issuer, devices[1:5]))
        rows += _store_direct(issuer)
        rows.append(_detect(sqs, queue_url, receiver, credentials[:DETECTIONS]))
    finally:
        issuer.stop()
        receiver.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    return [{"db": db, **row} for row in rows]


def _latency_row(measure: str, samples_ms: list[float], note: str = "") -> dict[str, Any]:
    ordered = sorted(samples_ms)
    return {
        "measure": measure,
        "count": len(samples_ms),
        "median_ms": statistics.median(samples_ms),
        "p95_ms": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "max_ms": ordered[-1],
        "per_second": round(len(samples_ms) / (sum(samples_ms) / 1000), 1),
        "note": note,
    }


def _enroll_and_mint(
    issuer: LiveIssuer,
) -> tuple[list[dict[str, Any]], list[tuple[str, str]], list[IssuedCredential]]:
    enroll_token = issuer.create_token("enroll")
    devices: list[tuple[str, str]] = []
    enroll_ms: list[float] = []
    with IssuerClient(issuer.url, enroll_token) as client:
        # Warm-up, not counted: the first request of a fresh process pays for lazy imports and the
        # first connections (database pool, moto); the rows describe a running issuer.
        warm = client.enroll(secrets.token_urlsafe(32), "bench-warm-up", "linux")
        with IssuerClient(issuer.url, warm.device_token) as warm_client:
            warm_client.mint_credential(warm.device_id, "warm", "/home/warm/.aws/credentials", "prod-backup")
        for i in range(DEVICES):
            started = time.perf_counter()
            enrolled = client.enroll(secrets.token_urlsafe(32), f"bench-{i:02d}", "linux", users=["alice"])
            enroll_ms.append((time.perf_counter() - started) * 1000)
            devices.append((enrolled.device_id, enrolled.device_token))
    mint_ms: list[float] = []
    credentials: list[IssuedCredential] = []
    clients = [IssuerClient(issuer.url, token) for _, token in devices]
    try:
        for i in range(MINTS):
            device_id = devices[i % DEVICES][0]
            user = f"user{i:03d}"
            started = time.perf_counter()
            cred = clients[i % DEVICES].mint_credential(
                device_id, user, f"/home/{user}/.aws/credentials", "prod-backup"
            )
            mint_ms.append((time.perf_counter() - started) * 1000)
            credentials.append(cred)
    finally:
        for client in clients:
            client.close()
    if len({c.access_key_id for c in credentials}) != MINTS:
        raise RuntimeError("mints returned duplicate access keys")
    rows = [
        _latency_row("enroll (POST /v1/enroll)", enroll_ms, f"{DEVICES} new devices"),
        _latency_row("mint iam-user credential", mint_ms, "POST .../credentials; IAM user + key in moto"),
    ]
    return rows, devices, credentials


def _read_event(i: int, path: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "kind": "read",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - EVENTS + i)),
        "path": path,
        "read": {
            "pid": 10_000 + i,
            "ppid": 4200,
            "exe": "/usr/bin/python3.11",
            "cmdline": ["python3", "/usr/local/bin/aws", "s3", "ls", "--profile", "prod-backup"],
            "uid": 1000,
            "user": "user000",
            "cwd": "/home/user000",
            "access": "open",
            "sensor": "fanotify",
            "classification": "aws_tool",
            "ancestors": [{"pid": 4200, "exe": "/usr/bin/bash", "cmdline": ["bash"], "uid": 1000}],
        },
    }


def _upload(issuer: LiveIssuer, device_id: str, device_token: str) -> dict[str, Any]:
    events = [_read_event(i, "/home/user000/.aws/credentials") for i in range(EVENTS)]
    batch_ms: list[float] = []
    accepted = 0
    with IssuerClient(issuer.url, device_token, timeout=60) as client:
        for start in range(0, EVENTS, BATCH):
            started = time.perf_counter()
            accepted += client.upload_events(device_id, events[start : start + BATCH]).accepted
            batch_ms.append((time.perf_counter() - started) * 1000)
    if accepted != EVENTS:
        raise RuntimeError(f"the issuer accepted {accepted} of {EVENTS} events")
    row = _latency_row(f"upload read events, batches of {BATCH}", batch_ms)
    events_per_s = EVENTS / (sum(batch_ms) / 1000)
    row["per_second"] = round(events_per_s)
    row["note"] = f"{EVENTS} events, one client; per_second = events/s; ms per batch"
    return row


def _upload_parallel(issuer: LiveIssuer, devices: list[tuple[str, str]]) -> dict[str, Any]:
    """Four agents uploading at once (one issuer process): the HTTP path's throughput."""
    import concurrent.futures

    per_device = EVENTS // len(devices)

    def upload(device: tuple[str, str]) -> int:
        device_id, token = device
        events = [_read_event(i, "/home/user001/.aws/credentials") for i in range(per_device)]
        accepted = 0
        with IssuerClient(issuer.url, token, timeout=60) as client:
            for start in range(0, per_device, 1000):
                accepted += client.upload_events(device_id, events[start : start + 1000]).accepted
        return accepted

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(devices)) as pool:
        accepted = sum(pool.map(upload, devices))
    seconds = time.perf_counter() - started
    if accepted != per_device * len(devices):
        raise RuntimeError(f"the issuer accepted {accepted} of {per_device * len(devices)} events")
    return {
        "measure": f"upload read events, {len(devices)} agents at once, batches of 1000",
        "count": accepted,
        "per_second": round(accepted / seconds),
        "note": "HTTP + validation + storage in one issuer process; per_second = events/s",
    }


def _store_direct(issuer: LiveIssuer) -> list[dict[str, Any]]:
    """The storage layer alone (no HTTP, no validation), side by side with the row-by-row insert
    with a duplicate pre-check that store_events used before batching."""
    import datetime as dt

    from issuer import agent_events
    from issuer.models import AgentEvent

    def events(tag: str) -> list[dict[str, Any]]:
        made = [_read_event(i, "/p") for i in range(EVENTS)]
        return [
            {
                "event_id": f"{tag}-{i}",
                "kind": "read",
                "time": dt.datetime.fromisoformat(e["time"].replace("Z", "+00:00")),
                "path": e["path"],
                "detail": e["read"],
            }
            for i, e in enumerate(made)
        ]

    def row_by_row(session: Any, device_id: str, batch: list[dict[str, Any]]) -> None:
        from sqlalchemy import select

        known = set(
            session.scalars(
                select(AgentEvent.event_id).where(
                    AgentEvent.device_id == device_id, AgentEvent.event_id.in_([e["event_id"] for e in batch])
                )
            )
        )
        for event in batch:
            if event["event_id"] not in known:
                session.add(AgentEvent(device_id=device_id, received_at=dt.datetime.now(dt.UTC),
                                       **{k: v for k, v in event.items()}))  # fmt: skip
        session.commit()

    device_id, _ = issuer.enroll("bench-store")
    methods = (
        ("INSERT ... ON CONFLICT DO NOTHING per batch (store_events)", agent_events.store_events),
        ("row by row with a duplicate pre-check (before)", row_by_row),
    )
    best: dict[str, float] = {}
    # Alternating rounds, best of each: the machine is shared, so one slow moment must not decide.
    for round_ in range(2):
        for name, store in methods if round_ == 0 else reversed(methods):
            batch_events = events(f"{name[:3]}{round_}")
            with issuer.session() as session:
                started = time.perf_counter()
                for start in range(0, EVENTS, 1000):
                    store(session, device_id, batch_events[start : start + 1000])
                seconds = time.perf_counter() - started
            best[name] = max(best.get(name, 0.0), EVENTS / seconds)
    return [
        {
            "measure": f"store read events, batches of 1000: {name}",
            "count": EVENTS,
            "per_second": round(best[name]),
            "note": "database layer only; best of 2 alternating rounds",
        }
        for name, _ in methods
    ]


def _detect(
    sqs: Any, queue_url: str, receiver: WebhookReceiver, credentials: list[IssuedCredential]
) -> dict[str, Any]:
    """One alert per credential (a second use of one key would join its open alert, not page)."""
    latencies: list[float] = []
    for cred in credentials:
        event = cloudtrail_event(access_key_id=cred.access_key_id, user_name=cred.principal_name)
        receiver.event.clear()
        delivered_before = len(receiver.received_at)
        sent = time.monotonic()
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))
        if not receiver.event.wait(30) or len(receiver.received_at) <= delivered_before:
            raise RuntimeError(f"no alert for {cred.access_key_id} reached the webhook within 30 s")
        latencies.append((receiver.received_at[delivered_before] - sent) * 1000)
        alert = json.loads(receiver.requests[-1]["body"])["alert"]
        if alert["enrichment"]["credential"]["access_key_id"] != cred.access_key_id:
            raise RuntimeError(f"the webhook got an alert for another key than {cred.access_key_id}")
    if receiver.bad_signatures:
        raise RuntimeError(f"{receiver.bad_signatures} webhook deliveries had a bad signature")
    return _latency_row(
        "detect: SQS message -> signed webhook", latencies, "runner long-polls moto SQS; 1 alert each"
    )
