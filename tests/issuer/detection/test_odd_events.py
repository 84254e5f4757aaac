"""Odd but parseable CloudTrail events still alert, on SQLite and on a real PostgreSQL server.

An attacker holding the canary chooses much of what CloudTrail records (user agent, request
parameters). PostgreSQL text cannot hold NUL characters: an event carrying one must not fail to be
recorded (that would be a way to use the canary unseen).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from issuer.detection.events import parse_eventbridge_event
from issuer.detection.pipeline import process_events
from issuer.models import Alert, Detection
from tests.support.cloudtrail import cloudtrail_event
from tests.support.detection import sessionmaker_for


@pytest.fixture
def det_sessionmaker(db_url: str):  # type: ignore[no-untyped-def]
    engine, maker = sessionmaker_for(db_url)
    yield maker
    engine.dispose()


def test_nul_characters_in_attacker_chosen_fields_still_alert(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    raw: dict[str, Any] = cloudtrail_event(
        access_key_id=cred.access_key_id,
        user_agent="aws-cli/2\x00evil",
        event_name="PutUserPolicy",
        event_source="iam.amazonaws.com",
        request_parameters={"userName": "x\x00y", "policyName": "p\x00"},
    )
    event = parse_eventbridge_event(raw, source="ingest")
    stats = process_events(det_sessionmaker, [event], sink_names=[], stale_after_seconds=3600)
    assert len(stats.alerts_opened) == 1
    with det_sessionmaker() as session:
        [alert] = session.scalars(select(Alert)).all()
        [detection] = session.scalars(select(Detection)).all()
        assert alert.credential_id == cred.id
        assert detection.user_agent is not None and detection.user_agent.startswith("aws-cli/2")
        assert "\x00" not in detection.user_agent


def test_deeply_nested_request_parameters_still_alert(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    nested: Any = "bottom"
    for _ in range(400):  # 800 levels: parseable by json, too deep to store as is
        nested = {"a": [nested]}
    raw = cloudtrail_event(access_key_id=cred.access_key_id, request_parameters={"x": nested})
    event = parse_eventbridge_event(json.loads(json.dumps(raw)), source="ingest")
    stats = process_events(det_sessionmaker, [event], sink_names=[], stale_after_seconds=3600)
    assert len(stats.alerts_opened) == 1
