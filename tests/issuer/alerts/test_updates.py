"""Alerts that follow the incident (issuer/alerts/updates.py): a joined event with something
materially new — a new source address, user-agent family, kind of calls or region — reaches the sinks
as an update of the same alert, at most once per rate-limit interval and never lost to it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sqlalchemy import select, update

from issuer.alerts.delivery import DeliveryWorker
from issuer.alerts.sinks import JsonlSink
from issuer.alerts.updates import promote_due_updates
from issuer.detection.events import parse_eventbridge_event
from issuer.detection.pipeline import process_events
from issuer.models import Alert, Delivery
from tests.support.cloudtrail import cloudtrail_event, now


def run(det_sessionmaker, *raw, min_interval: float = 0.0):  # type: ignore[no-untyped-def]
    events = [parse_eventbridge_event(r, source="sqs") for r in raw]
    return process_events(
        det_sessionmaker,
        events,
        sink_names=["soc"],
        stale_after_seconds=3600,
        update_min_interval=min_interval,
    )


def deliveries(det_sessionmaker) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    with det_sessionmaker() as session:
        return [(d.revision, d.status) for d in session.scalars(select(Delivery).order_by(Delivery.id))]


def deliver_all(det_sessionmaker, tmp_path: Path) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    sink = JsonlSink({"type": "jsonl", "name": "soc", "path": str(tmp_path / "alerts.jsonl")})
    DeliveryWorker(det_sessionmaker, [sink]).run_once()
    path = tmp_path / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def use(cred, minutes: float, **kw):  # type: ignore[no-untyped-def]
    return cloudtrail_event(
        access_key_id=cred.access_key_id,
        user_name=cred.principal_name,
        when=now() - dt.timedelta(minutes=10 - minutes),
        event_name=kw.pop("event_name", "GetCallerIdentity"),
        event_source=kw.pop("event_source", "sts.amazonaws.com"),
        error_code=None,
        **kw,
    )


def test_new_facts_update_the_alert_and_repeats_do_not(det_sessionmaker, det_credential, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    run(det_sessionmaker, use(cred, 0))
    sent = deliver_all(det_sessionmaker, tmp_path)
    assert len(sent) == 1 and "update" not in sent[0]
    run(det_sessionmaker, use(cred, 1))  # the same call from the same place: nothing new
    assert deliveries(det_sessionmaker) == [(0, "delivered")]
    run(det_sessionmaker, use(cred, 2, event_name="ListBuckets", event_source="s3.amazonaws.com"))
    assert deliveries(det_sessionmaker) == [(0, "delivered"), (1, "pending")]
    sent = deliver_all(det_sessionmaker, tmp_path)
    assert sent[-1]["alert_id"] == sent[0]["alert_id"]  # the same alert...
    assert sent[-1]["update"]["revision"] == 1  # ...marked as an update, saying what changed
    assert sent[-1]["update"]["changes"] == ["new kind of calls: enumeration (s3:ListBuckets)"]
    run(det_sessionmaker, use(cred, 3, source_ip="192.0.2.44", user_agent="curl/8.4.0"))
    sent = deliver_all(det_sessionmaker, tmp_path)
    changes = sent[-1]["update"]["changes"]
    assert sent[-1]["update"]["revision"] == 2
    assert changes[0].startswith("new source address 192.0.2.44 (")
    assert changes[1] == "new user-agent family curl (curl)"
    with det_sessionmaker() as session:
        alert = session.scalars(select(Alert)).one()
        assert [u["revision"] for u in alert.summary["updates"]] == [1, 2]


def test_a_change_held_back_by_the_rate_limit_is_sent_when_due(
    det_sessionmaker, det_credential, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    run(det_sessionmaker, use(cred, 0), min_interval=300)
    deliver_all(det_sessionmaker, tmp_path)
    run(det_sessionmaker, use(cred, 1, source_ip="192.0.2.1"), min_interval=300)
    run(det_sessionmaker, use(cred, 2, source_ip="192.0.2.2"), min_interval=300)
    assert deliveries(det_sessionmaker) == [(0, "delivered")]  # held back, not dropped
    with det_sessionmaker() as session:
        due = session.scalars(select(Alert)).one().update_due_at
        assert due is not None
        assert promote_due_updates(session, ["soc"], due - dt.timedelta(seconds=1)) == []
        assert len(promote_due_updates(session, ["soc"], due + dt.timedelta(seconds=1))) == 1
    sent = deliver_all(det_sessionmaker, tmp_path)
    changes = sent[-1]["update"]["changes"]
    # Both addresses that arrived during the quiet period are in the one update.
    assert [c.split(" (")[0] for c in changes] == [
        "new source address 192.0.2.1",
        "new source address 192.0.2.2",
    ]


def test_an_undelivered_alert_carries_the_news_itself(det_sessionmaker, det_credential, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    run(det_sessionmaker, use(cred, 0))
    run(det_sessionmaker, use(cred, 1, event_name="ListBuckets", event_source="s3.amazonaws.com"))
    assert deliveries(det_sessionmaker) == [(0, "pending")]  # no separate update...
    [sent] = deliver_all(det_sessionmaker, tmp_path)
    assert sent["summary"]["event_names"] == [
        "sts.amazonaws.com:GetCallerIdentity",
        "s3.amazonaws.com:ListBuckets",
    ]


def test_a_resolved_alert_gets_no_update(det_sessionmaker, det_credential, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    run(det_sessionmaker, use(cred, 0))
    deliver_all(det_sessionmaker, tmp_path)
    with det_sessionmaker() as session:
        session.execute(update(Alert).values(status="resolved"))
        session.commit()
    run(det_sessionmaker, use(cred, 1, source_ip="192.0.2.1"))  # opens a new alert instead
    assert [r for r, _ in deliveries(det_sessionmaker)] == [0, 0]


def test_the_sinks_headline_says_update(det_sessionmaker, det_credential, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from issuer.alerts.sinks import _headline, _text_body

    cred = det_credential()
    run(det_sessionmaker, use(cred, 0))
    deliver_all(det_sessionmaker, tmp_path)
    run(det_sessionmaker, use(cred, 1, source_ip="192.0.2.1"))
    sent = deliver_all(det_sessionmaker, tmp_path)[-1]
    assert _headline(sent).startswith("[Tripkey HIGH UPDATE 1] Canary credential")
    assert "what changed: new source address 192.0.2.1" in _text_body(sent)
