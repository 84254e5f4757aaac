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

The caller of a canary chooses most of a CloudTrail record's text, so every text field is made
storable (issuer.textsafe) and cut to its column's size, and the record's time is checked against
the clock: a time far in the future (year 9999) would otherwise become the alert's `last_seen`. Such
a time is replaced by the time of receipt, and the event says so in `notes`. A record whose fields
have the wrong types is malformed, but the key id is the one part of it AWS writes, not the caller:
`salvage` keeps a malformed record that names an access key id as a partial event, so a canary's use
still alerts however its caller mangled the rest (batch parsers do this; the strict `parse_*` raise).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from issuer.textsafe import bounded, storable_json
from issuer.timefmt import as_utc, iso

CLOUDTRAIL_DETAIL_TYPE = "AWS API Call via CloudTrail"
# arn:aws:sts::123456789012:federated-user/NAME (any partition)
_FEDERATED_ARN = re.compile(r"^arn:[\w-]+:sts::(\d{12}):federated-user/(.+)$")
_IAM_USER_ARN = re.compile(r"^arn:[\w-]+:iam::(\d{12}):user/(?:.*/)?([^/]+)$")


# How far ahead of the issuer's clock an event time may be (clock skew) before it is not believed.
FUTURE_SKEW = dt.timedelta(hours=1)
# AWS did not exist before this: an earlier time is not a real CloudTrail time.
EARLIEST = dt.datetime(2006, 1, 1, tzinfo=dt.UTC)
# Sizes of the detections table's columns (issuer.models.Detection); longer values are cut.
_LIMITS = {"event_name": 255, "event_source": 255, "region": 40, "source_ip": 100, "error_code": 255}
_TEXT_LIMIT = 4096  # user agent, ARNs, names: no real value is longer
_EVENT_ID_LIMIT = 200  # leaves room for "tamper:" in detections.source_event_id (255)
_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}$")

Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class MalformedEvent(ValueError):
    """The input is not an event we understand; it is counted and skipped."""


@dataclasses.dataclass(frozen=True, slots=True)
class Rejected:
    """An input item that could not be parsed: counted, and kept for inspection (dead letters)."""

    reason: str
    item: Any = dataclasses.field(compare=False, hash=False)


def parse_time(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return as_utc(value)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"event time missing or not a string: {_short(value)}")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        return as_utc(dt.datetime.fromisoformat(text))
    except (ValueError, OverflowError) as exc:  # OverflowError: 9999-12-31T23:59:59-01:00 in UTC
        raise MalformedEvent(f"event time is not an ISO 8601 time: {_short(value)}") from exc


def believable_time(when: dt.datetime, received_at: dt.datetime) -> tuple[dt.datetime, str | None]:
    """(the time to record, why it is not the event's own time or None).

    A time after `received_at` + FUTURE_SKEW or before AWS existed is not believed: the time of
    receipt is recorded instead, with the reason, so it can never become an alert's `last_seen`."""
    if when > received_at + FUTURE_SKEW:
        why = "in the future"
    elif when < EARLIEST:
        why = "before AWS existed"
    else:
        return when, None
    return received_at, (f"the event's time {iso(when)} is {why}; recorded at the time it was received")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    # What the issuer changed or could not read (a time not believed, a malformed record salvaged).
    notes: tuple[str, ...] = ()
    malformed: str | None = None  # why the record is malformed (a salvaged partial event), else None
    time_replaced: bool = False  # the record's own time was not believed (see believable_time)

    @property
    def caller_principal(self) -> str | None:
        return self.user_name or self.federated_name


def _opt_str(record: dict[str, Any], key: str, limit: int = _TEXT_LIMIT) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedEvent(f"{key} must be a string, got {type(value).__name__}")
    return bounded(value, limit)


def _event_id(value: str) -> str:
    """An id that fits its column: a longer one is cut and made unique again by its hash."""
    if len(value) <= _EVENT_ID_LIMIT:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "backslashreplace")).hexdigest()[:32]
    return f"{value[: _EVENT_ID_LIMIT - 40]}...sha256:{digest}"


def parse_cloudtrail_record(
    record: Any, *, source: str, fallback_id: str | None = None, clock: Clock = _utcnow
) -> AwsEvent:
    """Parse one CloudTrail record (the ``detail`` of an EventBridge event)."""
    if not isinstance(record, dict):
        raise MalformedEvent("CloudTrail record is not a JSON object")
    identity = record.get("userIdentity")
    if not isinstance(identity, dict):
        raise MalformedEvent("CloudTrail record has no userIdentity object")
    event_id = _opt_str(record, "eventID") or (bounded(fallback_id, _TEXT_LIMIT) if fallback_id else None)
    if not event_id:
        raise MalformedEvent("CloudTrail record has no eventID")
    event_name = _opt_str(record, "eventName", _LIMITS["event_name"])
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
        target_user = bounded(params["userName"], _TEXT_LIMIT)

    when, time_note = believable_time(parse_time(record.get("eventTime")), clock())
    return AwsEvent(
        source=source,
        event_id=_event_id(event_id),
        event_time=when,
        event_name=event_name,
        event_source=_opt_str(record, "eventSource", _LIMITS["event_source"]),
        region=_opt_str(record, "awsRegion", _LIMITS["region"]),
        source_ip=_opt_str(record, "sourceIPAddress", _LIMITS["source_ip"]),
        user_agent=_opt_str(record, "userAgent"),
        error_code=_opt_str(record, "errorCode", _LIMITS["error_code"]),
        access_key_id=_opt_str(identity, "accessKeyId") or None,
        identity_type=identity_type,
        user_name=user_name,
        federated_name=federated_name,
        account_id=account_id,
        caller_arn=arn or None,
        target_user_name=target_user,
        raw=_strip_raw(record),
        notes=(time_note,) if time_note else (),
        time_replaced=time_note is not None,
    )


