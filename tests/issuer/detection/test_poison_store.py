"""Events the database could not take, on SQLite and on a real PostgreSQL server.

Hostile inputs named after what they break: lone surrogates (UTF-8 cannot encode them), NUL
(PostgreSQL text cannot hold it), NaN and Infinity (PostgreSQL's json refuses them), wrong types
around a canary's key id, times far from now, and an event the database refuses outright.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DataError

from issuer.detection import pipeline
from issuer.detection.counters import read_counter
from issuer.detection.events import parse_eventbridge_event, parse_json_events
from issuer.detection.pipeline import process_events
from issuer.models import Alert, DeadLetter, Detection
from tests.support.cloudtrail import cloudtrail_event, now
from tests.support.detection import sessionmaker_for

FAR_FUTURE = "9999-12-31T23:59:59Z"


@pytest.fixture
def det_sessionmaker(db_url: str):  # type: ignore[no-untyped-def]
    """The store on SQLite and on a real PostgreSQL server (det_credential writes there too)."""
    engine, maker = sessionmaker_for(db_url)
    yield maker
    engine.dispose()


def test_an_event_the_store_refuses_is_kept_and_its_neighbours_alert(  # type: ignore[no-untyped-def]
    det_sessionmaker, det_credential, monkeypatch
) -> None:
    """Whatever makes the database refuse one event (a DataError here, raised where the row is
    written), that event is counted and kept, and the events around it alert; SQLite and PostgreSQL."""
    creds = [det_credential() for _ in range(3)]
    events = [
        parse_eventbridge_event(cloudtrail_event(access_key_id=c.access_key_id), source="ingest")
        for c in creds
    ]
    poisoned = events[1].event_id
    real_record_match = pipeline.record_match

    def refusing(session: Any, event: Any, *args: Any, **kwargs: Any) -> Any:
        if event.event_id == poisoned:
            raise DataError("INSERT INTO detections ...", {}, Exception("invalid byte sequence"))
        return real_record_match(session, event, *args, **kwargs)

    monkeypatch.setattr(pipeline, "record_match", refusing)
    stats = process_events(det_sessionmaker, events, sink_names=[], stale_after_seconds=3600)
    assert (len(stats.alerts_opened), stats.failed, stats.dead_lettered) == (2, 1, 1)
    with det_sessionmaker() as session:
        assert {a.credential_id for a in session.scalars(select(Alert))} == {creds[0].id, creds[2].id}
        assert read_counter(session, "ingest.failed") == 1
        [letter] = session.scalars(select(DeadLetter)).all()
        assert "DataError" in letter.reason and poisoned in letter.payload


def test_text_no_database_takes_is_stored_spelled_out(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    raw = cloudtrail_event(
        access_key_id=cred.access_key_id,
        user_agent="ua\udfff\ud800\x00\x1b]0;owned\x07",
        request_parameters={
            "bucket": "b\x00",
            "size": float("nan"),
            "big": 10**300,
            "k\ud801": [float("inf")],
        },
    )
    [event], rejected = parse_json_events(json.dumps(raw), source="sqs")
    assert rejected == []
    stats = process_events(det_sessionmaker, [event], sink_names=[], stale_after_seconds=3600)
    assert len(stats.alerts_opened) == 1
    with det_sessionmaker() as session:
        [detection] = session.scalars(select(Detection)).all()
        assert detection.user_agent == "ua\\udfff\\ud800\\x00\x1b]0;owned\x07"
        params = detection.raw["requestParameters"]
        assert params == {"bucket": "b\\x00", "size": "nan", "big": 10**300, "k\\ud801": ["inf"]}


def test_wrong_types_with_a_canary_key_still_alert(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    raw = cloudtrail_event(access_key_id=cred.access_key_id, event_id="ev-wrong-types")
    raw["detail"].update({"userAgent": {"x": 1}, "eventTime": 12, "sourceIPAddress": ["1.2.3.4"]})
    unknown_key = cloudtrail_event(access_key_id="AKIANOTACANARY000001")
    unknown_key["detail"]["userAgent"] = 7
    events, rejected = parse_json_events(json.dumps([raw, unknown_key]), source="ingest")
    assert rejected == [] and [e.malformed is not None for e in events] == [True, True]
    stats = process_events(det_sessionmaker, events, sink_names=[], stale_after_seconds=3600)
    assert (len(stats.alerts_opened), stats.malformed, stats.dead_lettered) == (1, 2, 1)
    with det_sessionmaker() as session:
        [alert] = session.scalars(select(Alert)).all()
        assert alert.credential_id == cred.id
        assert any("malformed CloudTrail record" in note for note in alert.summary["warnings"])
        assert read_counter(session, "ingest.malformed") == 2
        [letter] = session.scalars(select(DeadLetter)).all()
        assert "AKIANOTACANARY000001" in letter.payload
    # the same malformed record again (a redelivery) is the same detection, not a second one
    again, _ = parse_json_events(json.dumps([raw]), source="ingest")
    assert process_events(det_sessionmaker, again, sink_names=[], stale_after_seconds=3600).duplicates == 1


@pytest.mark.parametrize(
    "when",
    [FAR_FUTURE, "9999-12-31T23:59:59-01:00", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00+00:00"],
    ids=["year-9999", "past-max-in-utc", "epoch", "year-1"],
)
def test_times_far_from_now_never_become_last_seen(det_sessionmaker, det_credential, when: str) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    raw = cloudtrail_event(access_key_id=cred.access_key_id)
    raw["detail"]["eventTime"] = raw["time"] = when
    before = now()
    events, rejected = parse_json_events(json.dumps(raw), source="sqs")
    assert rejected == []
    process_events(det_sessionmaker, events, sink_names=[], stale_after_seconds=3600)
    with det_sessionmaker() as session:
        [alert] = session.scalars(select(Alert)).all()
        for seen in (alert.first_seen, alert.last_seen):
            assert before - dt.timedelta(seconds=5) <= seen <= now() + dt.timedelta(seconds=5)
        assert alert.summary["warnings"], "the replaced time is said"
