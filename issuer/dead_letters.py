"""Dead letters: inputs the issuer could not parse or record, counted and kept for inspection.

One bad event must never hide the others, so a poison event is skipped, counted (ingest counters,
e.g. `sqs.malformed`, `ingest.failed`, `agent_events.rejected`) and kept here with the reason, where a
responder sees it (`GET /v1/dead-letters`, `tripkey dead-letters`). A table rather than the queue's
own dead-letter queue: the ingest endpoint, LookupEvents and agent uploads have no queue, and a
responder reads the issuer's API, not the AWS console.

What is kept is bounded: each payload is JSON text cut at MAX_PAYLOAD_CHARS, fields that may carry
credentials (CloudTrail `responseElements`, anything named like a secret or token) are removed, and
only the newest KEEP_ROWS rows are kept, so a flood of garbage cannot fill the database.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from issuer.detection.counters import bump_counter
from issuer.models import DeadLetter, IngestCounter, utcnow
from issuer.textsafe import bounded, storable_json

log = logging.getLogger(__name__)

MAX_PAYLOAD_CHARS = 64 * 1024
MAX_REASON_CHARS = 2000
KEEP_ROWS = 10_000
_SECRET_WORDS = ("secret", "sessiontoken", "session_token", "password", "privatekey")
REMOVED = "(removed)"


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        clean: dict[str, Any] = {}
        for key, item in value.items():
            lowered = str(key).lower()
            if lowered == "responseelements" or any(word in lowered for word in _SECRET_WORDS):
                clean[key] = REMOVED
            elif lowered == "cloudtrailevent" and isinstance(item, str):
                try:  # a LookupEvents item holds the record as a JSON string
                    clean[key] = _redact(json.loads(item))
                except (ValueError, RecursionError):
                    clean[key] = item
            else:
                clean[key] = _redact(item)
        return clean
    if isinstance(value, list):
        return [_redact(item) for item in value]
    return value


def payload_text(item: Any) -> str:
    """The item as JSON text a responder can read: ASCII-escaped, credentials removed, bounded."""
    try:
        text = json.dumps(_redact(storable_json(item)), sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = json.dumps(storable_json(repr(item)))
    if len(text) > MAX_PAYLOAD_CHARS:
        text = text[:MAX_PAYLOAD_CHARS] + f"...[+{len(text) - MAX_PAYLOAD_CHARS} chars]"
    return text


def keep(session: Session, source: str, reason: str, item: Any, *, device_id: str | None = None) -> None:
    """Add one dead letter (the caller commits) and drop the oldest beyond KEEP_ROWS."""
    session.add(
        DeadLetter(
            source=source[:32],
            device_id=device_id,
            reason=bounded(reason, MAX_REASON_CHARS),
            payload=payload_text(item),
            received_at=utcnow(),
        )
    )
    session.flush()
    newest = session.scalar(select(func.max(DeadLetter.id)))
    if newest is not None and newest > KEEP_ROWS:
        session.execute(delete(DeadLetter).where(DeadLetter.id <= newest - KEEP_ROWS))


def record(
    sessionmaker: Callable[[], Session],
    source: str,
    counter: str,
    items: Sequence[tuple[str, Any]],
    *,
    device_id: str | None = None,
) -> None:
    """Count `items` (reason, item) under `counter` and keep each one; one transaction."""
    if not items:
        return
    log.warning("%s: skipped %d event(s) (%s); kept as dead letters", source, len(items), counter)
    with sessionmaker() as session:
        bump_counter(session, counter, len(items))
        for reason, item in items:
            keep(session, source, reason, item, device_id=device_id)
        session.commit()


def list_dead_letters(session: Session, *, source: str | None = None, limit: int = 100) -> list[DeadLetter]:
    """The newest dead letters first (optionally of one source)."""
    query = select(DeadLetter)
    if source:
        query = query.where(DeadLetter.source == source)
    return list(session.scalars(query.order_by(DeadLetter.id.desc()).limit(limit)))


def all_counters(session: Session) -> dict[str, int]:
    """Every skipped-input counter: `<source>.malformed|failed|unmatched|time_clamped|...`."""
    rows: Iterable[IngestCounter] = session.scalars(select(IngestCounter).order_by(IngestCounter.name))
    return {row.name: int(row.value or 0) for row in rows}


def dead_letter_info(row: DeadLetter) -> dict[str, Any]:
    return {
        "dead_letter_id": row.id,
        "source": row.source,
        "device_id": row.device_id,
        "reason": row.reason,
        "received_at": row.received_at,
        "payload": row.payload,
    }


__all__ = [
    "KEEP_ROWS",
    "MAX_PAYLOAD_CHARS",
    "all_counters",
    "dead_letter_info",
    "keep",
    "list_dead_letters",
    "payload_text",
    "record",
]
