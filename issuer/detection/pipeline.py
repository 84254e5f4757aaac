"""From parsed AWS events to recorded detections and alerts (shared by every source)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Iterable

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from issuer.alerts.service import record_match
from issuer.detection.counters import bump_counter
from issuer.detection.events import AwsEvent
from issuer.detection.matching import match_event

log = logging.getLogger(__name__)
_RETRIES = 5


@dataclasses.dataclass
class ProcessStats:
    events: int = 0
    matched: int = 0
    unmatched: int = 0
    duplicates: int = 0
    malformed: int = 0
    alerts_opened: list[str] = dataclasses.field(default_factory=list)
    alerts_joined: list[str] = dataclasses.field(default_factory=list)

    def add(self, other: ProcessStats) -> None:
        for field in ("events", "matched", "unmatched", "duplicates", "malformed"):
            setattr(self, field, getattr(self, field) + getattr(other, field))
        self.alerts_opened.extend(other.alerts_opened)
        self.alerts_joined.extend(other.alerts_joined)


def count_malformed(sessionmaker: Callable[[], Session], source: str, amount: int) -> None:
    if amount <= 0:
        return
    log.warning("%s: skipped %d malformed event(s)", source, amount)
    with sessionmaker() as session:
        bump_counter(session, f"{source}.malformed", amount)
        session.commit()


def process_events(
    sessionmaker: Callable[[], Session],
    events: Iterable[AwsEvent],
    *,
    sink_names: Collection[str],
    stale_after_seconds: int,
    own_arns: Collection[str] = (),
    address_window_days: float = 30.0,
    update_min_interval: float = 300.0,
) -> ProcessStats:
    """Match and record each event in its own transaction; return what happened."""
    stats = ProcessStats()
    policy = {"address_window_days": address_window_days, "update_min_interval": update_min_interval}
    for event in events:
        stats.events += 1
        for attempt in range(_RETRIES):
            try:
                _process_one(sessionmaker, event, stats, sink_names, stale_after_seconds, own_arns, policy)
                break
            except OperationalError:
                # SQLite "database is locked" between replicas, or a PostgreSQL serialisation hiccup.
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
    return stats


def _process_one(
    sessionmaker: Callable[[], Session],
    event: AwsEvent,
    stats: ProcessStats,
    sink_names: Collection[str],
    stale_after_seconds: int,
    own_arns: Collection[str],
    policy: dict[str, float],
) -> None:
    with sessionmaker() as session:
        matches = match_event(session, event, own_arns=own_arns)
        if not matches:
            bump_counter(session, f"{event.source}.unmatched")
            session.commit()
            stats.unmatched += 1
            return
        outcome = []
        for match in matches:
            result = record_match(
                session,
                event,
                match,
                sink_names=sink_names,
                stale_after_seconds=stale_after_seconds,
                **policy,
            )
            outcome.append(result)
        session.commit()
    for result in outcome:
        if result.duplicate:
            stats.duplicates += 1
        else:
            stats.matched += 1
            (stats.alerts_opened if result.created else stats.alerts_joined).append(str(result.alert_id))
            log.info(
                "%s event %s %s alert %s",
                event.source,
                event.event_id,
                "opened" if result.created else "joined",
                result.alert_id,
            )