def parse_eventbridge_event(event: Any, *, source: str, clock: Clock = _utcnow) -> AwsEvent:
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
    return parse_cloudtrail_record(detail, source=source, fallback_id=fallback, clock=clock)


def parse_lookup_event(item: Any, *, clock: Clock = _utcnow) -> AwsEvent:
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
    return parse_cloudtrail_record(record, source="lookup_events", fallback_id=fallback, clock=clock)


def salvage(item: Any, reason: str, *, source: str, clock: Clock = _utcnow) -> AwsEvent | None:
    """A partial event for a malformed item that still names an access key id, else None.

    The key id is where AWS puts it (``detail.userIdentity.accessKeyId`` of an EventBridge event,
    ``AccessKeyId`` of a LookupEvents item); the rest of the item may be anything. The event's time is
    the time of receipt (the item's own cannot be trusted) and its id is derived from the item, so the
    same malformed record delivered twice is recorded once."""
    record: Any = item.get("detail") if isinstance(item, dict) else None
    if isinstance(item, dict) and isinstance(item.get("CloudTrailEvent"), str):  # LookupEvents
        try:
            record = json.loads(item["CloudTrailEvent"])
        except (ValueError, RecursionError):
            record = None
    record = record if isinstance(record, dict) else {}
    identity = record.get("userIdentity") if isinstance(record.get("userIdentity"), dict) else {}
    key_id = identity.get("accessKeyId")
    if not isinstance(key_id, str) and isinstance(item, dict):
        key_id = item.get("AccessKeyId")
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        return None
    given_id = record.get("eventID")
    if isinstance(given_id, str) and given_id:
        event_id = "malformed:" + _event_id(bounded(given_id, _TEXT_LIMIT))
    else:
        body = json.dumps(storable_json(item), sort_keys=True, default=str)
        event_id = "malformed:sha256:" + hashlib.sha256(body.encode()).hexdigest()[:40]
    name = record.get("eventName")
    return AwsEvent(
        source=source,
        event_id=event_id,
        event_time=clock(),
        event_name=bounded(name, _LIMITS["event_name"]) if isinstance(name, str) else None,
        access_key_id=key_id,
        raw={"tripkey_malformed": reason, "record": _strip_raw(record)},
        notes=(
            f"malformed CloudTrail record ({reason}); matched by its access key id, "
            "recorded at the time it was received",
        ),
        malformed=reason,
    )


def parse_items(
    items: list[Any],
    parse: Callable[[Any], AwsEvent],
    *,
    source: str,
    clock: Clock = _utcnow,
) -> tuple[list[AwsEvent], list[Rejected]]:
    """Parse each item on its own: (events, rejected). A malformed item that names an access key id
    is both: salvaged as a partial event (matched like any other) and counted as malformed."""
    events: list[AwsEvent] = []
    rejected: list[Rejected] = []
    for item in items:
        try:
            events.append(parse(item))
        except MalformedEvent as exc:
            partial = salvage(item, str(exc), source=source, clock=clock)
            if partial is not None:
                events.append(partial)
            else:
                rejected.append(Rejected(str(exc), item))
    return events, rejected


def parse_json_events(
    body: bytes | str, *, source: str, clock: Clock = _utcnow
) -> tuple[list[AwsEvent], list[Rejected]]:
    """Parse a body holding one EventBridge event or an array of them: (events, rejected items).

    A body that is not JSON at all raises MalformedEvent."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than json can parse
        raise MalformedEvent("body is not JSON") from exc
    items = data if isinstance(data, list) else [data]
    return parse_items(
        items,
        lambda item: parse_eventbridge_event(item, source=source, clock=clock),
        source=source,
        clock=clock,
    )


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
    """Keep the fields a responder needs, storable; responseElements can be huge and may carry
    credentials."""
    return {key: storable_json(record[key], 1) for key in _RAW_KEYS if key in record}


__all__ = [
    "AwsEvent",
    "MalformedEvent",
    "Rejected",
    "as_utc",
    "believable_time",
    "parse_cloudtrail_record",
    "parse_eventbridge_event",
    "parse_items",
    "parse_json_events",
    "parse_lookup_event",
    "parse_time",
    "salvage",
]
