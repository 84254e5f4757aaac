"""One fleet simulation: start the cluster, seed the fleet, drive it, kill a replica, check the books.

The fleet is enrolled once: `devices` devices are written straight into the database exactly as
enrollment and their last heartbeat left them (tests/support/fleet.py), because enrolling 100,000
devices through the API would take the whole time budget and is not the steady state being
measured; `api_enrolls` more devices enroll through the load balancer to measure that route.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import secrets
import statistics
import threading
import time
from typing import Any

from bench.fleet.cluster import Cluster, cluster, database_facts
from bench.fleet.http import HttpError, HttpPool
from bench.fleet.loadgen import DeviceSpec, ShardJob, run_shard
from issuer.db import Database
from issuer.tokens import create_token, hash_secret
from tests.support.cloudtrail import cloudtrail_event
from tests.support.fleet import seed_devices


@dataclasses.dataclass(frozen=True)
class FleetOptions:
    devices: int = 100_000
    duration: float = 180.0
    replicas: int = 2
    heartbeat_interval: float = 300.0
    event_interval: float = 900.0
    events_per_batch: int = 5
    mint_rate: float = 0.5  # mints per second, whole fleet
    # moto's GetFederationToken answers one constant access key id (AKIAIOSFODNN7EXAMPLE), so
    # against moto the sts-federation backend can mint once; the issuer refuses the repeats (502).
    minting_backend: str = "iam-user"
    canary_uses: int = 5
    kill_at: float | None = 0.5  # kill -9 replica 1 at this fraction of the run; None: no kill
    api_enrolls: int = 200
    workers: int = 2  # load generator processes
    connections: int = 48  # keep-alive connections per load generator process
    drain_seconds: float = 120.0
    alert_wait: float = 120.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _enroll(
    url_host: str, port: int, token: str, count: int, canaries: int
) -> tuple[list[float], list[DeviceSpec], int]:
    """Enroll `count` devices through the load balancer; the first `canaries` of them plant a canary
    right away (so the run's canary uses always have keys to use)."""
    pool = HttpPool(url_host, port, 16)
    latencies: list[float] = []
    specs: list[DeviceSpec] = []
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        body = {"device_key": secrets.token_urlsafe(32), "hostname": f"api-enrolled-{i}", "os": "linux",
                "agent_version": "0.3.0", "users": ["user0"]}  # fmt: skip
        started = time.perf_counter()
        try:
            status, data = await pool.request("POST", "/v1/enroll", token=token, body=body)
        except HttpError:
            errors += 1
            return
        if status != 200:
            errors += 1
            return
        latencies.append(time.perf_counter() - started)
        specs.append(DeviceSpec(data["device_id"], data["device_token"], "linux", "0.3.0"))

    await asyncio.gather(*(one(i) for i in range(count)))
    for spec in specs[:canaries]:
        body = {"local_user": "user0", "path": "/home/user0/.aws/credentials", "profile": "prod-backup"}
        with contextlib.suppress(HttpError):
            await pool.request(
                "POST", f"/v1/devices/{spec.device_id}/credentials", token=spec.token, body=body
            )
    pool.close()
    return latencies, specs, errors


class _CanaryUses(threading.Thread):
    """Uses minted canaries during the run: each use is one CloudTrail record that EventBridge
    delivers to the queue, sent twice (SQS is at-least-once) — it must make exactly one alert."""

    def __init__(self, c: Cluster, session_factory: Any, times: list[float]) -> None:
        super().__init__(name="canary-uses", daemon=True)
        self.cluster = c
        self.session_factory = session_factory
        self.times = times
        self.sent: dict[str, float] = {}  # access key id -> time.monotonic() of the first send
        self.skipped = 0

    def run(self) -> None:
        import boto3
        from sqlalchemy import select

        from issuer.models import Credential

        sqs = boto3.client("sqs", endpoint_url=self.cluster.moto_url, region_name="us-east-1")
        for when in self.times:
            time.sleep(max(0.0, when - time.time()))
            with self.session_factory() as session:
                rows = session.execute(
                    select(Credential.access_key_id, Credential.principal_name)
                    .order_by(Credential.created_at.desc())
                    .limit(50)
                ).all()
            fresh = [row for row in rows if row[0] not in self.sent]
            if not fresh:
                self.skipped += 1
                continue
            key, principal = fresh[0]
            body = json.dumps(cloudtrail_event(access_key_id=key, user_name=principal))
            self.sent[key] = time.monotonic()
            for _ in range(2):
                sqs.send_message(QueueUrl=self.cluster.queue_url, MessageBody=body)


def run_fleet(options: FleetOptions, *, log: Any = print) -> dict[str, Any]:
    """Run the simulation; return the report (see report.py for its table)."""
    context = multiprocessing.get_context("spawn")
    with cluster(options.replicas, minting_backend=options.minting_backend) as c:
        database = Database(c.db_url)
        started = time.monotonic()
        with database.session() as session:
            seeded = seed_devices(
                session, options.devices, uniform=True, prefix="fleet", hash_token=hash_secret
            )
            enroll_token = create_token(session, "enroll")[1]
        seed_seconds = time.monotonic() - started
        log(
            f"seeded {options.devices} devices in {seed_seconds:.1f} s; {options.replicas} replicas + HAProxy"
        )
        enroll_latencies, enrolled, enroll_errors = asyncio.run(
            _enroll(c.lb_host, c.lb_port, enroll_token, options.api_enrolls, options.canary_uses)
        )
        devices = [DeviceSpec(d.device_id, d.token, d.os, d.agent_version) for d in seeded] + enrolled
        start_at = time.time() + 3.0
        shards = [devices[i :: options.workers] for i in range(options.workers)]
        results = context.Queue()
        workers = [
            context.Process(
                target=run_shard,
                args=(
                    ShardJob(
                        host=c.lb_host,
                        port=c.lb_port,
                        devices=shard,
                        start_at=start_at,
                        duration=options.duration,
                        heartbeat_interval=options.heartbeat_interval,
                        event_interval=options.event_interval,
                        events_per_batch=options.events_per_batch,
                        mint_rate=options.mint_rate / options.workers,
                        connections=options.connections,
                        drain_seconds=options.drain_seconds,
                        seed=index,
                    ),
                    results,
                ),
                name=f"fleet-shard-{index}",
            )
            for index, shard in enumerate(shards)
        ]
        for worker in workers:
            worker.start()
        use_times = [
            start_at + options.duration * (0.15 + 0.7 * i / max(1, options.canary_uses - 1))
            for i in range(options.canary_uses)
        ]
        uses = _CanaryUses(c, database.session, use_times)
        uses.start()
        killed_at = None
        if options.kill_at is not None:
            time.sleep(max(0.0, start_at + options.duration * options.kill_at - time.time()))
            victim = c.kill(0)
            killed_at = time.time() - start_at
            log(f"kill -9 {victim.name} (pid {victim.process.pid}) at {killed_at:.0f} s")
        shard_results = [json.loads(results.get(timeout=options.duration + options.drain_seconds + 600))
                         for _ in workers]  # fmt: skip
        for worker in workers:
            worker.join(timeout=60)
        uses.join(timeout=30)
        alert_latency = _wait_for_alerts(c, uses.sent, options.alert_wait)
        facts = database_facts(c.db_url, len(devices))
        report = _report(options, shard_results, facts, alert_latency, uses, c, database)
        report.update(
            seed_seconds=seed_seconds,
            killed_at_s=killed_at,
            enroll={
                "count": len(enroll_latencies),
                "errors": enroll_errors,
                "p50_ms": _percentile(enroll_latencies, 0.5) * 1000,
                "p99_ms": _percentile(enroll_latencies, 0.99) * 1000,
            },
        )
        database.dispose()
        return report


def _wait_for_alerts(c: Cluster, sent: dict[str, float], timeout: float) -> dict[str, float | None]:
    """Seconds from the first SQS send to the first signed webhook delivery naming that key."""
    deadline = time.monotonic() + timeout
    found: dict[str, float | None] = dict.fromkeys(sent)
    while time.monotonic() < deadline:
        for index, request in enumerate(list(c.receiver.requests)):
            with contextlib.suppress(ValueError, KeyError, TypeError, IndexError):
                alert = json.loads(request["body"])["alert"]
                key = alert["enrichment"]["credential"]["access_key_id"]
                if key in found and found[key] is None:
                    found[key] = c.receiver.received_at[index] - sent[key]
        if all(v is not None for v in found.values()):
            break
        time.sleep(0.5)
    return found


def _report(
    options: FleetOptions,
    shard_results: list[dict[str, Any]],
    facts: dict[str, Any],
    alert_latency: dict[str, float | None],
    uses: _CanaryUses,
    c: Cluster,
    database: Database,
) -> dict[str, Any]:
    from sqlalchemy import func, select

    from issuer.models import Alert, Detection

    routes: dict[str, dict[str, Any]] = {}
    for name in ("heartbeat", "events", "mint"):
        latencies = [x for r in shard_results for x in r["latencies"].get(name, [])]
        errors: dict[str, int] = {}
        for r in shard_results:
            for reason, n in r["errors"].get(name, {}).items():
                errors[reason] = errors.get(reason, 0) + n
        routes[name] = {
            "requests": len(latencies),
            "per_second": len(latencies) / options.duration,
            "p50_ms": _percentile(latencies, 0.5) * 1000,
            "p99_ms": _percentile(latencies, 0.99) * 1000,
            "max_ms": max(latencies, default=float("nan")) * 1000,
            "retries": sum(r["retries"].get(name, 0) for r in shard_results),
            "errors": sum(errors.values()),
            "error_kinds": errors,
        }
    generated = sum(r["events_generated"] for r in shard_results)
    in_spool = sum(r["events_in_spool"] for r in shard_results)
    with database.session() as session:
        alerts = session.execute(select(Alert.id, Alert.event_count).where(Alert.kind == "canary_use")).all()
        detections = session.scalar(select(func.count()).select_from(Detection))
    deliveries: dict[str, int] = {}
    for body in c.receiver.json_bodies():
        alert_id = body.get("alert", {}).get("alert_id")
        deliveries[alert_id] = deliveries.get(alert_id, 0) + 1
    latencies = [v for v in alert_latency.values() if v is not None]
    return {
        "options": dataclasses.asdict(options),
        "routes": routes,
        "total_per_second": sum(r["per_second"] for r in routes.values()),
        "late_starts": sum(r["late_starts"] for r in shard_results),
        "cancelled_at_end": sum(r.get("cancelled_at_end", 0) for r in shard_results),
        "events": {
            "generated": generated,
            "stored": facts["agent_events"],
            "still_in_agent_spools": in_spool,
            "lost": generated - in_spool - facts["agent_events"],
        },
        "incidents": {
            "canary_uses": len(uses.sent),
            "uses_skipped_no_credential": uses.skipped,
            "alerts": len(alerts),
            "alerts_with_more_than_one_event": sum(1 for _, n in alerts if n != 1),
            "detections": detections,
            "webhook_deliveries": sum(deliveries.values()),
            "alerts_delivered_more_than_once": sum(1 for n in deliveries.values() if n > 1),
            "bad_signatures": c.receiver.bad_signatures,
            "alert_latency_s": sorted(latencies),
            "alerts_not_delivered": sum(1 for v in alert_latency.values() if v is None),
            "alert_latency_median_s": statistics.median(latencies) if latencies else None,
        },
        "database": facts,
    }
