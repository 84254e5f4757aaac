"""Runs every enabled detection source and the alert delivery worker.

Sources: the SQS queue (long poll, its own thread), CloudTrail LookupEvents per account and region
(every `lookup_interval`), IAM GetAccessKeyLastUsed (every `poll_interval`); deliveries run in a
worker woken as soon as an alert opens. Pollers and deliveries take DB leases (locks.Lease), so
several replicas can run side by side; detections are idempotent by event id.

`run_once()` does one pass of everything, synchronously: tests and the demo drive it directly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.orm import Session

from issuer import dead_letters
from issuer.alerts.delivery import DeliveryWorker
from issuer.alerts.sinks import Sink, build_sinks
from issuer.alerts.updates import promote_due_updates
from issuer.detection.events import AwsEvent, Rejected
from issuer.detection.last_used import LastUsedPoller
from issuer.detection.locks import Lease
from issuer.detection.lookup_events import LookupEventsPoller
from issuer.detection.pipeline import ProcessStats, count_malformed, process_events
from issuer.detection.sqs import SqsSource

log = logging.getLogger(__name__)
LEASE_TTL = 120.0
# Short, so a dead replica's pending deliveries move to another one quickly; renewed every loop.
DELIVERY_LEASE_TTL = 30.0
SQS_WAIT_SECONDS = 10  # long poll; also bounds how long stop() waits for the SQS thread


class DetectionRunner:
    def __init__(
        self,
        settings: Any,
        sessionmaker: Callable[[], Session],
        aws_gateway: Any,
        *,
        holder: str | None = None,
        sinks: list[Sink] | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.aws_gateway = aws_gateway
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.sinks = sinks if sinks is not None else build_sinks(list(settings.sinks))
        self.delivery = DeliveryWorker(sessionmaker, self.sinks)
        self._own_arns: set[str] | None = None
        self._stop = threading.Event()
        self._wake_delivery = threading.Event()
        self._threads: list[threading.Thread] = []
        self.last_stats = ProcessStats()
        self._stats_lock = threading.Lock()
        self.sqs_wait_seconds = SQS_WAIT_SECONDS
        # Told of every batch of parsed events (source, events): the app's metrics (detection lag).
        self.on_events: Callable[[str, list[AwsEvent]], None] | None = None

        self.sqs = (
            SqsSource(aws_gateway, settings.sqs_queue_url, self._handler("sqs"), self._give_up("sqs"))
            if settings.sqs_queue_url
            else None
        )
        accounts = self._account_names()
        self.lookup_pollers = [
            LookupEventsPoller(
                aws_gateway,
                self._lease(f"lookup_events:{account}:{region}"),
                self._handler("lookup_events"),
                account=account,
                region=region,
            )
            for account in accounts
            for region in settings.lookup_events_regions
        ]
        self.last_used = (
            LastUsedPoller(aws_gateway, sessionmaker, self._lease("last_used"), self._handler("last_used"))
            if settings.poll_interval > 0
            else None
        )
        self.delivery_lease = Lease(sessionmaker, "deliveries", self.holder, ttl=DELIVERY_LEASE_TTL)

    # ------------------------------------------------------------------ processing

    def _lease(self, name: str) -> Lease:
        return Lease(self.sessionmaker, name, self.holder, ttl=LEASE_TTL)

    def _account_names(self) -> list[str | None]:
        names = getattr(self.aws_gateway, "account_names", None)
        if callable(names):
            names = names()
        return list(names) if names else [None]

    def own_arns(self) -> set[str]:
        """The issuer's own AWS identities: its IAM calls on canary principals are not tampering."""
        if self._own_arns is None:
            arns: set[str] = set()
            for account in self._account_names():
                try:
                    arns.add(self.aws_gateway.client("sts", account=account).get_caller_identity()["Arn"])
                except Exception as exc:  # AWS, network or configuration: said loudly below
                    log.warning(
                        "cannot learn the issuer's own identity in account %s (%s): IAM calls "
                        "by the issuer on canaries may be reported as tampering",
                        account,
                        type(exc).__name__,
                    )
                    return arns  # not cached: retried next time
            self._own_arns = arns
        return self._own_arns

    def handle_events(
        self, events: list[AwsEvent], rejected: Sequence[Rejected] = (), *, source: str = "ingest"
    ) -> ProcessStats:
        """Record parsed events (count and keep the rejected ones); used by every source and the ingest
        route. Raises only when the database keeps failing."""
        count_malformed(self.sessionmaker, source, rejected)
        if self.on_events is not None and events:
            self.on_events(source, events)
        stats = process_events(
            self.sessionmaker,
            events,
            sink_names=[sink.name for sink in self.sinks],
            stale_after_seconds=self.settings.stale_after_seconds,
            own_arns=self.own_arns() if any(e.target_user_name for e in events) else (),
            address_window_days=getattr(self.settings, "device_address_window_days", 30.0),
            update_min_interval=getattr(self.settings, "alert_update_min_interval", 300.0),
        )
        stats.malformed += len(rejected)
        with self._stats_lock:
            self.last_stats.add(stats)
        if stats.alerts_opened or stats.alerts_joined:
            self._wake_delivery.set()  # a joined event may have made an update
        return stats

    def _handler(self, source: str) -> Callable[[list[AwsEvent], list[Rejected]], None]:
        def handle(events: list[AwsEvent], rejected: list[Rejected]) -> None:
            self.handle_events(events, rejected, source=source)

        return handle

    def _give_up(self, source: str) -> Callable[[str, str], None]:
        """Keep an input that keeps failing as a dead letter (`<source>.failed`)."""

        def give_up(body: str, reason: str) -> None:
            dead_letters.record(self.sessionmaker, source, f"{source}.failed", [(reason, body)])

        return give_up

    def deliver_pending(self) -> int:
        """Try due deliveries if we hold the delivery lease; return the attempts made."""
        if not self.delivery.sinks or not self.delivery_lease.acquire():
            return 0
        with self.sessionmaker() as session:  # updates the rate limit held back, now due
            promote_due_updates(session, list(self.delivery.sinks), dt.datetime.now(dt.UTC))
        return self.delivery.run_once(still_leader=self.delivery_lease.acquire)

    def wake(self) -> None:
        """Ask the delivery worker to run now (an alert was opened elsewhere, e.g. by ingest)."""
        self._wake_delivery.set()

    def run_once(self, *, sqs_wait_seconds: int = 0) -> dict[str, Any]:
        """One pass of every enabled source, then deliveries. Errors of a source are logged, not raised."""
        result: dict[str, Any] = {}
        sqs = self.sqs
        if sqs is not None:
            result["sqs"] = self._guard("sqs", lambda: sqs.poll_once(wait_seconds=sqs_wait_seconds))
        for poller in self.lookup_pollers:
            result[f"lookup_events:{poller.account}:{poller.region}"] = self._guard(
                "lookup_events", poller.poll_once
            )
        if self.last_used is not None:
            result["last_used"] = self._guard("last_used", self.last_used.poll_once)
        result["deliveries"] = self._guard("deliveries", self.deliver_pending)
        return result

    def _guard(self, what: str, func: Callable[[], Any]) -> Any:
        try:
            return func()
        except (ClientError, BotoCoreError) as exc:
            log.error("%s: AWS error: %s", what, exc)
        except Exception:
            log.exception("%s failed", what)
        return None

    # ------------------------------------------------------------------ threads

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        if self.sqs is not None:
            self._spawn("tk-sqs", self._sqs_loop)
        for poller in self.lookup_pollers:
            self._spawn(
                f"tk-lookup-{poller.region}",
                self._every(self.settings.lookup_interval, "lookup_events", poller.poll_once),
            )
        if self.last_used is not None:
            self._spawn(
                "tk-last-used",
                self._every(self.settings.poll_interval, "last_used", self.last_used.poll_once),
            )
        if self.sinks:
            self._spawn("tk-delivery", self._delivery_loop)
        log.info(
            "detection runner %s started: sqs=%s lookup=%d last_used=%s sinks=%s",
            self.holder,
            bool(self.sqs),
            len(self.lookup_pollers),
            bool(self.last_used),
            [s.name for s in self.sinks],
        )

    def stop(self, timeout: float = 25.0) -> None:
        """Ask every thread to stop and wait at most `timeout` seconds in all (not per thread)."""
        self._stop.set()
        self._wake_delivery.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        if stuck:
            # Daemon threads: they end with the process. Their polls are idempotent, so another
            # replica taking the released leases meanwhile does no harm.
            log.warning("detection threads still busy after %.0fs, not waited for: %s", timeout, stuck)
        self._threads = []
        for lease in [self.delivery_lease, *(p.lease for p in self.lookup_pollers)] + (
            [self.last_used.lease] if self.last_used else []
        ):
            with contextlib.suppress(Exception):
                lease.release()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _sqs_loop(self) -> None:
        sqs = self.sqs
        assert sqs is not None
        while not self._stop.is_set():
            received = self._guard("sqs", lambda: sqs.poll_once(wait_seconds=self.sqs_wait_seconds))
            if received is None:
                self._stop.wait(5.0)  # AWS or DB trouble: back off instead of spinning

    def _every(self, interval: float, what: str, func: Callable[[], Any]) -> Callable[[], None]:
        def loop() -> None:
            while not self._stop.is_set():
                self._guard(what, func)
                self._stop.wait(interval)

        return loop

    def _delivery_loop(self) -> None:
        while not self._stop.is_set():
            self._guard("deliveries", self.deliver_pending)
            due = self.delivery.next_due_in()
            timeout = 5.0 if due is None else min(5.0, max(due, 0.05))
            self._wake_delivery.wait(timeout)
            self._wake_delivery.clear()
