"""Agent events (reads, tampering, self-reports), read queries and self-tests of a device.

Write functions commit. Events are idempotent by (device, event_id). A batch is stored in one
transaction; if the database refuses it for any reason but a concurrent duplicate, each event is
stored on its own (a savepoint each), so one poison event is counted (`agent_events.failed`), kept as a
dead letter and skipped while its neighbours are stored.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Select, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from issuer import dead_letters
from issuer.detection.counters import bump_counter
from issuer.errors import NotFound
from issuer.models import AgentEvent, Device, SelfTest, utcnow
from issuer.pagination import Page, SortKey, paginate
from issuer.registry import get_device, get_device_credential, is_plain_id
from issuer.tokens import new_id

log = logging.getLogger(__name__)


class Stored(NamedTuple):
    accepted: int
    duplicates: int
    failed: tuple[tuple[int, str], ...] = ()  # (position in `events`, why) of events not storable


# SQLite: rows per INSERT statement, a whole batch (the API takes at most 1000 events); 11 columns
# each stays below SQLite's bound-parameter limit (32,766).
INSERT_CHUNK = 1000


def _sqlite_insert() -> Any:
    """INSERT ... ON CONFLICT (device_id, event_id) DO NOTHING ... RETURNING event_id, for SQLite."""
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return (
        sqlite_insert(AgentEvent)
        .on_conflict_do_nothing(index_elements=["device_id", "event_id"])
        .returning(AgentEvent.event_id)
    )


def _row(device_id: str, event: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    detail = dict(event.get("detail") or {})
    read = detail if event["kind"] == "read" else {}
    return {
        "event_id": event["event_id"],
        "device_id": device_id,
        "kind": event["kind"],
        "time": event["time"],
        "path": event["path"],
        "pid": read.get("pid"),
        "exe": read.get("exe"),
        "user": read.get("user") or detail.get("user"),
        "classification": read.get("classification"),
        "detail": detail,
        "received_at": now,
    }


# PostgreSQL: one short statement with the whole batch as one JSON parameter, turned into rows by
# the server (json_to_recordset). A multi-row VALUES clause has 11 parameters per row and psycopg
# parses such a long query again for every batch (it caches only short ones); text arrays would be
# escaped element by element in Python. Either cost more than the insert itself.
_PG_INSERT = text(
    """
    INSERT INTO agent_events
        (device_id, event_id, kind, time, path, pid, exe, "user", classification, detail, received_at)
    SELECT :device_id, r.event_id, r.kind, r.time, r.path, r.pid, r.exe, r.reader, r.classification,
           r.detail, :received_at
    FROM json_to_recordset(CAST(:rows AS json)) AS r(
        event_id text, kind text, time timestamptz, path text, pid integer, exe text, reader text,
        classification text, detail json)
    ON CONFLICT (device_id, event_id) DO NOTHING
    RETURNING event_id
    """
)


def _insert_postgresql(session: Session, device_id: str, rows: list[dict[str, Any]], now: dt.datetime) -> int:
    batch = [
        {
            "event_id": row["event_id"],
            "kind": row["kind"],
            # As UTCDateTime stores times: aware, in UTC.
            "time": (
                row["time"].astimezone(dt.UTC) if row["time"].tzinfo else row["time"].replace(tzinfo=dt.UTC)
            ).isoformat(),
            "path": row["path"],
            "pid": row["pid"],
            "exe": row["exe"],
            "reader": row["user"],
            "classification": row["classification"],
            "detail": row["detail"],
        }
        for row in rows
    ]
    result = session.execute(
        _PG_INSERT, {"device_id": device_id, "received_at": now, "rows": json.dumps(batch)}
    )
    return len(result.all())


def store_events(session: Session, device_id: str, events: Sequence[Mapping[str, Any]]) -> Stored:
    """Store new events, skip known event_ids. Return (accepted, duplicates, failed).

    One multi-row INSERT ... ON CONFLICT DO NOTHING per chunk: the database skips what it already
    has (also what a concurrent upload of the same batch inserted a moment earlier), so there is no
    read-then-insert race and no per-row round trip. RETURNING lists what each statement inserted,
    so accepted + duplicates always equals the events sent.
    """
    # Only whether the device exists: its row (health JSON and all) is not needed to store events.
    if not is_plain_id(device_id) or session.scalar(select(Device.id).where(Device.id == device_id)) is None:
        raise NotFound(f"no device {device_id!r}")
    wanted: dict[str, Mapping[str, Any]] = {}
    for event in events:
        wanted.setdefault(event["event_id"], event)
    now = utcnow()
    rows = [_row(device_id, event, now) for event in wanted.values()]
    accepted = 0
    dialect = session.get_bind().dialect.name
    if rows and dialect not in ("postgresql", "sqlite"):
        raise NotImplementedError(f"agent events need SQLite or PostgreSQL, not {dialect}")
    try:
        if rows and dialect == "postgresql":
            accepted = _insert_postgresql(session, device_id, rows, now)
        elif rows:
            # One compiled single-row statement, executed for many rows: SQLAlchemy's
            # "insertmanyvalues" sends them as multi-row INSERTs (building a VALUES clause statement
            # by statement would cost more than the database's work).
            connection = session.connection().execution_options(insertmanyvalues_page_size=INSERT_CHUNK)
            # RETURNING names the rows actually inserted, so duplicates are counted exactly.
            accepted = len(connection.execute(_sqlite_insert(), rows).all())
        session.commit()
    except OperationalError:
        raise  # the database is not answering: the agent keeps its spool and retries
    except Exception:
        # One event the store cannot take must not cost its neighbours: each on its own, the bad
        # one dead-lettered and reported back by position.
        session.rollback()
        log.exception(
            "device %s: a batch of %d events was refused; storing them one by one", device_id, len(events)
        )
        return _store_one_by_one(session, device_id, events)
    return Stored(accepted, len(events) - accepted)


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
                session.add(AgentEvent(**_row(device_id, event, now)))
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


READ_ORDER = (SortKey(AgentEvent.time, descending=True), SortKey(AgentEvent.event_id, descending=True))


def _reads_query(
    device_id: str, since: dt.datetime | None, until: dt.datetime | None, path: str | None
) -> Select[Any]:
    query = select(AgentEvent).where(AgentEvent.device_id == device_id, AgentEvent.kind == "read")
    if since is not None:
        query = query.where(AgentEvent.time >= since)
    if until is not None:
        query = query.where(AgentEvent.time <= until)
    if path:
        query = query.where(AgentEvent.path == path)
    return query


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
    query = _reads_query(device_id, since, until, path)
    return list(
        session.scalars(query.order_by(AgentEvent.time.desc(), AgentEvent.event_id.desc()).limit(limit))
    )


def reads_page(
    session: Session,
    device_id: str,
    *,
    since: dt.datetime,
    path: str | None,
    since_text: str,
    limit: int,
    cursor: str | None,
) -> Page[AgentEvent]:
    """One page of a device's reads, newest first. The cursor is tied to the `since` text the client
    sent; a relative one (`24h`) is evaluated again for each page, so its oldest edge moves by the
    seconds the paging takes (the CLI sends an absolute time for exactly one window)."""
    get_device(session, device_id)
    return paginate(
        session,
        _reads_query(device_id, since, None, path),
        kind="reads",
        keys=READ_ORDER,
        key_of=lambda e: (e.time, e.event_id),
        limit=limit,
        cursor=cursor,
        filters={"device_id": device_id, "since": since_text, "path": path},
    )


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
