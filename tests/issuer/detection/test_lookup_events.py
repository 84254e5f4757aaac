"""CloudTrail LookupEvents pull. moto does not implement LookupEvents, so the gateway's own client is
driven by botocore's Stubber with responses in the documented shape: `Events[]` items with
EventId, EventName, ReadOnly, AccessKeyId, EventTime, EventSource, Username, Resources and
CloudTrailEvent, "a JSON string that contains a representation of the event returned"
(https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_Event.html), newest first, with
NextToken for the next page (https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_LookupEvents.html).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from botocore.stub import ANY, Stubber
from sqlalchemy import select

from issuer.detection.counters import read_counter
from issuer.detection.events import parse_time
from issuer.detection.locks import Lease
from issuer.detection.lookup_events import OVERLAP
from issuer.detection.runner import DetectionRunner
from issuer.models import Alert
from tests.support.cloudtrail import cloudtrail_event, lookup_item, now


def params(token: str | None = None) -> dict[str, Any]:
    expected: dict[str, Any] = {"StartTime": ANY, "EndTime": ANY, "MaxResults": 50}
    if token:
        expected["NextToken"] = token
    return expected


def test_lookup_events_pages_cursor_and_malformed(
    det_gateway, det_settings, det_sessionmaker, det_credential
) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    t0 = now() - dt.timedelta(minutes=3)
    use1 = cloudtrail_event(access_key_id=cred.access_key_id, when=t0, event_id="ct-1")["detail"]
    use2 = cloudtrail_event(
        access_key_id=cred.access_key_id,
        when=t0 + dt.timedelta(seconds=30),
        event_id="ct-2",
        event_name="GetCallerIdentity",
        event_source="sts.amazonaws.com",
    )["detail"]
    other = cloudtrail_event(access_key_id="AKIASOMEONEELSE00001", user_name="bob", event_id="ct-3")["detail"]
    broken = {**lookup_item(other), "EventId": "ct-4", "CloudTrailEvent": "{truncated"}

    settings = det_settings(lookup_events_regions=["us-east-1"])
    runner = DetectionRunner(settings, det_sessionmaker, det_gateway)
    client = det_gateway.client("cloudtrail", account="default", region="us-east-1")
    sent: list[dict[str, Any]] = []
    client.meta.events.register(
        "provide-client-params.cloudtrail.LookupEvents", lambda params, **_: sent.append(dict(params))
    )
    with Stubber(client) as stub:
        stub.add_response(
            "lookup_events", {"Events": [lookup_item(use2), lookup_item(other)], "NextToken": "p2"}, params()
        )
        stub.add_response("lookup_events", {"Events": [broken, lookup_item(use1)]}, params("p2"))
        # second poll: the overlap window returns the same events again
        stub.add_response("lookup_events", {"Events": [lookup_item(use2), lookup_item(use1)]}, params())
        first = runner.run_once()
        second = runner.run_once()
        stub.assert_no_pending_responses()

    # 4: the broken item names an access key id (AccessKeyId), so it goes on as a partial event; that
    # key is no canary, so it ends as a dead letter, counted as malformed, not as unmatched.
    assert first["lookup_events:default:us-east-1"] == 4
    assert second["lookup_events:default:us-east-1"] == 2
    with det_sessionmaker() as session:
        [alert] = session.scalars(select(Alert)).all()
        assert alert.event_count == 2, "re-read overlap events are not counted twice"
        assert alert.summary["detection_sources"] == ["lookup_events"]
        assert read_counter(session, "lookup_events.malformed") == 1
        assert read_counter(session, "lookup_events.unmatched") == 1
    cursor = Lease(det_sessionmaker, "lookup_events:default:us-east-1", "x").read_cursor()
    until = parse_time(cursor["until"])
    assert now() - dt.timedelta(minutes=1) < until <= now()
    # the second poll starts an overlap before where the first one ended
    assert sent[2]["StartTime"] <= sent[0]["EndTime"] - OVERLAP + dt.timedelta(seconds=1)
    assert sent[2]["StartTime"] >= sent[0]["EndTime"] - OVERLAP - dt.timedelta(seconds=1)


def test_lookup_events_aws_error_is_logged_not_raised(
    det_gateway, det_settings, det_sessionmaker, caplog
) -> None:  # type: ignore[no-untyped-def]
    runner = DetectionRunner(det_settings(lookup_events_regions=["eu-west-1"]), det_sessionmaker, det_gateway)
    client = det_gateway.client("cloudtrail", account="default", region="eu-west-1")
    with Stubber(client) as stub:
        stub.add_client_error("lookup_events", service_error_code="ThrottlingException", http_status_code=400)
        result = runner.run_once()
    assert result["lookup_events:default:eu-west-1"] is None
    assert "ThrottlingException" in caplog.text
    assert Lease(det_sessionmaker, "lookup_events:default:eu-west-1", "x").read_cursor() == {}, (
        "a failed poll does not move the cursor"
    )


def test_a_truncated_window_is_finished_on_the_next_poll(
    det_gateway, det_settings, det_sessionmaker, det_credential, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """LookupEvents pages newest first: when a busy account hits the page cap, what is left unread is
    the OLDEST part of the window. The cursor must remember it, or a canary use there is never seen."""
    from issuer.detection import lookup_events

    monkeypatch.setattr(lookup_events, "MAX_PAGES", 2)
    cred = det_credential()
    t0 = now() - dt.timedelta(minutes=30)
    old_use = cloudtrail_event(access_key_id=cred.access_key_id, when=t0, event_id="ct-old")["detail"]
    busy = cloudtrail_event(
        access_key_id="AKIASOMEONEELSE00001", user_name="bob", when=t0 + dt.timedelta(minutes=5)
    )["detail"]
    new_use = cloudtrail_event(
        access_key_id=cred.access_key_id, when=t0 + dt.timedelta(minutes=20), event_id="ct-new"
    )["detail"]

    runner = DetectionRunner(det_settings(lookup_events_regions=["us-east-1"]), det_sessionmaker, det_gateway)
    client = det_gateway.client("cloudtrail", account="default", region="us-east-1")
    sent: list[dict[str, Any]] = []
    client.meta.events.register(
        "provide-client-params.cloudtrail.LookupEvents", lambda params, **_: sent.append(dict(params))
    )
    with Stubber(client) as stub:
        # poll 1: two pages (the cap) and still a NextToken: the window's oldest part is unread
        stub.add_response("lookup_events", {"Events": [lookup_item(new_use)], "NextToken": "p2"}, params())
        stub.add_response("lookup_events", {"Events": [lookup_item(busy)], "NextToken": "p3"}, params("p2"))
        # poll 2: the fresh window (nothing new), then the unread rest of poll 1's window
        stub.add_response("lookup_events", {"Events": []}, params())
        stub.add_response("lookup_events", {"Events": [lookup_item(old_use)]}, params())
        runner.run_once()
        runner.run_once()
        stub.assert_no_pending_responses()

    assert sent[3]["StartTime"] == sent[0]["StartTime"]
    assert sent[3]["EndTime"] <= parse_time(busy["eventTime"]) + dt.timedelta(seconds=1)
    with det_sessionmaker() as session:
        [alert] = session.scalars(select(Alert)).all()
        assert alert.event_count == 2, "the use in the unread part of the window was found"
    assert "gap" not in Lease(det_sessionmaker, "lookup_events:default:us-east-1", "x").read_cursor()
