"""SQS push path on moto's real SQS (and EventBridge → SQS), to a signed webhook."""

from __future__ import annotations

import datetime as dt
import json
import time

from sqlalchemy import select

from issuer.detection.counters import read_counter
from issuer.detection.events import as_utc
from issuer.detection.runner import DetectionRunner
from issuer.models import Alert, Delivery
from tests.support.cloudtrail import cloudtrail_event


def make_queue(gateway, name: str = "tripkey-events") -> tuple[str, str]:  # type: ignore[no-untyped-def]
    sqs = gateway.client("sqs")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def queue_depth(gateway, url: str) -> int:  # type: ignore[no-untyped-def]
    attrs = gateway.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_sqs_event_to_signed_webhook(  # type: ignore[no-untyped-def]
    det_gateway, det_settings, det_sessionmaker, det_credential, det_add_read, det_webhook
) -> None:
    url, _ = make_queue(det_gateway)
    receiver = det_webhook(secret="hook-secret")
    settings = det_settings(
        sqs_queue_url=url,
        sinks=[{"type": "webhook", "name": "soc", "url": receiver.url, "secret": "hook-secret"}],
    )
    cred = det_credential()
    det_add_read(
        cred,
        when=_after(cred, 5),
        exe="/usr/bin/python3",
        cmdline=["python3", "/tmp/steal.py"],
        classification="unknown",
    )
    runner = DetectionRunner(settings, det_sessionmaker, det_gateway)
    runner.sqs_wait_seconds = 1
    runner.start()
    try:
        sent = time.monotonic()
        det_gateway.client("sqs").send_message(
            QueueUrl=url, MessageBody=json.dumps(cloudtrail_event(access_key_id=cred.access_key_id))
        )
        assert receiver.event.wait(30), "no alert reached the webhook within 30 s"
        latency = receiver.received_at[0] - sent
    finally:
        runner.stop()
    print(f"\nSQS send_message -> signed webhook delivery: {latency * 1000:.0f} ms")
    [request] = receiver.requests
    assert request["signature_ok"] is True
    alert = json.loads(request["body"])["alert"]
    assert alert["kind"] == "canary_use" and alert["selftest"] is False
    assert alert["enrichment"]["credential"]["access_key_id"] == cred.access_key_id
    assert alert["enrichment"]["reads"][0]["cmdline"] == ["python3", "/tmp/steal.py"]
    assert alert["verdict"]["hint"] == "suspicious"
    assert queue_depth(det_gateway, url) == 0, "processed messages are deleted"
    with det_sessionmaker() as session:
        [delivery] = session.scalars(select(Delivery)).all()
        assert (delivery.sink, delivery.status, delivery.attempts) == ("soc", "delivered", 1)


def _after(cred, minutes: int):  # type: ignore[no-untyped-def]
    return as_utc(cred.created_at) + dt.timedelta(minutes=minutes)


def test_eventbridge_rule_delivers_to_sqs_and_issuer_consumes(  # type: ignore[no-untyped-def]
    det_gateway, det_settings, det_sessionmaker, det_credential
) -> None:
    url, arn = make_queue(det_gateway)
    events = det_gateway.client("events")
    events.put_rule(
        Name="tripkey-canary-use",
        EventPattern=json.dumps({"detail-type": ["AWS API Call via CloudTrail"]}),
        State="ENABLED",
    )
    events.put_targets(Rule="tripkey-canary-use", Targets=[{"Id": "issuer-queue", "Arn": arn}])
    cred = det_credential()
    detail = cloudtrail_event(access_key_id=cred.access_key_id, event_id="eb-1")["detail"]
    result = events.put_events(
        Entries=[
            {"Source": "aws.s3", "DetailType": "AWS API Call via CloudTrail", "Detail": json.dumps(detail)},
            # does not match the rule's pattern: never reaches the queue
            {"Source": "aws.s3", "DetailType": "Object Created", "Detail": json.dumps({"bucket": "x"})},
        ]
    )
    assert result["FailedEntryCount"] == 0
    runner = DetectionRunner(det_settings(sqs_queue_url=url), det_sessionmaker, det_gateway)
    outcome = runner.run_once(sqs_wait_seconds=2)
    assert outcome["sqs"] == 1
    with det_sessionmaker() as session:
        [alert] = session.scalars(select(Alert)).all()
        assert alert.credential_id == cred.id
        assert alert.summary["detection_sources"] == ["sqs"]


def test_malformed_messages_are_counted_and_deleted(  # type: ignore[no-untyped-def]
    det_gateway, det_settings, det_sessionmaker, det_credential
) -> None:
    url, _ = make_queue(det_gateway)
    sqs = det_gateway.client("sqs")
    cred = det_credential()
    sqs.send_message(QueueUrl=url, MessageBody="this is not json")
    sqs.send_message(QueueUrl=url, MessageBody="[" * 50_000 + "]" * 50_000)  # too deep to parse
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"detail-type": "AWS API Call via CloudTrail"}))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(cloudtrail_event(access_key_id=cred.access_key_id)))
    # EventBridge -> SNS -> SQS delivers the event inside an SNS envelope
    envelope = {
        "Type": "Notification",
        "MessageId": "m-1",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
        "Message": json.dumps(cloudtrail_event(access_key_id=cred.access_key_id)),
    }
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(envelope))
    runner = DetectionRunner(det_settings(sqs_queue_url=url), det_sessionmaker, det_gateway)
    received = 0
    for _ in range(5):
        received += runner.run_once(sqs_wait_seconds=1)["sqs"] or 0
        if received >= 5:
            break
    assert received == 5
    assert queue_depth(det_gateway, url) == 0, "malformed messages must not poison the queue"
    with det_sessionmaker() as session:
        assert read_counter(session, "sqs.malformed") == 3
        [alert] = session.scalars(select(Alert)).all()
        assert alert.event_count == 2
