"""Normalised AWS-side events and the parsers that build them.

Three shapes reach the issuer:

* an EventBridge event wrapping a CloudTrail record (SQS target and API-destination ingest):
  ``{"version": "0", "id": ..., "detail-type": "AWS API Call via CloudTrail", "source": "aws.s3",
  "account": ..., "time": ..., "region": ..., "detail": {<CloudTrail record>}}``;
* a CloudTrail ``LookupEvents`` ``Events[]`` item whose ``CloudTrailEvent`` is the record as a JSON
  string;
* a bare CloudTrail record (``detail`` above).

Whatever the shape, the result is one frozen :class:`AwsEvent`. Anything that cannot be parsed raises
:class:`MalformedEvent` so the caller can count and skip it without stopping.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from typing import Any

CLOUDTRAIL_DETAIL_TYPE = "AWS API Call via CloudTrail"
# arn:aws:sts::123456789012:federated-user/NAME (any partition)
_FEDERATED_ARN = re.compile(r"^arn:[\w-]+:sts::(\d{12}):federated-user/(.+)$")
_IAM_USER_ARN = re.compile(r"^arn:[\w-]+:iam::(\d{12}):user/(?:.*/)?([^/]+)$")


class MalformedEvent(ValueError):
    """The input is not an event we understand; it is counted and skipped."""


def as_utc(value: dt.datetime) -> dt.datetime:
    """Datetimes read back from SQLite are naive; every time in Tripkey is UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def parse_time(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return as_utc(value)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"event time missing or not a string: {value!r}")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        return as_utc(dt.datetime.fromisoformat(text))
    except ValueError as exc:
        raise MalformedEvent(f"event time is not ISO 8601: {value!r}") from exc


@dataclasses.dataclass(frozen=True, slots=True)
class AwsEvent:
    """One AWS API call (or last-used observation) that may involve a canary."""

    source: str  # sqs | ingest | lookup_events | last_used
    event_id: str
    event_time: dt.datetime
    event_name: str | None = None
    event_source: str | None = None
    region: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    error_code: str | None = None
    access_key_id: str | None = None
    identity_type: str | None = None
    user_name: str | None = None  # IAM user name of the caller
    federated_name: str | None = None  # NAME of arn:aws:sts::ACCOUNT:federated-user/NAME
    account_id: str | None = None
    caller_arn: str | None = None
    target_user_name: str | None = None  # requestParameters.userName (IAM management calls)
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def caller_principal(self) -> str | None:
        return self.user_name or self.federated_name


_MAX_RAW_DEPTH = 32  # CloudTrail's own records nest a few levels; deeper is cut, not stored


