"""Parsing EventBridge-wrapped CloudTrail events, LookupEvents items and bad input."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from issuer.detection.events import (
    MalformedEvent,
    parse_eventbridge_event,
    parse_json_events,
    parse_lookup_event,
)
from tests.support.cloudtrail import cloudtrail_event


def test_iam_user_event_fields() -> None:
    raw = cloudtrail_event(access_key_id="AKIAEXAMPLE", user_name="svc-backup-x1", event_id="ev-1")
    event = parse_eventbridge_event(raw, source="sqs")
    assert event.source == "sqs"
    assert event.event_id == "ev-1"
    assert event.access_key_id == "AKIAEXAMPLE"
    assert event.user_name == "svc-backup-x1"
    assert event.caller_principal == "svc-backup-x1"
    assert event.event_name == "ListBuckets"
    assert event.event_source == "s3.amazonaws.com"
    assert event.region == "us-east-1"
    assert event.source_ip == "203.0.113.9"
    assert event.error_code == "AccessDenied"
    assert event.account_id == "123456789012"
    assert event.event_time.tzinfo is not None


def test_federated_user_name_comes_from_the_arn_not_the_session_issuer() -> None:
    identity = {
        "type": "FederatedUser",
        "principalId": "123456789012:svc-backup-fed9",
        "arn": "arn:aws:sts::123456789012:federated-user/svc-backup-fed9",
        "accountId": "123456789012",
        "accessKeyId": "ASIAFEDERATED",
        "sessionContext": {"sessionIssuer": {"type": "IAMUser", "userName": "tripkey-issuer"}},
    }
    event = parse_eventbridge_event(cloudtrail_event(identity=identity), source="ingest")
    assert event.federated_name == "svc-backup-fed9"
    assert event.user_name is None
    assert event.caller_principal == "svc-backup-fed9"
    assert event.access_key_id == "ASIAFEDERATED"


def test_tamper_target_user_is_parsed() -> None:
    raw = cloudtrail_event(
        event_name="DeleteUserPolicy",
        event_source="iam.amazonaws.com",
        request_parameters={"userName": "svc-backup-zz", "policyName": "deny"},
    )
    assert parse_eventbridge_event(raw, source="sqs").target_user_name == "svc-backup-zz"


def test_response_elements_are_not_kept() -> None:
    raw = cloudtrail_event()
    raw["detail"]["responseElements"] = {"accessKey": {"secretAccessKey": "SHOULD-NOT-BE-KEPT"}}
    event = parse_eventbridge_event(raw, source="sqs")
    assert "SHOULD-NOT-BE-KEPT" not in json.dumps(event.raw)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.update({"detail-type": "Object Created"}),
        lambda e: e.update({"detail": "not an object"}),
        lambda e: e["detail"].pop("userIdentity"),
        lambda e: e["detail"].pop("eventName"),
        lambda e: e["detail"].update({"eventTime": "yesterday"}),
        lambda e: e["detail"].update({"sourceIPAddress": 12}),
        lambda e: (e["detail"].pop("eventID"), e.pop("id")),
    ],
    ids=["detail-type", "detail", "identity", "eventName", "time", "ip-type", "no-id"],
)
def test_malformed_events_raise(mutate) -> None:  # type: ignore[no-untyped-def]
    raw = cloudtrail_event()
    mutate(raw)
    with pytest.raises(MalformedEvent):
        parse_eventbridge_event(raw, source="sqs")


def test_non_object_event_raises() -> None:
    for value in (None, 3, "x", []):
        with pytest.raises(MalformedEvent):
            parse_eventbridge_event(value, source="sqs")


def test_body_with_array_counts_the_bad_ones() -> None:
    body = json.dumps([cloudtrail_event(), {"detail-type": "nope"}, 7, cloudtrail_event()])
    events, rejected = parse_json_events(body, source="ingest")
    assert len(events) == 2
    assert [r.item for r in rejected] == [{"detail-type": "nope"}, 7]


def test_body_that_is_not_json_raises() -> None:
    with pytest.raises(MalformedEvent):
        parse_json_events(b"\xff\xfe not json", source="ingest")


def test_lookup_events_item() -> None:
    # Shape of an Events[] item: https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_Event.html
    record = cloudtrail_event(event_id="lk-1")["detail"]
    item = {
        "EventId": "lk-1",
        "EventName": "ListBuckets",
        "EventTime": dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC),
        "EventSource": "s3.amazonaws.com",
        "AccessKeyId": record["userIdentity"]["accessKeyId"],
        "Username": record["userIdentity"]["userName"],
        "CloudTrailEvent": json.dumps(record),
        "ReadOnly": "true",
        "Resources": [],
    }
    event = parse_lookup_event(item)
    assert event.source == "lookup_events"
    assert event.event_id == "lk-1"
    assert event.access_key_id == record["userIdentity"]["accessKeyId"]
    with pytest.raises(MalformedEvent):
        parse_lookup_event({**item, "CloudTrailEvent": "{not json"})
    with pytest.raises(MalformedEvent):
        parse_lookup_event({"EventId": "x"})
