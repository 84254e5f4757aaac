"""Database leases so that several issuer replicas never run the same poller at the same time.

A lease is one PollerLock row. It is taken with a single atomic
``UPDATE ... WHERE name = :n AND (expires_at < :now OR holder = :me)``: the database decides who
wins, on SQLite and PostgreSQL alike, with no SELECT-then-UPDATE race. The row also carries the
poller's cursor, which is only written by the current holder.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from issuer.models import PollerLock, utcnow

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Lease:
    """A named lease held by `holder` for `ttl` seconds at a time."""

    def __init__(
        self,
        sessionmaker: Callable[[], Session],
        name: str,
        holder: str,
        ttl: float = 60.0,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.clock = clock

    def acquire(self) -> bool:
        """Take or renew the lease; True if we hold it now."""
        now = self.clock()
        with self.sessionmaker() as session:
            self._ensure_row(session)
            result = session.execute(
                update(PollerLock)
                .where(PollerLock.name == self.name)
                .where((PollerLock.expires_at < now) | (PollerLock.holder == self.holder))
                .values(holder=self.holder, expires_at=now + dt.timedelta(seconds=self.ttl))
            )
            session.commit()
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def release(self) -> None:
        with self.sessionmaker() as session:
            session.execute(
                update(PollerLock)
                .where(PollerLock.name == self.name, PollerLock.holder == self.holder)
                .values(expires_at=_EPOCH)
            )
            session.commit()

    def read_cursor(self) -> dict[str, Any]:
        with self.sessionmaker() as session:
            cursor = session.scalar(select(PollerLock.cursor).where(PollerLock.name == self.name))
            return dict(cursor or {})

    def write_cursor(self, cursor: dict[str, Any]) -> bool:
        """Store the cursor only if we still hold the lease (a lost lease must not rewind it)."""
        with self.sessionmaker() as session:
            result = session.execute(
                update(PollerLock)
                .where(PollerLock.name == self.name, PollerLock.holder == self.holder)
                .values(cursor=cursor)
            )
            session.commit()
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def _ensure_row(self, session: Session) -> None:
        if session.get(PollerLock, self.name) is not None:
            return
        try:
            with session.begin_nested():
                session.add(PollerLock(name=self.name, holder="", expires_at=_EPOCH, cursor={}))
        except IntegrityError:
            pass  # another replica inserted it; the UPDATE below decides who holds it
