"""Ship the spool to the issuer in idempotent batches, and send heartbeats.

Only events the issuer acknowledged leave the spool (the issuer de-duplicates by event_id, so a
batch re-sent after a lost answer is harmless). An unreachable issuer means capped exponential
backoff, never a tight loop. The issuer stores each event of a batch on its own and lists the ones it
refuses, which are discarded and counted (`rejected`); a batch refused as a whole (an older issuer)
is bisected down to the offending event. Either way one bad event cannot wedge the outbox.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from agent.clock import to_iso, utcnow
from agent.reporting.payloads import heartbeat_payload
from agent.reporting.spool import Spool
from agent.state import StateStore
from server_api_client import AuthError, IssuerUnreachable, RejectedError, ServerError, TripkeyError

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

    def __init__(
        self, client: EventClient, spool: Spool, device_id: str, *, batch_size: int = BATCH_SIZE
    ) -> None:
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
        refused = set(getattr(answer, "rejected_ids", ()))
        for index, message in getattr(answer, "errors", ())[:5]:
            log.error("issuer refused event %d of a batch (%s); discarding it", index, message)
        if refused:
            result.rejected += self.spool.discard(refused)
        self.spool.ack(e["event_id"] for e in batch if e["event_id"] not in refused)


class Periodic:
    """Tracks when a periodic job is next due, with backoff after failures (monotonic clock)."""

    def __init__(
        self, interval: float, backoff: Backoff, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
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


class UploadWorker:
    """The service's uploader thread: flushes the spool when woken or due, heartbeats on schedule.

    Uses its own issuer client (a requests session per thread). A refused device token sets
    `reenroll` for the main thread and pauses uploads until it is cleared.
    """

    def __init__(
        self,
        client: Any,
        spool: Spool,
        store: StateStore,
        *,
        upload_interval: float,
        heartbeat_interval: float,
        health: Callable[[], Mapping[str, Any]],
        targets: Callable[[], list[dict[str, Any]]],
        stop: threading.Event,
        selfreport: Callable[[], Mapping[str, Any]] | None = None,
        wake: threading.Event,
        reenroll: threading.Event,
        clock: Callable[[], Any] = utcnow,
    ) -> None:
        self.client = client
        self.spool = spool
        self.store = store
        self.health = health
        self.targets = targets
        self.selfreport = selfreport
        self.stop = stop
        self.wake = wake
        self.reenroll = reenroll
        self.clock = clock
        self.uploader = Uploader(client, spool, store.state.device_id or "")
        self.upload = Periodic(upload_interval, Backoff(5.0, 300.0))
        self.beat = Periodic(heartbeat_interval, Backoff(5.0, 300.0))

    def run(self) -> None:
        while not self.stop.is_set():
            self.client.token = self.store.state.device_token
            self.uploader.device_id = self.store.state.device_id or ""
            if self.wake.is_set():
                self.wake.clear()
                self.upload.trigger_now()
            # This thread must outlive anything one pass throws at it (a full disk makes the spool
            # fail): without it no heartbeat would ever say what was lost.
            if self.upload.due() and not self.reenroll.is_set():
                self._survive(self.upload_once, self.upload, "upload")
            if self.beat.due() and not self.reenroll.is_set():
                self._survive(self.heartbeat_once, self.beat, "heartbeat")
            wait = min(self.upload.seconds_until_due(), self.beat.seconds_until_due(), 5.0)
            self.wake.wait(max(wait, 0.05))
        # Last chance to ship what is queued (a few seconds at most; the spool keeps the rest).
        self.client.retries = 0
        self.client.timeout = 3.0
        if self.spool.pending() and not self.reenroll.is_set():
            self.upload_once()
        self.client.close()

    def _survive(self, job: Callable[[], None], periodic: Periodic, what: str) -> None:
        try:
            job()
        except Exception:
            delay = periodic.failed()
            log.exception("%s failed; retrying in %.0f s", what, delay)

    def upload_once(self) -> None:
        try:
            result = self.uploader.flush()
            error = result.error
        except AuthError as exc:
            self._auth_failed(exc)
            self.upload.failed()
            return
        except TripkeyError as exc:
            error = str(exc)
        except (sqlite3.Error, OSError) as exc:  # the spool cannot be written (full disk): try later
            error = f"the spool cannot be updated: {exc}"
        if error:
            delay = self.upload.failed()
            log.warning(
                "upload failed (%s); %d event(s) wait in the spool; retry in %.0f s",
                error,
                self.spool.pending(),
                delay,
            )
        else:
            self.upload.succeeded()
        self.store.state.last_upload_error = error

    def heartbeat_once(self) -> None:
        state = self.store.state
        payload = heartbeat_payload(
            sensor_health=self.health(),
            targets=self.targets(),
            last_event_at=state.last_event_at,
            spool=self.spool,
            selfreport=self.selfreport() if self.selfreport is not None else None,
        )
        try:
            self.client.heartbeat(state.device_id or "", payload)
        except AuthError as exc:
            self._auth_failed(exc)
            self.beat.failed()
            return
        except TripkeyError as exc:
            state.last_heartbeat_error = str(exc)
            self.beat.failed()
            return
        state.last_heartbeat_at = to_iso(self.clock())
        state.last_heartbeat_error = None
        self.beat.succeeded()

    def _auth_failed(self, exc: AuthError) -> None:
        log.error("the issuer refused this device's token (%s); re-enrolling", exc)
        self.reenroll.set()


__all__ = [
    "BATCH_SIZE",
    "Backoff",
    "FlushResult",
    "Periodic",
    "UploadWorker",
    "Uploader",
]
