"""Simulated agents: one process drives a shard of the fleet with asyncio over pooled keep-alive
connections to the load balancer.

Each device heartbeats every `heartbeat_interval` and uploads a batch of read events every
`event_interval` (both from a random phase, so the fleet is spread evenly as a real one is), and the
shard mints now and then. Like the real agent (server_api_client): heartbeats and event uploads are
idempotent and retried on connection errors and 502/503/504 with backoff; an event batch that still
fails stays in the device's spool and goes out with its next batch; mints are never retried once
sent. Latency is measured from the moment a request was due (so a generator or server falling
behind shows up in the numbers instead of hiding, "coordinated omission").
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import json
import random
import time
from typing import Any

from bench.fleet.http import HttpError, HttpPool
from tests.support.fleet import health_document

RETRY_STATUSES = frozenset({502, 503, 504})
MAX_IN_FLIGHT = 4000


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    device_id: str
    token: str
    os: str
    version: str


@dataclasses.dataclass(frozen=True)
class ShardJob:
    host: str
    port: int
    devices: list[DeviceSpec]
    start_at: float  # wall clock (time.time()) when the steady traffic starts
    duration: float
    heartbeat_interval: float
    event_interval: float
    events_per_batch: int
    mint_rate: float  # per second, this shard
    connections: int
    drain_seconds: float
    seed: int
    grace_seconds: float = 60.0


@dataclasses.dataclass
class ShardResult:
    latencies: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # route -> seconds
    sent_at: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # route -> wall clock
    errors: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # route -> reason -> n
    retries: dict[str, int] = dataclasses.field(default_factory=dict)
    events_generated: int = 0
    events_acknowledged: int = 0
    events_in_spool: int = 0  # still undelivered after the drain: the agent would keep them
    mints_ok: int = 0
    late_starts: int = 0  # requests that started over 1 s after they were due
    cancelled_at_end: int = 0  # still queued in the generator a grace period after the run ended


def _read_event(device: int, seq: int, now: float) -> dict[str, Any]:
    return {
        "event_id": f"d{device}-e{seq}",
        "kind": "read",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "path": "/home/user0/.aws/credentials",
        "read": {
            "pid": 10_000 + seq,
            "ppid": 4200,
            "exe": "/usr/bin/python3.11",
            "cmdline": ["python3", "/usr/local/bin/aws", "s3", "ls"],
            "uid": 1000,
            "user": "user0",
            "access": "open",
            "sensor": "fanotify",
            "classification": "aws_tool",
            "ancestors": [{"pid": 4200, "exe": "/usr/bin/bash", "cmdline": ["bash"], "uid": 1000}],
        },
    }


class Shard:
    def __init__(self, job: ShardJob) -> None:
        self.job = job
        self.result = ShardResult()
        self.rng = random.Random(job.seed)
        self.pool = HttpPool(job.host, job.port, job.connections)
        self.spool: dict[int, list[dict[str, Any]]] = {}
        self.seq: dict[int, int] = {}
        # What the seeded fleet reported last time: a steady-state heartbeat changes nothing.
        self.heartbeats = {
            (os, version): json.dumps(health_document(os, True, 1, 1, 0, version)).encode()
            for os, version in {(d.os, d.version) for d in job.devices}
        }
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.tasks: set[asyncio.Task[None]] = set()

    def _note(self, route: str, due: float, ok: bool, reason: str = "") -> None:
        now = time.time()
        self.result.latencies.setdefault(route, []).append(now - due)
        self.result.sent_at.setdefault(route, []).append(due)
        if not ok:
            errors = self.result.errors.setdefault(route, {})
            errors[reason] = errors.get(reason, 0) + 1

    async def _call(
        self, route: str, path: str, token: str, body: Any, *, idempotent: bool, due: float
    ) -> tuple[bool, Any]:
        if time.time() - due > 1.0:
            self.result.late_starts += 1
        for attempt in range(4):
            try:
                status, data = await self.pool.request("POST", path, token=token, body=body)
            except HttpError as exc:
                reason, status, data = f"connection: {str(exc)[:60]}", None, None
            else:
                reason = f"http {status}"
            if status is not None and status < 400:
                self._note(route, due, True)
                return True, data
            retryable = idempotent and (status is None or status in RETRY_STATUSES)
            if not retryable or attempt == 3:
                self._note(route, due, False, reason)
                return False, data
            self.result.retries[route] = self.result.retries.get(route, 0) + 1
            # The agent's own schedule (server_api_client: backoff 0.5 s, doubling, jittered).
            await asyncio.sleep(0.5 * (2**attempt) * self.rng.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    async def heartbeat(self, index: int, due: float) -> None:
        device = self.job.devices[index]
        body = self.heartbeats[(device.os, device.version)]
        await self._call(
            "heartbeat",
            f"/v1/devices/{device.device_id}/heartbeat",
            device.token,
            body,
            idempotent=True,
            due=due,
        )

    async def upload(self, index: int, due: float, *, new: bool = True) -> None:
        device = self.job.devices[index]
        batch = self.spool.pop(index, [])
        if new:
            start = self.seq.get(index, 0)
            batch += [_read_event(index, start + i, due) for i in range(self.job.events_per_batch)]
            self.seq[index] = start + self.job.events_per_batch
            self.result.events_generated += self.job.events_per_batch
        if not batch:
            return
        self.spool[index] = batch  # until acknowledged: a cancelled upload leaves it in the spool
        ok, data = await self._call(
            "events",
            f"/v1/devices/{device.device_id}/events",
            device.token,
            {"events": batch},
            idempotent=True,
            due=due,
        )
        if ok and isinstance(data, dict):
            self.result.events_acknowledged += int(data.get("accepted", 0)) + int(data.get("duplicates", 0))
            if self.spool.get(index) is batch:
                del self.spool[index]

    async def mint(self, due: float) -> None:
        index = self.rng.randrange(len(self.job.devices))
        device = self.job.devices[index]
        body = {
            "local_user": f"user{self.rng.randrange(1000)}",
            "path": "/home/u/.aws/credentials",
            "profile": "prod-backup",
        }
        ok, _ = await self._call(
            "mint",
            f"/v1/devices/{device.device_id}/credentials",
            device.token,
            body,
            idempotent=False,
            due=due,
        )
        self.result.mints_ok += int(ok)

    def _spawn(self, func: Any, *args: Any) -> None:
        async def guarded() -> None:
            async with self.in_flight:
                await func(*args)  # made here: a task cancelled while queued leaves no coroutine behind

        task = asyncio.ensure_future(guarded())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self) -> ShardResult:
        job = self.job
        start, end = job.start_at, job.start_at + job.duration
        schedule: list[tuple[float, int, int]] = []  # (due, kind, device) kind 0 heartbeat, 1 events
        for index in range(len(job.devices)):
            schedule.append((start + self.rng.uniform(0, job.heartbeat_interval), 0, index))
            schedule.append((start + self.rng.uniform(0, job.event_interval), 1, index))
        next_mint = start + (self.rng.expovariate(job.mint_rate) if job.mint_rate > 0 else job.duration + 1)
        heapq.heapify(schedule)
        await asyncio.sleep(max(0.0, start - time.time()))
        while True:
            now = time.time()
            if now >= end:
                break
            while schedule and schedule[0][0] <= now:
                due, kind, index = heapq.heappop(schedule)
                if kind == 0:
                    self._spawn(self.heartbeat, index, due)
                    heapq.heappush(schedule, (due + job.heartbeat_interval, 0, index))
                else:
                    self._spawn(self.upload, index, due)
                    heapq.heappush(schedule, (due + job.event_interval, 1, index))
            if next_mint <= now:
                self._spawn(self.mint, next_mint)
                next_mint += self.rng.expovariate(job.mint_rate)
            wake = min(schedule[0][0] if schedule else end, next_mint, end)
            await asyncio.sleep(min(0.05, max(0.001, wake - time.time())))
        if self.tasks:
            # Requests still queued when the time is up get a bounded grace period; what is left is
            # cancelled and counted (event batches go back to their spool and are drained below).
            _, pending = await asyncio.wait(list(self.tasks), timeout=job.grace_seconds)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            self.result.cancelled_at_end = len(pending)
        await self._drain()
        self.pool.close()
        self.result.events_in_spool = sum(len(batch) for batch in self.spool.values())
        return self.result

    async def _drain(self) -> None:
        """What agents do after an outage: keep sending the spool until the issuer takes it."""
        deadline = time.time() + self.job.drain_seconds
        while self.spool and time.time() < deadline:
            pending = list(self.spool)
            await asyncio.gather(*(self.upload(index, time.time(), new=False) for index in pending))
            if self.spool:
                await asyncio.sleep(1.0)


def run_shard(job: ShardJob, results: Any) -> None:
    """Process entry point: run one shard and put its result (as JSON) on the `results` queue."""
    result = asyncio.run(Shard(job).run())
    results.put(json.dumps(dataclasses.asdict(result)))
