"""The upload outbox: a SQLite spool in the state directory that survives restarts and outages.

Events (read, tamper, self_report, in the docs/api.md shape) wait here until the issuer
acknowledges them; only acknowledged events are removed, so a crash or an outage never loses one.

Bound and drop policy: at most `max_events` wait. When full, the OLDEST READ events are dropped
first (reads are also kept in the local read log, the record of truth on the host, so the newest
ones, closest to an incident, are the most useful to ship); tamper and self-report events are only
dropped when nothing but them is left. Every dropped event is counted in a persistent counter,
reported in the heartbeat as `spool_dropped` — nothing is lost silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    queued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_events_kind_seq ON events(kind, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SpoolError(Exception):
    """The spool database cannot be opened or written."""


class Spool:
    """Thread-safe persistent outbox. `put` never blocks on the network."""

    def __init__(
        self, path: str | os.PathLike[str], max_events: int = 100_000, *, read_only: bool = False
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.path = Path(path)
        self.max_events = max_events
        self._lock = threading.Lock()
        try:
            if read_only:
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            else:
                fresh = not self.path.exists()
                self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                if fresh:
                    os.chmod(self.path, 0o600)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from None

    # ------------------------------------------------------------------ writing

    def put(self, event: dict[str, Any]) -> bool:
        """Queue one event; False when its event_id is already queued (idempotent)."""
        event_id = event.get("event_id")
        kind = event.get("kind")
        if not isinstance(event_id, str) or not event_id or not isinstance(kind, str):
            raise ValueError("an event needs a string event_id and kind")
        body = json.dumps(event, separators=(",", ":"), sort_keys=True)
        with self._lock, self._transaction():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO events(event_id, kind, body, queued_at) VALUES (?, ?, ?, ?)",
                (event_id, kind, body, time.time()),
            )
            if cur.rowcount == 0:
                return False
            self._enforce_bound()
            return True

    def _enforce_bound(self) -> None:
        (count,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
        excess = count - self.max_events
        if excess <= 0:
            return
        dropped = self._db.execute(
            "DELETE FROM events WHERE seq IN "
            "(SELECT seq FROM events WHERE kind = 'read' ORDER BY seq LIMIT ?)",
            (excess,),
        ).rowcount
        if dropped < excess:
            dropped += self._db.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                (excess - dropped,),
            ).rowcount
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES ('dropped', ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (dropped,),
        )

    def ack(self, event_ids: Iterable[str]) -> int:
        """Remove events the issuer acknowledged; returns how many were removed."""
        ids = list(event_ids)
        removed = 0
        with self._lock, self._transaction():
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                removed += self._db.execute(f"DELETE FROM events WHERE event_id IN ({marks})", chunk).rowcount
        return removed

    def discard(self, event_ids: Iterable[str], *, counter: str = "rejected") -> int:
        """Remove events the issuer refused as invalid, counting them (never silent)."""
        ids = list(event_ids)
        removed = self.ack(ids)
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT INTO counters(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (counter, removed),
            )
        return removed

    # ------------------------------------------------------------------ reading

    def peek(self, limit: int = 500) -> list[dict[str, Any]]:
        """The oldest `limit` waiting events, in queue order (not removed)."""
        with self._lock:
            rows = self._db.execute("SELECT body FROM events ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [json.loads(body) for (body,) in rows]

    def pending(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def counter(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def dropped(self) -> int:
        return self.counter("dropped")

    def rejected(self) -> int:
        return self.counter("rejected")

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def spool_counts(path: str | os.PathLike[str]) -> dict[str, int] | None:
    """Pending/dropped/rejected counts for `status`, read-only; None when there is no spool yet."""
    if not Path(path).exists():
        return None
    try:
        spool = Spool(path, read_only=True)
    except SpoolError:
        return None
    try:
        return {"pending": spool.pending(), "dropped": spool.dropped(), "rejected": spool.rejected()}
    except sqlite3.Error:
        return None
    finally:
        spool.close()


__all__ = ["Spool", "SpoolError", "spool_counts"]
