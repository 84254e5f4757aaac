"""CloudTrail records and LookupEvents items as AWS shapes them, for detection tests."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from issuer.detection.events import parse_time


def lookup_item(record: dict[str, Any]) -> dict[str, Any]:
    identity = record["userIdentity"]
    return {
        "EventId": record["eventID"],
        "EventName": record["eventName"],
        "ReadOnly": "true",
        "AccessKeyId": identity.get("accessKeyId", ""),
        "EventTime": parse_time(record["eventTime"]),
        "EventSource": record["eventSource"],
        "Username": identity.get("userName", ""),
        "Resources": [],
        "CloudTrailEvent": json.dumps(record),
    }


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def cloudtrail_event(
    *,
    access_key_id: str | None = "AKIATESTCANARY000001",
    user_name: str | None = "svc-backup-abc123",
    event_name: str = "ListBuckets",
    event_source: str = "s3.amazonaws.com",
    event_id: str | None = None,
    when: dt.datetime | None = None,
    source_ip: str = "203.0.113.9",
    user_agent: str = "aws-cli/1.32.0 Python/3.11",
    error_code: str | None = "AccessDenied",
    request_parameters: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An EventBridge event of detail-type "AWS API Call via CloudTrail" (documented shape:
    https://docs.aws.amazon.com/eventbridge/latest/ref/events-structure.html and the CloudTrail record
    contents https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-record-contents.html)."""
    when = when or now()
    if identity is None:
        identity = {
            "type": "IAMUser",
            "principalId": "AIDATESTPRINCIPAL0001",
            "arn": f"arn:aws:iam::123456789012:user/{user_name}",
            "accountId": "123456789012",
            "accessKeyId": access_key_id,
            "userName": user_name,
        }
    detail: dict[str, Any] = {
        "eventVersion": "1.08",
        "userIdentity": identity,
        "eventTime": iso(when),
        "eventSource": event_source,
        "eventName": event_name,
        "awsRegion": "us-east-1",
        "sourceIPAddress": source_ip,
        "userAgent": user_agent,
        "requestParameters": request_parameters,
        "responseElements": None,
        "eventID": event_id or str(uuid.uuid4()),
        "eventType": "AwsApiCall",
        "recipientAccountId": "123456789012",
    }
    if error_code:
        detail["errorCode"] = error_code
        detail["errorMessage"] = "explicit deny"
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "AWS API Call via CloudTrail",
        "source": "aws." + event_source.split(".")[0],
        "account": "123456789012",
        "time": iso(when),
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    }
