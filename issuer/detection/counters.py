"""Counters of skipped input (malformed, unmatched) kept in the database so nothing is silent."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from issuer.models import IngestCounter


def bump_counter(session: Session, name: str, amount: int = 1) -> None:
    """Add `amount` to counter `name` (created on first use). Caller commits."""
    if amount <= 0:
        return
    result = session.execute(
        update(IngestCounter).where(IngestCounter.name == name).values(value=IngestCounter.value + amount)
    )
    if result.rowcount:  # type: ignore[attr-defined]
        return
    try:
        with session.begin_nested():
            session.add(IngestCounter(name=name, value=amount))
    except IntegrityError:
        # Another replica created it between our UPDATE and INSERT.
        session.execute(
            update(IngestCounter).where(IngestCounter.name == name).values(value=IngestCounter.value + amount)
        )


def read_counter(session: Session, name: str) -> int:
    value = session.scalar(select(IngestCounter.value).where(IngestCounter.name == name))
    return int(value or 0)
