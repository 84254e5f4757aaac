"""Delivers alerts to sinks off the request path, with retries and backoff.

Every pending Delivery row is tried; each sink runs in its own thread, so a slow or failing sink
never delays the others. A failed attempt is retried after `backoff_seconds * 2**(attempts-1)` up to
the sink's `max_attempts`, then marked `failed`. The retry schedule lives in memory: after a restart
(or when another replica takes the delivery lease) pending rows are simply tried again.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from issuer.alerts.serialize import alert_to_dict
from issuer.alerts.sinks import DELIVERED, DeliveryFailed, Sink
from issuer.alerts.updates import update_of
from issuer.models import Alert, Delivery

log = logging.getLogger(__name__)


class DeliveryWorker:
    def __init__(self, sessionmaker: Callable[[], Session], sinks: list[Sink]) -> None:
        self.sessionmaker = sessionmaker
        self.sinks = {sink.name: sink for sink in sinks}
        self._not_before: dict[int, float] = {}
        self._lock = threading.Lock()

    def pending(self) -> dict[str, list[int]]:
        """Ids of pending deliveries that are due, by sink name."""
        now = time.monotonic()
        with self.sessionmaker() as session:
            rows = session.execute(
                select(Delivery.id, Delivery.sink).where(Delivery.status == "pending").order_by(Delivery.id)
            ).all()
        due: dict[str, list[int]] = defaultdict(list)
        with self._lock:
            for delivery_id, sink in rows:
                if self._not_before.get(delivery_id, 0.0) <= now:
                    due[sink].append(delivery_id)
        return due

    def run_once(self, still_leader: Callable[[], bool] = lambda: True) -> int:
        """Try every due delivery once; return how many attempts were made.

        `still_leader` is asked before each send (the runner renews its delivery lease there): slow
        sends can outlast the lease, and a replica that lost it must leave the rest to the new holder.
        """
        due = self.pending()
        if not due:
            return 0
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=len(due), thread_name_prefix="tk-sink"
        ) as pool:
            futures = [pool.submit(self._deliver_all, sink, ids, still_leader) for sink, ids in due.items()]
            return sum(future.result() for future in futures)

    def _deliver_all(self, sink_name: str, ids: list[int], still_leader: Callable[[], bool]) -> int:
        attempts = 0
        for done, delivery_id in enumerate(ids):
            if not still_leader():
                log.info(
                    "delivery lease lost; sink %s leaves %d delivery(ies) to its holder",
                    sink_name,
                    len(ids) - done,
                )
                break
            try:
                attempts += self._deliver_one(sink_name, delivery_id)
            except Exception:  # one bad row must not stop the others
                log.exception("delivery %s to sink %s crashed", delivery_id, sink_name)
        return attempts

    def _deliver_one(self, sink_name: str, delivery_id: int) -> int:
        sink = self.sinks.get(sink_name)
        with self.sessionmaker() as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None or delivery.status != "pending":
                return 0
            if sink is None:
                delivery.status = "failed"
                delivery.last_error = "sink is no longer configured"
                session.commit()
                return 0
            alert = session.get(Alert, delivery.alert_id)
            if alert is None:
                delivery.status = "failed"
                delivery.last_error = "alert no longer exists"
                session.commit()
                return 0
            payload = alert_to_dict(session, alert, with_deliveries=False)
            update = update_of(alert, delivery.revision)
            if update is not None:  # a later revision: the same alert, marked as an update
                payload["update"] = update

        error: str | None = None
        outcome = None
        try:
            outcome = sink.send(payload)
        except DeliveryFailed as exc:
            error = str(exc)
        except Exception as exc:  # a sink bug is a failed attempt, not a dead worker
            error = f"sink error ({type(exc).__name__})"
            log.exception("sink %s raised", sink_name)

        with self.sessionmaker() as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                return 1
            delivery.attempts = (delivery.attempts or 0) + 1
            if error is None:
                delivery.status = outcome or DELIVERED
                delivery.last_error = None
                delivery.delivered_at = dt.datetime.now(dt.UTC) if outcome == DELIVERED else None
                with self._lock:
                    self._not_before.pop(delivery_id, None)
            else:
                delivery.last_error = error
                if delivery.attempts >= sink.max_attempts:
                    delivery.status = "failed"
                    log.warning(
                        "alert %s: sink %s failed after %d attempts: %s",
                        delivery.alert_id,
                        sink_name,
                        delivery.attempts,
                        error,
                    )
                else:
                    with self._lock:
                        self._not_before[delivery_id] = time.monotonic() + sink.retry_delay(delivery.attempts)
                    log.info(
                        "alert %s: sink %s attempt %d failed (%s); will retry",
                        delivery.alert_id,
                        sink_name,
                        delivery.attempts,
                        error,
                    )
            session.commit()
        return 1

    def next_due_in(self) -> float | None:
        """Seconds until the earliest scheduled retry (None if nothing is scheduled)."""
        with self._lock:
            if not self._not_before:
                return None
            return max(0.0, min(self._not_before.values()) - time.monotonic())
