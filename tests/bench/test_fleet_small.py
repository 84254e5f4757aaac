"""A small fleet simulation (bench/fleet) as a test: a few hundred simulated agents against two
issuer replicas behind a real HAProxy on a real PostgreSQL, and one replica killed with SIGKILL in
the middle. Asserted: no read event lost (agents retry; uploads are idempotent), the load balancer
routes around the dead replica (heartbeats and uploads end without an error), and each canary use
(delivered twice by SQS, as at-least-once queues do) makes exactly one alert, delivered once.
Timing is not asserted here: the figures belong to the benchmark (README, bench/RESULTS.md).
"""

from __future__ import annotations

import pytest

from bench.fleet.cluster import missing_parts
from bench.fleet.run import FleetOptions, run_fleet


@pytest.mark.postgres
def test_small_fleet_survives_a_killed_replica() -> None:
    missing = missing_parts()
    if missing:
        pytest.skip("; ".join(missing))
    options = FleetOptions(
        devices=400,
        duration=20,
        replicas=2,
        heartbeat_interval=8,
        event_interval=6,
        events_per_batch=5,
        mint_rate=1.0,
        canary_uses=3,
        kill_at=0.4,
        api_enrolls=20,
        workers=1,
        connections=32,
        drain_seconds=60,
        alert_wait=120,
    )
    report = run_fleet(options, log=lambda _m: None)
    routes = report["routes"]
    assert report["killed_at_s"] is not None
    for name in ("heartbeat", "events"):
        assert routes[name]["requests"] > 0
        assert routes[name]["errors"] == 0, (name, routes[name]["error_kinds"])
    assert routes["heartbeat"]["retries"] + routes["events"]["retries"] > 0, "the kill cut requests off"
    # A mint is never retried once sent (it could have minted): only one cut off by the kill may fail.
    assert routes["mint"]["errors"] <= 2, routes["mint"]["error_kinds"]
    events = report["events"]
    assert events["generated"] > 5000
    assert events["still_in_agent_spools"] == 0
    assert events["lost"] == 0 and events["stored"] == events["generated"]
    incidents = report["incidents"]
    assert incidents["canary_uses"] == 3
    assert incidents["alerts"] == 3, "one alert per incident, whatever replica saw which copy"
    assert incidents["alerts_with_more_than_one_event"] == 0, "the SQS duplicate is one detection"
    assert incidents["detections"] == 3
    assert incidents["alerts_not_delivered"] == 0
    assert incidents["alerts_delivered_more_than_once"] == 0 and incidents["webhook_deliveries"] == 3
    assert incidents["bad_signatures"] == 0
    assert report["enroll"]["errors"] == 0
