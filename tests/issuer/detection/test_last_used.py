"""GetAccessKeyLastUsed safety net on moto, which records real use of a key; and the secret never
surfacing anywhere (alert JSON, sink payloads, JSONL file, logs, database)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

from sqlalchemy import select

from issuer.alerts.serialize import alert_to_dict
from issuer.detection.runner import DetectionRunner
from issuer.models import Alert, Detection
from tests.support.cloudtrail import cloudtrail_event
from tests.support.paths import VENV_BIN


def aws_cli(moto_url: str, key_id: str, secret: str, *args: str) -> None:
    """The real AWS CLI, as an attacker holding the canary would run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=key_id,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
    )
    result = subprocess.run(
        [str(VENV_BIN / "aws"), *args, "--endpoint-url", moto_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_last_used_detects_real_use(
    moto_url, det_gateway, det_settings, det_sessionmaker, det_credential
) -> None:  # type: ignore[no-untyped-def]
    minted = det_gateway.mint("default")
    cred = det_credential(access_key_id=minted.access_key_id, principal_name=minted.principal_name)
    runner = DetectionRunner(det_settings(poll_interval=60), det_sessionmaker, det_gateway)
    assert runner.run_once()["last_used"] == 0, "a key never used is not a detection"

    aws_cli(moto_url, minted.access_key_id, minted.secret_access_key, "s3", "ls")
    assert runner.run_once()["last_used"] == 1
    assert runner.run_once()["last_used"] == 0, "the same LastUsedDate is not detected twice"
    with det_sessionmaker() as session:
        [alert] = session.scalars(select(Alert)).all()
        assert alert.credential_id == cred.id and alert.kind == "canary_use"
        assert alert.summary["event_names"] == ["s3"]
        assert alert.summary["detection_sources"] == ["last_used"]
        assert f"{minted.access_key_id} used: s3 (lap-17" in alert.title

    aws_cli(moto_url, minted.access_key_id, minted.secret_access_key, "sts", "get-caller-identity")
    assert runner.run_once()["last_used"] == 1
    with det_sessionmaker() as session:
        alert = session.scalars(select(Alert)).one()
        assert alert.event_count == 2 and alert.summary["event_names"] == ["s3", "sts"]


def test_revoked_keys_are_skipped(
    moto_url, det_gateway, det_settings, det_sessionmaker, det_credential
) -> None:  # type: ignore[no-untyped-def]
    minted = det_gateway.mint("default")
    det_credential(access_key_id=minted.access_key_id, principal_name=minted.principal_name, revoked=True)
    aws_cli(moto_url, minted.access_key_id, minted.secret_access_key, "s3", "ls")
    runner = DetectionRunner(det_settings(poll_interval=60), det_sessionmaker, det_gateway)
    assert runner.run_once()["last_used"] == 0


def test_secret_never_surfaces(  # type: ignore[no-untyped-def]
    moto_url, det_gateway, det_settings, det_sessionmaker, det_credential, det_webhook, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    minted = det_gateway.mint("default")
    secret = minted.secret_access_key
    cred = det_credential(access_key_id=minted.access_key_id, principal_name=minted.principal_name)
    receiver = det_webhook(secret="k")
    jsonl = tmp_path / "alerts.jsonl"
    sqs = det_gateway.client("sqs")
    queue = sqs.create_queue(QueueName="q")["QueueUrl"]
    settings = det_settings(
        poll_interval=60,
        sqs_queue_url=queue,
        sinks=[
            {"type": "webhook", "name": "hook", "url": receiver.url, "secret": "k"},
            {"type": "jsonl", "name": "file", "path": str(jsonl)},
        ],
    )
    runner = DetectionRunner(settings, det_sessionmaker, det_gateway)
    aws_cli(moto_url, minted.access_key_id, secret, "s3", "ls")
    event = cloudtrail_event(access_key_id=cred.access_key_id)
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(event))
    runner.run_once(sqs_wait_seconds=1)
    runner.run_once()
    with det_sessionmaker() as session:
        alerts = [alert_to_dict(session, a) for a in session.scalars(select(Alert))]
        detections = [d.raw for d in session.scalars(select(Detection))]
    assert alerts and alerts[0]["event_count"] == 2
    assert receiver.requests and jsonl.exists()
    places = {
        "alerts JSON": json.dumps(alerts),
        "detections": json.dumps(detections),
        "webhook payloads": b"".join(r["body"] for r in receiver.requests).decode(),
        "JSONL file": jsonl.read_text(),
        "logs": caplog.text,
        "database file": b"".join(p.read_bytes() for p in tmp_path.glob("issuer.db*")).decode("latin-1"),
    }
    assert minted.access_key_id in places["alerts JSON"], "the scan looks at real content"
    for where, text in places.items():
        assert secret not in text, f"the canary secret leaked into {where}"
