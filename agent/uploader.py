"""Ship the spool to the issuer in idempotent batches, and send heartbeats.

Only events the issuer acknowledged leave the spool (the issuer de-duplicates by event_id, so a
batch re-sent after a lost answer is harmless). An unreachable issuer means capped exponential
backoff, never a tight loop. A batch the issuer refuses as invalid is bisected down to the
offending event, which is discarded and counted (`rejected`) so one bad event cannot wedge the
outbox forever.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from server_api_client import IssuerUnreachable, RejectedError, ServerError, TripkeyError

from . import __version__
from .spool import Spool

log = logging.getLogger(__name__)

BATCH_SIZE = 500


class EventClient(Protocol):
    def upload_events(self, device_id: str, events: list[dict[str, Any]]) -> Any: ...
    def heartbeat(self, device_id: str, payload: Mapping[str, Any]) -> Any: ...


class Backoff:
    """Capped exponential backoff with jitter: initial, 2x initial, ... up to `cap` seconds."""

    def __init__(self, initial: float = 5.0, cap: float = 300.0, *, jitter: bool = True) -> None:
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.initial * (2 ** min(self.failures, 30)))
        self.failures += 1
        return delay * random.uniform(0.8, 1.2) if self.jitter else delay

    def reset(self) -> None:
        self.failures = 0


@dataclasses.dataclass
class FlushResult:
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Uploader:
    """Empties the spool into the issuer; call `flush()` from one thread (the service's uploader)."""

    def __init__(self, client: EventClient, spool: Spool, device_id: str, *, batch_size: int = BATCH_SIZE) -> None:
        self.client = client
        self.spool = spool
        self.device_id = device_id
        self.batch_size = batch_size

    def flush(self, max_batches: int | None = None) -> FlushResult:
        """Send waiting events until the spool is empty or the issuer fails; never raises TripkeyError."""
        result = FlushResult()
        batches = 0
        while max_batches is None or batches < max_batches:
            batch = self.spool.peek(self.batch_size)
            if not batch:
                break
            batches += 1
            try:
                self._send(batch, result)
            except (IssuerUnreachable, ServerError) as exc:
                result.error = str(exc)
                break
            except TripkeyError as exc:  # auth or protocol problems: the caller decides (re-enroll)
                result.error = str(exc)
                raise
        return result

    def _send(self, batch: list[dict[str, Any]], result: FlushResult) -> None:
        try:
            answer = self.client.upload_events(self.device_id, batch)
        except RejectedError as exc:
            if exc.status_code in (401, 403):
                raise
            if len(batch) == 1:
                log.error("issuer refused event %s (%s); discarding it", batch[0].get("event_id"), exc)
                result.rejected += self.spool.discard([batch[0]["event_id"]])
                return
            half = len(batch) // 2
            self._send(batch[:half], result)
            self._send(batch[half:], result)
            return
        result.sent += len(batch)
        result.accepted += int(getattr(answer, "accepted", 0))
        result.duplicates += int(getattr(answer, "duplicates", 0))
        self.spool.ack(e["event_id"] for e in batch)


def heartbeat_payload(
    *,
    sensor_health: Mapping[str, Any],
    targets: Iterable[Mapping[str, Any]],
    last_event_at: str | None,
    spool: Spool | None,
    agent_version: str = __version__,
) -> dict[str, Any]:
    """The heartbeat body exactly as docs/api.md defines it."""
    sensor = {
        "name": sensor_health.get("name"),
        "mode": sensor_health.get("mode"),
        "healthy": bool(sensor_health.get("healthy")),
        "error": sensor_health.get("error"),
        "lost_events": int(sensor_health.get("lost_events") or 0),
    }
    return {
        "agent_version": agent_version,
        "sensor": sensor,
        "targets": [
            {
                "path": t["path"],
                "local_user": t["local_user"],
                "profile": t["profile"],
                "access_key_id": t.get("access_key_id"),
                "planted": bool(t.get("planted")),
                "error": t.get("error"),
            }
            for t in targets
        ],
        "last_event_at": last_event_at,
        "spool_pending": spool.pending() if spool else 0,
        "spool_dropped": spool.dropped() if spool else 0,
    }


class Periodic:
    """Tracks when a periodic job is next due, with backoff after failures (monotonic clock)."""

    def __init__(self, interval: float, backoff: Backoff, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.backoff = backoff
        self.clock = clock
        self.due_at = clock()

    def due(self) -> bool:
        return self.clock() >= self.due_at

    def succeeded(self) -> None:
        self.backoff.reset()
        self.due_at = self.clock() + self.interval

    def failed(self) -> float:
        delay = min(self.backoff.next_delay(), max(self.interval, self.backoff.cap))
        self.due_at = self.clock() + delay
        return delay

    def trigger_now(self) -> None:
        self.due_at = self.clock()

    def seconds_until_due(self) -> float:
        return max(0.0, self.due_at - self.clock())


__all__ = ["BATCH_SIZE", "Backoff", "FlushResult", "Periodic", "Uploader", "heartbeat_payload"]