def _no_nul(value: Any, depth: int = 0) -> Any:
    """A storable copy: NUL characters replaced, nesting cut at _MAX_RAW_DEPTH.

    A caller of the canary chooses much of what CloudTrail records (user agent, request parameters).
    PostgreSQL text cannot hold NUL, and deep nesting overflows the JSON encoder: refusing such an
    event would let that caller use the canary unseen, so the event is kept, cleaned.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict | list) and depth >= _MAX_RAW_DEPTH:
        return "(nested too deeply; cut)"
    if isinstance(value, dict):
        return {_no_nul(str(k)): _no_nul(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nul(v, depth + 1) for v in value]
    return value


def _opt_str(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedEvent(f"{key} must be a string, got {type(value).__name__}")
    return _no_nul(value)


def parse_cloudtrail_record(record: Any, *, source: str, fallback_id: str | None = None) -> AwsEvent:
    """Parse one CloudTrail record (the ``detail`` of an EventBridge event)."""
    if not isinstance(record, dict):
        raise MalformedEvent("CloudTrail record is not a JSON object")
    identity = record.get("userIdentity")
    if not isinstance(identity, dict):
        raise MalformedEvent("CloudTrail record has no userIdentity object")
    event_id = _opt_str(record, "eventID") or fallback_id
    if not event_id:
        raise MalformedEvent("CloudTrail record has no eventID")
    event_name = _opt_str(record, "eventName")
    if not event_name:
        raise MalformedEvent("CloudTrail record has no eventName")

    identity_type = _opt_str(identity, "type")
    arn = _opt_str(identity, "arn") or ""
    user_name: str | None = None
    federated_name: str | None = None
    account_id = _opt_str(identity, "accountId") or _opt_str(record, "recipientAccountId")
    if identity_type == "FederatedUser" or _FEDERATED_ARN.match(arn):
        match = _FEDERATED_ARN.match(arn)
        if match:
            account_id = account_id or match.group(1)
            federated_name = match.group(2)
    else:
        # For IAMUser, userName is the caller. (For AssumedRole/FederatedUser a userName found under
        # sessionContext.sessionIssuer is the issuer's identity, never the caller, so it is ignored.)
        user_name = _opt_str(identity, "userName")
        match = _IAM_USER_ARN.match(arn)
        if match:
            account_id = account_id or match.group(1)
            user_name = user_name or match.group(2)

    params = record.get("requestParameters")
    target_user = None
    if isinstance(params, dict) and isinstance(params.get("userName"), str):
        target_user = _no_nul(params["userName"])

    return AwsEvent(
        source=source,
        event_id=event_id,
        event_time=parse_time(record.get("eventTime")),
        event_name=event_name,
        event_source=_opt_str(record, "eventSource"),
        region=_opt_str(record, "awsRegion"),
        source_ip=_opt_str(record, "sourceIPAddress"),
        user_agent=_opt_str(record, "userAgent"),
        error_code=_opt_str(record, "errorCode"),
        access_key_id=_opt_str(identity, "accessKeyId") or None,
        identity_type=identity_type,
        user_name=user_name,
        federated_name=federated_name,
        account_id=account_id,
        caller_arn=arn or None,
        target_user_name=target_user,
        raw=_strip_raw(record),
    )


def parse_eventbridge_event(event: Any, *, source: str) -> AwsEvent:
    """Parse one EventBridge event of detail-type "AWS API Call via CloudTrail"."""
    if not isinstance(event, dict):
        raise MalformedEvent("EventBridge event is not a JSON object")
    detail_type = event.get("detail-type")
    if detail_type != CLOUDTRAIL_DETAIL_TYPE:
        raise MalformedEvent(f"unexpected detail-type {detail_type!r}")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise MalformedEvent("EventBridge event has no detail object")
    if "eventTime" not in detail and "time" in event:
        detail = {**detail, "eventTime": event["time"]}
    if "awsRegion" not in detail and isinstance(event.get("region"), str):
        detail = {**detail, "awsRegion": event["region"]}
    fallback = event.get("id") if isinstance(event.get("id"), str) else None
    return parse_cloudtrail_record(detail, source=source, fallback_id=fallback)


def parse_lookup_event(item: Any) -> AwsEvent:
    """Parse one ``Events[]`` item of a CloudTrail LookupEvents response."""
    if not isinstance(item, dict):
        raise MalformedEvent("LookupEvents item is not an object")
    text = item.get("CloudTrailEvent")
    if not isinstance(text, str):
        raise MalformedEvent("LookupEvents item has no CloudTrailEvent string")
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedEvent("CloudTrailEvent is not valid JSON") from exc
    fallback = item.get("EventId") if isinstance(item.get("EventId"), str) else None
    if isinstance(record, dict) and "eventTime" not in record and item.get("EventTime") is not None:
        record["eventTime"] = item["EventTime"]
    return parse_cloudtrail_record(record, source="lookup_events", fallback_id=fallback)


def parse_json_events(body: bytes | str, *, source: str) -> tuple[list[AwsEvent], int]:
    """Parse a body holding one EventBridge event or an array of them.

    Returns (events, malformed_count). A body that is not JSON at all raises MalformedEvent.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than json can parse
        raise MalformedEvent("body is not JSON") from exc
    items = data if isinstance(data, list) else [data]
    events: list[AwsEvent] = []
    malformed = 0
    for item in items:
        try:
            events.append(parse_eventbridge_event(item, source=source))
        except MalformedEvent:
            malformed += 1
    return events, malformed


_RAW_KEYS = (
    "eventVersion",
    "eventID",
    "eventTime",
    "eventName",
    "eventSource",
    "awsRegion",
    "sourceIPAddress",
    "userAgent",
    "errorCode",
    "errorMessage",
    "userIdentity",
    "requestParameters",
    "recipientAccountId",
    "readOnly",
    "eventType",
)


def _strip_raw(record: dict[str, Any]) -> dict[str, Any]:
    """Keep the fields a responder needs; responseElements can be huge and may carry credentials."""
    return {key: _no_nul(record[key]) for key in _RAW_KEYS if key in record}
