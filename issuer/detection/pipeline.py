"""From parsed AWS events to recorded detections and alerts (shared by every source).

Each event is recorded in its own transaction, so one that the database still refuses (whatever
the cause) is counted (`<source>.failed`), kept as a dead letter and skipped, and the events around
it alert. Only a database that is not answering at all (OperationalError, retried) stops a batch:
then nothing can be recorded and the caller's input must be kept for later (SQS redelivers it).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from issuer import dead_letters
from issuer.alerts.service import record_match
from issuer.detection.counters import bump_counter
from issuer.detection.events import AwsEvent, Rejected
from issuer.detection.matching import match_event
from issuer.timefmt import iso

log = logging.getLogger(__name__)
_RETRIES = 5


@dataclasses.dataclass
class ProcessStats:
    events: int = 0
    matched: int = 0
    unmatched: int = 0
    duplicates: int = 0
    malformed: int = 0  # items that could not be parsed (salvaged partial events included)
    failed: int = 0  # parsed, but the database refused them
    dead_lettered: int = 0  # events kept as dead letters (failed, or malformed naming no canary)
    alerts_opened: list[str] = dataclasses.field(default_factory=list)
    alerts_joined: list[str] = dataclasses.field(default_factory=list)

    def add(self, other: ProcessStats) -> None:
        for field in ("events", "matched", "unmatched", "duplicates", "malformed", "failed", "dead_lettered"):
            setattr(self, field, getattr(self, field) + getattr(other, field))
        self.alerts_opened.extend(other.alerts_opened)
        self.alerts_joined.extend(other.alerts_joined)


def count_malformed(sessionmaker: Callable[[], Session], source: str, rejected: Sequence[Rejected]) -> None:
    """Count the items that could not be parsed (`<source>.malformed`) and keep them as dead letters.

    A salvaged item (malformed, but naming an access key id) is not among them: it goes on as a
    partial event, counted as malformed when it is processed (see _process_one)."""
    dead_letters.record(sessionmaker, source, f"{source}.malformed", [(r.reason, r.item) for r in rejected])


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
    """Match and record each event in its own transaction; return what happened.

    Raises OperationalError only when the database keeps failing (then nothing more can be done)."""
    stats = ProcessStats()
    policy = {"address_window_days": address_window_days, "update_min_interval": update_min_interval}
    for event in events:
        stats.events += 1
        if event.malformed:
            stats.malformed += 1
        for attempt in range(_RETRIES):
            try:
                _process_one(sessionmaker, event, stats, sink_names, stale_after_seconds, own_arns, policy)
                break
            except OperationalError:
                # SQLite "database is locked" between replicas, or a PostgreSQL serialisation hiccup.
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
            except Exception as exc:  # this event is poison for the store: keep it, go on
                log.exception(
                    "%s event %s could not be recorded; kept as a dead letter", event.source, event.event_id
                )
                stats.failed += 1
                stats.dead_lettered += 1
                _keep_failed(sessionmaker, event, exc)
                break
    return stats


def _keep_failed(sessionmaker: Callable[[], Session], event: AwsEvent, exc: Exception) -> None:
    reason = f"could not be recorded: {type(exc).__name__}: {exc}"
    try:
        dead_letters.record(sessionmaker, event.source, f"{event.source}.failed", [(reason, _as_item(event))])
    except OperationalError:
        raise  # the database is gone: the caller keeps the input for later
    except Exception:
        log.exception("%s event %s: could not even keep it as a dead letter", event.source, event.event_id)


def _as_item(event: AwsEvent) -> dict[str, Any]:
    """What a dead letter keeps of a parsed event: its fields and the stored part of its record."""
    return {
        "event_id": event.event_id,
        "event_time": iso(event.event_time),
        "event_name": event.event_name,
        "event_source": event.event_source,
        "access_key_id": event.access_key_id,
        "caller_arn": event.caller_arn,
        "notes": list(event.notes),
        "record": event.raw,
    }


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
        if event.time_replaced:
            bump_counter(session, f"{event.source}.time_replaced")
        if event.malformed:
            bump_counter(session, f"{event.source}.malformed")
        matches = match_event(session, event, own_arns=own_arns)
        if not matches:
            if event.malformed:  # counted as malformed above: keep it for inspection
                dead_letters.keep(session, event.source, f"malformed: {event.malformed}", _as_item(event))
                stats.dead_lettered += 1
            else:
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
