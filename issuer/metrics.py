"""Prometheus metrics of one issuer replica (served at /metrics by issuer/api/routers/metrics.py).

Two kinds:
* this replica's own counters and histograms: HTTP requests and latencies per route, read events
  accepted, AWS events processed, detection lag (AWS event time until this replica recorded it);
* fleet-wide gauges read from the database at scrape time, the same on every replica: alerts by
  status, deliveries by status, AWS events skipped (malformed, unmatched), events agents lost.

Each app has its own registry (no process-global state), so tests can run several issuers in one
process and every replica exposes only its own numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from issuer.models import Alert, Delivery, Device, IngestCounter, utcnow

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 21600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tripkey_http_requests",
            "HTTP requests answered by this replica",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tripkey_http_request_duration_seconds",
            "Time to answer an HTTP request, per route",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.agent_events = Counter(
            "tripkey_agent_events",
            "Read, tamper and self-report events uploaded by agents (duplicate = seen before)",
            ["result"],
            registry=self.registry,
        )
        self.detection_lag = Histogram(
            "tripkey_detection_lag_seconds",
            "AWS event time until this replica recorded the event, per detection source "
            "(includes the delay of CloudTrail and EventBridge; the SQS queue's lag is part of it)",
            ["source"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_agent_events(self, accepted: int, duplicates: int) -> None:
        self.agent_events.labels("accepted").inc(accepted)
        self.agent_events.labels("duplicate").inc(duplicates)

    def observe_aws_events(self, source: str, events: Sequence[Any]) -> None:
        now = utcnow()
        for event in events:
            when = getattr(event, "event_time", None)
            if when is not None:
                self.detection_lag.labels(source).observe(max(0.0, (now - when).total_seconds()))

    def watch(self, sessionmaker: Callable[[], Session], runner: Callable[[], Any]) -> None:
        """Add the fleet gauges (from the database) and the detection runner's counters."""
        self.registry.register(_FleetCollector(sessionmaker, runner))

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _FleetCollector(Collector):
    def __init__(self, sessionmaker: Callable[[], Session], runner: Callable[[], Any]) -> None:
        self.sessionmaker = sessionmaker
        self.runner = runner

    def collect(self) -> Iterator[Metric]:
        yield from self._runner_metrics()
        try:
            with self.sessionmaker() as session:
                yield from self._database_metrics(session)
        except Exception as exc:  # a scrape must answer even when the database does not
            log.warning("metrics: database gauges unavailable: %s", type(exc).__name__)
            up = GaugeMetricFamily("tripkey_database_up", "1 if the database answered the last scrape")
            up.add_metric([], 0)
            yield up

    def _runner_metrics(self) -> Iterator[Metric]:
        runner = self.runner()
        stats = getattr(runner, "last_stats", None)
        if stats is None:
            return
        processed = CounterMetricFamily(
            "tripkey_aws_events_processed",
            "AWS events processed by this replica's detection (duplicate = recorded before)",
            labels=["result"],
        )
        for result in ("matched", "unmatched", "duplicates", "malformed"):
            processed.add_metric([result.removesuffix("s")], getattr(stats, result, 0))
        yield processed
        opened = CounterMetricFamily("tripkey_alerts_opened", "Alerts opened by this replica")
        opened.add_metric([], len(getattr(stats, "alerts_opened", ())))
        yield opened

    def _database_metrics(self, session: Session) -> Iterator[Metric]:
        up = GaugeMetricFamily("tripkey_database_up", "1 if the database answered the last scrape")
        up.add_metric([], 1)
        yield up
        alerts = GaugeMetricFamily("tripkey_alerts", "Alerts in the database by status", labels=["status"])
        for status, count in session.execute(select(Alert.status, func.count()).group_by(Alert.status)):
            alerts.add_metric([str(status)], count)
        yield alerts
        deliveries = GaugeMetricFamily(
            "tripkey_deliveries", "Alert deliveries to sinks by sink and status", labels=["sink", "status"]
        )
        rows = session.execute(
            select(Delivery.sink, Delivery.status, func.count()).group_by(Delivery.sink, Delivery.status)
        )
        for sink, status, count in rows:
            deliveries.add_metric([str(sink), str(status)], count)
        yield deliveries
        skipped = GaugeMetricFamily(
            "tripkey_aws_events_skipped",
            "AWS events not turned into detections, per counter (source.malformed, source.unmatched...)",
            labels=["counter"],
        )
        for name, value in session.execute(select(IngestCounter.name, IngestCounter.value)):
            skipped.add_metric([str(name)], value)
        yield skipped
        lost = GaugeMetricFamily(
            "tripkey_agent_events_lost",
            "Events agents report they could not deliver (sum over devices of their last heartbeat)",
            labels=["reason"],
        )
        sums = session.execute(
            select(
                func.coalesce(func.sum(Device.sensor_lost_events), 0),
                func.coalesce(func.sum(Device.spool_dropped), 0),
                func.coalesce(func.sum(Device.spool_rejected), 0),
            )
        ).one()
        for reason, value in zip(("sensor_lost", "spool_dropped", "refused_by_issuer"), sums, strict=True):
            lost.add_metric([reason], int(value))
        yield lost
        devices = GaugeMetricFamily("tripkey_devices", "Enrolled devices")
        devices.add_metric([], session.scalar(select(func.count()).select_from(Device)) or 0)
        yield devices
