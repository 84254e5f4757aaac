"""Two issuer replicas on one database: never two alerts, never two deliveries of one alert."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from botocore.stub import ANY, Stubber
from sqlalchemy import select

from issuer.aws import AwsGateway, MintingConfig
from issuer.db import create_db_engine, make_sessionmaker
from issuer.detection.events import parse_eventbridge_event
from issuer.detection.runner import DetectionRunner
from issuer.models import Alert, Delivery, Detection
from tests.detection.conftest import cloudtrail_event, sessionmaker_for
from tests.detection.test_lookup_events import lookup_item


@pytest.fixture
def det_sessionmaker(db_url: str):  # type: ignore[no-untyped-def]
    """This module runs on SQLite and on a real PostgreSQL server (tests/conftest.py `db_url`)."""
    engine, maker = sessionmaker_for(db_url)
    yield maker
    engine.dispose()


def two_replicas(db_url, det_settings, moto_url, **settings: Any) -> list[DetectionRunner]:  # type: ignore[no-untyped-def]
    """Two runners, each with its own engine and gateway, as two processes would have."""
    runners = []
    for name in ("replica-a", "replica-b"):
        engine = create_db_engine(db_url)
        gateway = AwsGateway(MintingConfig(endpoint_url=moto_url))
        runners.append(
            DetectionRunner(det_settings(**settings), make_sessionmaker(engine), gateway, holder=name)
        )
    return runners


def in_parallel(*funcs: Any) -> list[Any]:
    results: list[Any] = [None] * len(funcs)
    barrier = threading.Barrier(len(funcs))

    def call(index: int) -> None:
        barrier.wait()
        results[index] = funcs[index]()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(funcs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_same_events_on_two_replicas_make_one_alert(
    db_url, det_settings, moto_url, det_sessionmaker, det_credential
) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    a, b = two_replicas(db_url, det_settings, moto_url)
    raws = [cloudtrail_event(access_key_id=cred.access_key_id, event_id=f"dup-{i}") for i in range(5)]
    events = [parse_eventbridge_event(raw, source="sqs") for raw in raws]
    # SQS is at-least-once: both replicas may receive the same messages at the same time.
    in_parallel(lambda: a.handle_events(events, source="sqs"), lambda: b.handle_events(events, source="sqs"))
    with det_sessionmaker() as session:
        [alert] = session.scalars(select(Alert)).all()
        assert alert.event_count == 5
        assert len(session.scalars(select(Detection)).all()) == 5
    assert a.last_stats.duplicates + b.last_stats.duplicates == 5


def test_lookup_poller_runs_on_one_replica(
    db_url, det_settings, moto_url, det_sessionmaker, det_credential
) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    record = cloudtrail_event(access_key_id=cred.access_key_id, event_id="lk-1")["detail"]
    a, b = two_replicas(db_url, det_settings, moto_url, lookup_events_regions=["us-east-1"])
    stubs = []
    for runner in (a, b):
        stub = Stubber(runner.aws_gateway.client("cloudtrail", account="default", region="us-east-1"))
        stub.add_response(
            "lookup_events",
            {"Events": [lookup_item(record)]},
            {"StartTime": ANY, "EndTime": ANY, "MaxResults": 50},
        )
        stub.activate()
        stubs.append(stub)
    results = in_parallel(a.run_once, b.run_once)
    polled = [r["lookup_events:default:us-east-1"] for r in results]
    assert sorted(polled, key=str) == [1, None], "exactly one replica holds the lease and polls"
    with det_sessionmaker() as session:
        assert len(session.scalars(select(Alert)).all()) == 1
    for stub in stubs:
        stub.deactivate()


def test_one_delivery_per_alert_across_replicas(
    db_url, det_settings, moto_url, det_sessionmaker, det_credential, det_webhook
) -> None:  # type: ignore[no-untyped-def]
    receiver = det_webhook(secret="k")
    a, b = two_replicas(
        db_url,
        det_settings,
        moto_url,
        sinks=[{"type": "webhook", "name": "hook", "url": receiver.url, "secret": "k"}],
    )
    cred = det_credential()
    a.handle_events(
        [parse_eventbridge_event(cloudtrail_event(access_key_id=cred.access_key_id), source="sqs")]
    )
    in_parallel(a.deliver_pending, b.deliver_pending)
    in_parallel(a.deliver_pending, b.deliver_pending)
    assert len(receiver.requests) == 1
    assert json.loads(receiver.requests[0]["body"])["alert"]["kind"] == "canary_use"
    with det_sessionmaker() as session:
        [delivery] = session.scalars(select(Delivery)).all()
        assert (delivery.status, delivery.attempts) == ("delivered", 1)
