"""Two issuer replicas on one database: never two alerts, never two deliveries of one alert."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from botocore.stub import ANY, Stubber
from sqlalchemy import select

from issuer.aws.gateway import AwsGateway, MintingConfig
from issuer.db import create_db_engine, make_sessionmaker
from issuer.detection.events import parse_eventbridge_event
from issuer.detection.runner import DetectionRunner
from issuer.models import Alert, Delivery, Detection
from tests.support.cloudtrail import cloudtrail_event, lookup_item
from tests.support.detection import sessionmaker_for


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


def _wait_until_blocked(db_url: str, maker: Any, thread: threading.Thread) -> None:
    """Return once `thread` waits for a row lock (PostgreSQL) or has had time to hit SQLite's lock."""
    import time

    from sqlalchemy import text

    deadline = time.monotonic() + 20
    if not db_url.startswith("postgresql"):
        time.sleep(0.5)  # SQLite serialises writers whatever the order; nothing to observe
        return
    while time.monotonic() < deadline and thread.is_alive():
        with maker() as probe:
            waiting = probe.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            )
        if waiting:
            return
        time.sleep(0.05)
    raise AssertionError("the detection never waited for the resolving transaction")


def test_use_racing_a_resolve_opens_a_new_alert(db_url, det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    """A responder resolves while a new use is being recorded: the use must not vanish into the
    resolved alert (on PostgreSQL it read the alert as open before the resolve committed)."""
    from sqlalchemy import update

    from issuer.detection.pipeline import process_events

    cred = det_credential()

    def record() -> Any:
        event = parse_eventbridge_event(cloudtrail_event(access_key_id=cred.access_key_id), source="sqs")
        return process_events(det_sessionmaker, [event], sink_names=["hook"], stale_after_seconds=3600)

    first = record()
    [alert_id] = first.alerts_opened
    with det_sessionmaker() as resolving:
        resolving.execute(update(Alert).where(Alert.id == alert_id).values(status="resolved"))
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(record()))
        thread.start()
        _wait_until_blocked(db_url, det_sessionmaker, thread)
        resolving.commit()
    thread.join(60)
    assert not thread.is_alive() and result
    assert result[0].alerts_opened and not result[0].alerts_joined
    with det_sessionmaker() as session:
        rows = session.scalars(select(Alert).order_by(Alert.created_at)).all()
        assert [(a.status, a.event_count) for a in rows] == [("resolved", 1), ("open", 1)]


def test_a_replica_that_lost_the_delivery_lease_stops_delivering(
    db_url, det_settings, det_sessionmaker, det_credential
) -> None:  # type: ignore[no-untyped-def]
    """Slow sends can outlast the delivery lease; once another replica holds it, the first one must
    not go on through its batch, or both would deliver the same pending alerts."""
    import time

    from issuer.alerts.sinks import DELIVERED, Sink

    sent: list[str] = []
    replicas: list[DetectionRunner] = []

    class SlowSink(Sink):
        type = "webhook"

        def send(self, alert: dict[str, Any]) -> str:
            sent.append(alert["alert_id"])
            if len(sent) == 1:
                time.sleep(0.6)  # past replica A's lease...
                assert replicas[1].delivery_lease.acquire()  # ...which replica B now takes
            return DELIVERED

    for name in ("replica-a", "replica-b"):
        sink = SlowSink({"name": "hook"})
        replicas.append(DetectionRunner(det_settings(), det_sessionmaker, None, holder=name, sinks=[sink]))
    replicas[0].delivery_lease.ttl = 0.3
    for key in ("AKIATESTCANARY000001", "AKIATESTCANARY000002"):
        cred = det_credential(access_key_id=key, principal_name="svc-" + key[-6:])
        event = cloudtrail_event(access_key_id=cred.access_key_id, user_name=cred.principal_name)
        replicas[0].handle_events([parse_eventbridge_event(event, source="sqs")])
    replicas[0].deliver_pending()
    assert len(sent) == 1
    with det_sessionmaker() as session:
        statuses = sorted(d.status for d in session.scalars(select(Delivery)))
    assert statuses == ["delivered", "pending"]  # left for replica B, which holds the lease now
