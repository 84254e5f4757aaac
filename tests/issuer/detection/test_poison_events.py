"""One bad event never hides the others: poison events between good ones, on every detection path.

The caller of a canary writes most of a CloudTrail record (user agent, request parameters); the
hostile inputs here are named after what they break: a lone surrogate (`\\ud800`, which UTF-8 cannot
encode and once made the ingest endpoint answer 500 and lose its whole batch, and SQS redeliver the
message forever), NUL, NaN (PostgreSQL's json refuses it), wrong types, a year-9999 time.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import select

from issuer.detection.counters import read_counter
from issuer.detection.runner import DetectionRunner
from issuer.detection.sqs import MAX_RECEIVES, SqsSource
from issuer.models import Alert, DeadLetter
from tests.support.cloudtrail import cloudtrail_event, now
from tests.support.ingest import ingest_settings, plant_canary, post_ingest

FAR_FUTURE = "9999-12-31T23:59:59Z"


def poison_without_a_key() -> dict[str, Any]:
    """Wrong types everywhere, text no database takes, and no access key id to salvage it by."""
    event = cloudtrail_event(access_key_id=None, user_agent="\ud800evil\x00")
    event["detail"]["userIdentity"]["accessKeyId"] = 12345
    event["detail"]["eventTime"] = ["not", "a", "time"]
    event["detail"]["requestParameters"] = {"n": float("nan")}
    return event


def test_poison_between_two_good_events_on_the_ingest_endpoint(issuer_factory: Any) -> None:
    issuer = issuer_factory(**ingest_settings())
    first, second = plant_canary(issuer, "lap-1"), plant_canary(issuer, "lap-2")
    good_with_surrogate = cloudtrail_event(
        access_key_id=first["access_key_id"], user_agent="aws-cli/2 \ud800\x00\x1b[2J"
    )
    good_from_year_9999 = cloudtrail_event(access_key_id=second["access_key_id"])
    good_from_year_9999["detail"]["eventTime"] = FAR_FUTURE
    before = now()
    response = post_ingest(issuer, [good_with_surrogate, poison_without_a_key(), good_from_year_9999])
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2, "skipped": 1}

    responder = issuer.create_token()
    alerts = issuer.request("GET", "/v1/alerts", responder).json()["alerts"]
    assert sorted(a["access_key_id"] for a in alerts) == sorted(
        [first["access_key_id"], second["access_key_id"]]
    )
    for summary in alerts:
        alert = issuer.request("GET", f"/v1/alerts/{summary['alert_id']}", responder).json()
        last_seen = dt.datetime.fromisoformat(alert["last_seen"].replace("Z", "+00:00"))
        assert before - dt.timedelta(minutes=5) < last_seen < now() + dt.timedelta(minutes=5)
        if summary["access_key_id"] == first["access_key_id"]:
            # stored as the attacker sent it, but storable: the surrogate and NUL spelled out
            assert alert["summary"]["user_agents"] == ["aws-cli/2 \\ud800\\x00\x1b[2J"]
        else:
            [note] = alert["summary"]["warnings"]
            assert "9999-12-31" in note and "in the future" in note

    skipped = issuer.request("GET", "/v1/dead-letters", responder).json()
    assert skipped["counters"]["ingest.malformed"] == 1
    assert skipped["counters"]["ingest.time_replaced"] == 1
    [letter] = skipped["dead_letters"]
    assert letter["source"] == "ingest" and "not a string" in letter["reason"]
    assert "\\\\ud800evil" in letter["payload"]  # kept for inspection, as storable JSON text


def test_poison_between_two_good_messages_through_a_real_sqs_queue(  # type: ignore[no-untyped-def]
    det_gateway, det_settings, det_sessionmaker, det_credential
) -> None:
    sqs = det_gateway.client("sqs")
    url = sqs.create_queue(QueueName="tripkey-poison")["QueueUrl"]
    first, second = det_credential(), det_credential()
    for body in (
        cloudtrail_event(access_key_id=first.access_key_id, user_agent="x\ud800"),
        poison_without_a_key(),
        cloudtrail_event(access_key_id=second.access_key_id),
    ):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    runner = DetectionRunner(det_settings(sqs_queue_url=url), det_sessionmaker, det_gateway)
    received = 0
    for _ in range(5):
        received += runner.run_once(sqs_wait_seconds=1)["sqs"] or 0
        if received >= 3:
            break
    assert received == 3
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert attrs == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}
    with det_sessionmaker() as session:
        alerts = session.scalars(select(Alert)).all()
        assert {a.credential_id for a in alerts} == {first.id, second.id}
        assert read_counter(session, "sqs.malformed") == 1
        [letter] = session.scalars(select(DeadLetter)).all()
        assert letter.source == "sqs"


def test_an_sqs_message_that_keeps_failing_is_kept_and_deleted_not_redelivered_forever(  # type: ignore[no-untyped-def]
    det_gateway,
) -> None:
    """The database refuses every attempt (OperationalError): SQS redelivers the message until its
    MAX_RECEIVES-th delivery, then it is kept as a dead letter and deleted."""
    sqs = det_gateway.client("sqs")
    url = sqs.create_queue(QueueName="tripkey-stuck", Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(cloudtrail_event()))
    attempts: list[int] = []
    kept: list[tuple[str, str]] = []

    def handler(events: Any, rejected: Any) -> None:
        attempts.append(len(events))
        raise RuntimeError("database is down")

    source = SqsSource(det_gateway, url, handler, give_up=lambda body, reason: kept.append((body, reason)))
    for _ in range(MAX_RECEIVES + 3):
        source.poll_once(wait_seconds=0)
        if kept:
            break
    assert len(attempts) == MAX_RECEIVES
    [(body, reason)] = kept
    assert json.loads(body)["detail-type"] == "AWS API Call via CloudTrail"
    assert f"{MAX_RECEIVES} deliveries" in reason and "database is down" in reason
    assert source.poll_once(wait_seconds=0) == 0, "the message was deleted"
