"""Sinks against real receivers on loopback; the delivery worker's retries and isolation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from issuer.alerts.delivery import DeliveryWorker
from issuer.alerts.sinks import DELIVERED, SKIPPED, DeliveryFailed, SinkConfigError, build_sink, build_sinks
from issuer.detection.events import parse_eventbridge_event
from issuer.detection.pipeline import process_events
from issuer.models import Delivery
from tests.support.cloudtrail import cloudtrail_event
from tests.support.detection import ALERT


def test_webhook_is_signed(det_webhook) -> None:  # type: ignore[no-untyped-def]
    receiver = det_webhook(secret="s3cret")
    sink = build_sink({"type": "webhook", "name": "hook", "url": receiver.url, "secret": "s3cret"})
    assert sink.send(ALERT) == DELIVERED
    [request] = receiver.requests
    assert request["signature_ok"] is True
    assert json.loads(request["body"])["alert"]["alert_id"] == "alr_test"
    wrong = build_sink({"type": "webhook", "url": receiver.url, "secret": "not-it"})
    wrong.send(ALERT)
    assert receiver.bad_signatures == 1, "the receiver can tell a forged signature"


def test_slack_payload(det_webhook) -> None:  # type: ignore[no-untyped-def]
    receiver = det_webhook()
    build_sink({"type": "slack", "webhook_url": receiver.url}).send(ALERT)
    [body] = receiver.json_bodies()
    assert "lap-17" in body["blocks"][1]["text"]["text"]
    assert body["text"].startswith("[Tripkey HIGH]")


def test_slack_escapes_what_a_device_chose(det_webhook) -> None:  # type: ignore[no-untyped-def]
    """Hostnames, paths and command lines come from the device: in Slack's markup `<!channel>` would
    page everyone and `<https://x|text>` would plant a link in the alert."""
    receiver = det_webhook()
    evil = "<!channel> <https://evil.example|open runbook> & co"
    alert = {
        **ALERT,
        "title": f"Canary credential AKIAX used ({evil})",
        "enrichment": {**ALERT["enrichment"], "device": {"hostname": evil, "device_id": "dev_1"}},
    }
    build_sink({"type": "slack", "webhook_url": receiver.url}).send(alert)
    [body] = receiver.json_bodies()
    texts = [body["text"], body["blocks"][0]["text"]["text"], body["blocks"][1]["text"]["text"]]
    for text in texts:
        assert "<" not in text and ">" not in text, text
        assert "&lt;!channel&gt;" in text and "&amp; co" in text


def test_pagerduty_events_v2_and_selftest_skip(det_webhook) -> None:  # type: ignore[no-untyped-def]
    receiver = det_webhook(status=202)
    sink = build_sink({"type": "pagerduty", "routing_key": "R0UTING", "endpoint": receiver.url})
    assert sink.send(ALERT) == DELIVERED
    [body] = receiver.json_bodies()
    assert body["routing_key"] == "R0UTING" and body["event_action"] == "trigger"
    assert body["dedup_key"] == "tripkey-alr_test"
    assert body["payload"]["severity"] == "error" and body["payload"]["source"] == "lap-17"
    assert sink.send({**ALERT, "selftest": True}) == SKIPPED
    assert len(receiver.requests) == 1, "a self-test never pages"


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "out" / "alerts.jsonl"
    sink = build_sink({"type": "jsonl", "path": str(path)})
    sink.send(ALERT)
    sink.send({**ALERT, "alert_id": "alr_2"})
    lines = path.read_text().splitlines()
    # Exactly one alert per line, the alert itself: nothing wrapped around it.
    assert [json.loads(line) for line in lines] == [ALERT, {**ALERT, "alert_id": "alr_2"}]
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "config",
    [
        {"type": "webhook", "url": "http://x"},  # no secret
        {"type": "slack"},
        {"type": "pagerduty"},
        {"type": "smtp", "host": "h", "to": "x@y"},
        {"type": "jsonl"},
        {"type": "carrier-pigeon"},
        {"type": "jsonl", "path": "/tmp/x", "max_attempts": 0},
    ],
)
def test_bad_sink_config_is_refused(config) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SinkConfigError):
        build_sink(config)


def test_errors_never_carry_the_url() -> None:
    sink = build_sink(
        {"type": "slack", "url": "http://127.0.0.1:9/services/T000/B000/SECRETPATH", "timeout": 2}
    )
    with pytest.raises(DeliveryFailed) as info:
        sink.send(ALERT)
    assert "SECRETPATH" not in str(info.value)


def _open_alert(det_sessionmaker, det_credential, sinks):  # type: ignore[no-untyped-def]
    cred = det_credential()
    event = parse_eventbridge_event(cloudtrail_event(access_key_id=cred.access_key_id), source="sqs")
    stats = process_events(
        det_sessionmaker, [event], sink_names=[s.name for s in sinks], stale_after_seconds=3600
    )
    return stats.alerts_opened[0]


def _deliveries(det_sessionmaker) -> dict[str, Delivery]:  # type: ignore[no-untyped-def]
    with det_sessionmaker() as session:
        return {d.sink: d for d in session.scalars(select(Delivery))}


def test_failing_sink_does_not_block_others_and_retry_then_success(
    det_sessionmaker,
    det_credential,
    det_webhook,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    flaky = det_webhook(secret="k", fail_first=2)
    good = det_webhook(secret="k")
    sinks = build_sinks(
        [
            {"type": "webhook", "name": "flaky", "url": flaky.url, "secret": "k", "backoff_seconds": 0.05},
            {
                "type": "webhook",
                "name": "dead",
                "url": "http://127.0.0.1:9/nothing",
                "secret": "k",
                "max_attempts": 2,
                "backoff_seconds": 0.05,
                "timeout": 2,
            },
            {"type": "webhook", "name": "good", "url": good.url, "secret": "k"},
            {"type": "jsonl", "name": "file", "path": str(tmp_path / "a.jsonl")},
        ]
    )
    alert_id = _open_alert(det_sessionmaker, det_credential, sinks)
    worker = DeliveryWorker(det_sessionmaker, sinks)
    worker.run_once()
    rows = _deliveries(det_sessionmaker)
    assert rows["good"].status == "delivered" and rows["good"].attempts == 1
    assert rows["file"].status == "delivered"
    assert rows["flaky"].status == "pending" and rows["flaky"].last_error == "HTTP 503"
    assert rows["dead"].status == "pending" and rows["dead"].last_error == "connection failed"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        worker.run_once()
        rows = _deliveries(det_sessionmaker)
        if rows["flaky"].status != "pending" and rows["dead"].status != "pending":
            break
        time.sleep(0.05)
    assert (rows["flaky"].status, rows["flaky"].attempts, rows["flaky"].last_error) == ("delivered", 3, None)
    assert rows["flaky"].delivered_at is not None
    assert (rows["dead"].status, rows["dead"].attempts) == ("failed", 2)
    assert len(good.requests) == 1, "a delivered sink is not sent again"
    assert json.loads(good.requests[0]["body"])["alert"]["alert_id"] == alert_id
    assert worker.run_once() == 0


def test_retry_waits_for_backoff(det_sessionmaker, det_credential, det_webhook) -> None:  # type: ignore[no-untyped-def]
    flaky = det_webhook(secret="k", fail_first=1)
    sinks = build_sinks(
        [{"type": "webhook", "name": "flaky", "url": flaky.url, "secret": "k", "backoff_seconds": 30}]
    )
    _open_alert(det_sessionmaker, det_credential, sinks)
    worker = DeliveryWorker(det_sessionmaker, sinks)
    assert worker.run_once() == 1
    assert worker.run_once() == 0, "not retried before its backoff"
    assert 25 < (worker.next_due_in() or 0) <= 30
