"""Agent events (reads, tampering, self-reports), read queries and self-tests of a device.

Write functions commit. Events are idempotent by (device, event_id). A batch is stored in one
transaction; if the database refuses it for any reason but a concurrent duplicate, each event is
stored on its own (a savepoint each), so one poison event is counted (`agent_events.failed`), kept as a
dead letter and skipped while its neighbours are stored.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from issuer import dead_letters
from issuer.detection.counters import bump_counter
from issuer.models import AgentEvent, SelfTest, utcnow
from issuer.registry import get_device, get_device_credential
from issuer.tokens import new_id

log = logging.getLogger(__name__)


class Stored(NamedTuple):
    accepted: int
    duplicates: int
    failed: tuple[tuple[int, str], ...] = ()  # (position in `events`, why) of events not storable


def _row(device_id: str, event_id: str, event: Mapping[str, Any], now: dt.datetime) -> AgentEvent:
    detail = dict(event.get("detail") or {})
    read = detail if event["kind"] == "read" else {}
    return AgentEvent(
        event_id=event_id,
        device_id=device_id,
        kind=event["kind"],
        time=event["time"],
        path=event["path"],
        pid=read.get("pid"),
        exe=read.get("exe"),
        user=read.get("user") or detail.get("user"),
        classification=read.get("classification"),
        detail=detail,
        received_at=now,
    )


def store_events(session: Session, device_id: str, events: Sequence[Mapping[str, Any]]) -> Stored:
    """Store new events, skip known event_ids. Return (accepted, duplicates, failed)."""
    get_device(session, device_id)
    for attempt in range(3):
        wanted: dict[str, Mapping[str, Any]] = {}
        for event in events:
            wanted.setdefault(event["event_id"], event)
        known = (
            set(
                session.scalars(
                    select(AgentEvent.event_id).where(
                        AgentEvent.device_id == device_id, AgentEvent.event_id.in_(list(wanted))
                    )
                )
            )
            if wanted
            else set()
        )
        now = utcnow()
        for event_id, event in wanted.items():
            if event_id not in known:
                session.add(_row(device_id, event_id, event, now))
        try:
            session.commit()
        except IntegrityError:  # the same events uploaded concurrently: count again
            session.rollback()
            if attempt == 2:
                raise
            continue
        except OperationalError:
            raise  # the database is not answering: the agent keeps its spool and retries
        except Exception:
            session.rollback()
            log.exception(
                "device %s: a batch of %d events was refused; storing them one by one", device_id, len(events)
            )
            return _store_one_by_one(session, device_id, events)
        accepted = len(wanted) - len(known)
        return Stored(accepted, len(events) - accepted)
    raise AssertionError("unreachable")


def _store_one_by_one(session: Session, device_id: str, events: Sequence[Mapping[str, Any]]) -> Stored:
    accepted = duplicates = 0
    failed: list[tuple[int, str]] = []
    seen: set[str] = set()
    now = utcnow()
    for position, event in enumerate(events):
        event_id = event["event_id"]
        exists = session.scalar(
            select(AgentEvent.event_id).where(
                AgentEvent.device_id == device_id, AgentEvent.event_id == event_id
            )
        )
        if event_id in seen or exists is not None:
            duplicates += 1
            continue
        try:
            with session.begin_nested():
                session.add(_row(device_id, event_id, event, now))
        except OperationalError:
            raise
        except Exception as exc:
            reason = f"could not be stored: {type(exc).__name__}: {exc}"
            failed.append((position, reason[:500]))
            dead_letters.keep(session, "agent_events", reason, dict(event), device_id=device_id)
            continue
        seen.add(event_id)
        accepted += 1
    if failed:
        bump_counter(session, "agent_events.failed", len(failed))
    session.commit()
    return Stored(accepted, duplicates, tuple(failed))


def create_selftest(session: Session, device_id: str, credential_id: str, window_seconds: float) -> SelfTest:
    cred = get_device_credential(session, device_id, credential_id)
    now = utcnow()
    selftest = SelfTest(
        id=new_id("st_"),
        credential_id=cred.id,
        created_at=now,
        expires_at=now + dt.timedelta(seconds=window_seconds),
    )
    session.add(selftest)
    session.commit()
    return selftest


_RELATIVE = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, now: dt.datetime | None = None) -> dt.datetime:
    """`24h`, `30m`, `7d`, `2w`, `90s` before now, or an ISO 8601 time (naive = UTC)."""
    now = now or utcnow()
    match = _RELATIVE.match(value)
    if match:
        try:
            return now - dt.timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
        except OverflowError as exc:  # 999999w reaches back before year 1
            raise ValueError(f"since {value!r} reaches back further than datetime can go") from exc
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"since must be like 24h, 30m, 7d or an ISO 8601 time, got {value!r}") from exc


def query_reads(
    session: Session,
    device_id: str,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    path: str | None = None,
    limit: int = 1000,
) -> list[AgentEvent]:
    """Read events of a device, newest first."""
    get_device(session, device_id)
    query = select(AgentEvent).where(AgentEvent.device_id == device_id, AgentEvent.kind == "read")
    if since is not None:
        query = query.where(AgentEvent.time >= since)
    if until is not None:
        query = query.where(AgentEvent.time <= until)
    if path:
        query = query.where(AgentEvent.path == path)
    return list(session.scalars(query.order_by(AgentEvent.time.desc(), AgentEvent.event_id).limit(limit)))


def read_record(event: AgentEvent) -> dict[str, Any]:
    detail = dict(event.detail or {})
    detail.pop("time", None)
    detail.pop("path", None)
    return {
        **detail,
        "event_id": event.event_id,
        "device_id": event.device_id,
        "time": event.time,
        "path": event.path,
    }
