"""The agent's local read log: every read of a planted file, the record of truth on the host.

SQLite in WAL mode (``<state_dir>/reads.db``, mode 0600): the sensor consumer thread writes, the
``tripkey-agent reads`` command reads from another process at the same time. One row per ReadEvent
(its fields, ancestors and the reader's provenance as JSON, the classification — with the label a
reader claimed when its provenance did not support it, and why — and a UUID event id). Never file contents: a
ReadEvent has none. Secrets on a reader's command line (``aws configure set aws_secret_access_key
X``, ``--password=X``, anything shaped like an AWS secret key) are already ``[REDACTED]`` in the
ReadEvent itself (agent/events/redact.py); on top, strings registered with
:meth:`ReadLog.set_secrets` (the canary secret keys) are replaced anywhere in a row before it is
written. Upload state is not here (the spool is separate).

Retention: rows older than ``retention_days`` go first, then the oldest rows until the data fits in
``max_mb``; pruning runs on open and every ``prune_every`` records. Queries return newest first
(what a responder wants to see on top).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.clock import from_iso, to_iso, utcnow
from agent.events.bounds import visible
from agent.events.model import READER_FIELDS, ReadEvent
from agent.events.secrets import KnownSecrets, known
from agent.events.trust import Classification

# Schema versions: 1 = the first; 2 adds the reader's provenance, claimed label and trust reason;
# 3 adds `partial` (context not all captured when the read happened). Added in place on open, so an
# upgraded agent keeps every read it logged before.
_SCHEMA_VERSION = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS reads (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT NOT NULL UNIQUE,
    time           TEXT NOT NULL,
    time_epoch     REAL NOT NULL,
    path           TEXT NOT NULL,
    pid            INTEGER NOT NULL,
    ppid           INTEGER,
    exe            TEXT,
    cmdline        TEXT NOT NULL,
    uid            INTEGER,
    user           TEXT,
    start_time     TEXT,
    cwd            TEXT,
    access         TEXT NOT NULL,
    sensor         TEXT NOT NULL,
    ancestors      TEXT NOT NULL,
    classification TEXT NOT NULL,
    provenance     TEXT,
    claimed_label  TEXT,
    trust_reason   TEXT,
    partial        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS reads_by_time ON reads (time_epoch);
CREATE INDEX IF NOT EXISTS reads_by_path ON reads (path, time_epoch);
"""
_COLUMNS = ("event_id", "time", "path", *READER_FIELDS, "classification", "claimed_label", "trust_reason")
# What each older schema lacks, and how it is added.
_MIGRATIONS = {
    2: (
        "ALTER TABLE reads ADD COLUMN provenance TEXT",
        "ALTER TABLE reads ADD COLUMN claimed_label TEXT",
        "ALTER TABLE reads ADD COLUMN trust_reason TEXT",
    ),
    3: ("ALTER TABLE reads ADD COLUMN partial INTEGER NOT NULL DEFAULT 0",),
}
_ADDED_IN = {"provenance": 2, "claimed_label": 2, "trust_reason": 2, "partial": 3}


def _one_format(value: Any) -> Any:
    """A stored time in the one format (RFC 3339, UTC, `Z`); anything else is left as it is."""
    if not isinstance(value, str):
        return value
    try:
        return to_iso(from_iso(value))
    except ValueError:
        return value


def _select_list(version: int) -> str:
    """The query's columns for a database at `version` (a newer column reads as NULL)."""
    return ", ".join(f"NULL AS {name}" if _ADDED_IN.get(name, 1) > version else name for name in _COLUMNS)


class ReadLogError(Exception):
    """The read log cannot be opened or written (bad path, corrupt or newer database)."""


class ReadLog:
    def __init__(
        self,
        path: Path,
        *,
        retention_days: float = 90,
        max_mb: float = 100,
        prune_every: int = 1000,
        secrets: Iterable[str] = (),
        readonly: bool = False,
    ) -> None:
        if retention_days <= 0 or max_mb <= 0:
            raise ValueError("retention_days and max_mb must be positive")
        self.path = Path(path)
        self.retention_days = retention_days
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.prune_every = prune_every
        self._secrets = KnownSecrets()
        self.set_secrets(secrets)
        self._lock = threading.Lock()
        self._since_prune = 0
        self.readonly = readonly
        self._version = _SCHEMA_VERSION
        if readonly:
            self._db = self._open_readonly()
        else:
            self._db = self._open()
            self.prune()

    def _open_readonly(self) -> sqlite3.Connection:
        """For `tripkey-agent reads` in another process: never creates, prunes or writes."""
        if not self.path.exists():
            raise ReadLogError(f"no read log at {self.path} (has the agent run on this host?)")
        try:
            db = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=10,
                check_same_thread=False,
                isolation_level=None,
            )
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise ReadLogError(f"cannot open the read log {self.path}: {exc}") from exc
        if not 1 <= version <= _SCHEMA_VERSION:
            db.close()
            raise ReadLogError(f"{self.path} has schema {version}, this Tripkey reads 1 to {_SCHEMA_VERSION}")
        self._version = version
        return db

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Create the file 0600 ourselves: SQLite gives the -wal/-shm files the database's mode.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.chmod(self.path, 0o600)
        try:
            db = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise ReadLogError(f"{self.path} was written by a newer Tripkey (schema {version})")
            if version == 0:
                db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # must precede the first table
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            if version == 0:
                db.executescript(_SCHEMA)
            else:
                db.execute("BEGIN IMMEDIATE")
                for step in range(version + 1, _SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS.get(step, ()):
                        db.execute(statement)
                # In the same transaction: a crash leaves either the old schema or the new one.
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                db.execute("COMMIT")
                db.executescript(_SCHEMA)  # indexes (IF NOT EXISTS)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            self._version = _SCHEMA_VERSION
        except sqlite3.Error as exc:
            raise ReadLogError(f"cannot open the read log {self.path}: {exc}") from exc
        return db

    def _writable(self) -> None:
        if self.readonly:
            raise ReadLogError(f"{self.path} was opened read-only")

    def set_secrets(self, secrets: Iterable[str]) -> None:
        """Strings that must never be stored (canary secret keys); longest first so none leaks."""
        self._secrets = known(secrets)

    def _scrub(self, text: str | None) -> str | None:
        return self._secrets.scrub_optional(text)

    def record(self, event: ReadEvent, classification: str | Classification | None) -> str:
        """Store one read with its label (a plain label, or a Classification with the claim and
        its evidence); returns its new event id (UUID4 string)."""
        self._writable()
        if not isinstance(classification, Classification):
            classification = Classification(classification or "unknown")
        event_id = str(uuid.uuid4())
        data = event.to_dict()
        provenance = (
            json.dumps(self._secrets.scrub_payload({"p": data["provenance"]})["p"])
            if data["provenance"] is not None
            else None
        )
        ancestors = [{**a, "cmdline": [self._scrub(arg) for arg in a["cmdline"]]} for a in data["ancestors"]]
        row = (
            event_id,
            to_iso(event.time),
            event.time.timestamp(),
            self._scrub(event.path),
            event.pid,
            event.ppid,
            self._scrub(event.exe),
            json.dumps([self._scrub(arg) for arg in event.cmdline]),
            event.uid,
            event.user,
            data["start_time"],
            self._scrub(event.cwd),
            event.access,
            event.sensor,
            json.dumps(ancestors),
            classification.label,
            provenance,
            classification.claimed,
            self._scrub(classification.reason),
            int(event.partial),
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO reads (event_id, time, time_epoch, path, pid, ppid, exe, cmdline, uid, user,"
                " start_time, cwd, access, sensor, ancestors, classification, provenance, claimed_label,"
                " trust_reason, partial) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            self._since_prune += 1
            due = self._since_prune >= self.prune_every
        if due:
            self.prune()
        return event_id

    def query(
        self, since: dt.datetime | None = None, path: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Reads newest first, optionally since a time (inclusive) and for one exact path."""
        where: list[str] = []
        args: list[object] = []
        if since is not None:
            if since.tzinfo is None:
                raise ValueError("since must be timezone-aware (UTC)")
            where.append("time_epoch >= ?")
            args.append(since.timestamp())
        if path is not None:
            where.append("path = ?")
            args.append(path)
        sql = f"SELECT {_select_list(self._version)} FROM reads"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY time_epoch DESC, seq DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for row in rows:
            item = dict(zip(_COLUMNS, row, strict=True))
            item["cmdline"] = json.loads(item["cmdline"])
            item["ancestors"] = json.loads(item["ancestors"])
            item["provenance"] = json.loads(item["provenance"]) if item["provenance"] else None
            item["partial"] = bool(item["partial"])
            # Rows written before the one time format (docs/schema.md) said "+00:00".
            item["time"] = _one_format(item["time"])
            item["start_time"] = _one_format(item["start_time"])
            out.append(item)
        return out

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM reads").fetchone()[0])

    def _used_bytes(self) -> int:
        pages, free, size = (
            self._db.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("page_count", "freelist_count", "page_size")
        )
        return (pages - free) * size

    def prune(self, now: dt.datetime | None = None) -> int:
        """Delete rows past retention (age, then size, oldest first); returns how many went."""
        self._writable()
        now = now or utcnow()
        cutoff = now.timestamp() - self.retention_days * 86400
        with self._lock:
            self._since_prune = 0
            deleted = self._db.execute("DELETE FROM reads WHERE time_epoch < ?", (cutoff,)).rowcount
            while self._used_bytes() > self.max_bytes:
                total = self._db.execute("SELECT COUNT(*) FROM reads").fetchone()[0]
                if total == 0:
                    break
                batch = max(1, total // 10)
                deleted += self._db.execute(
                    "DELETE FROM reads WHERE seq IN (SELECT seq FROM reads ORDER BY time_epoch, seq LIMIT ?)",
                    (batch,),
                ).rowcount
            if deleted:
                self._db.execute("PRAGMA incremental_vacuum").fetchall()
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ReadLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SINCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``"24h"``, ``"90m"``, ``"7d"``, ``"30s"``, ``"2w"`` ago, or an ISO 8601 time (UTC if no zone)."""
    now = now or utcnow()
    match = _SINCE_RE.match(text)
    if match:
        return now - dt.timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    try:
        parsed = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"invalid --since {text!r}: use a duration like 24h, 90m, 7d, 30s, 2w "
            "or an ISO 8601 time like 2026-11-01T00:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def _trim(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(rows: list[dict[str, Any]], cmdline_width: int = 60) -> str:
    """A readable table: time, pid, user, class, exe, cmdline (trimmed), path. A reader names itself,
    so every cell has its control and bidirectional characters spelled out (`visible`)."""
    if not rows:
        return "no reads recorded"
    header = ("TIME (UTC)", "PID", "USER", "CLASS", "EXE", "CMDLINE", "PATH")
    lines = [header]
    for row in rows:
        when = dt.datetime.fromisoformat(row["time"]).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        user = row.get("user") or ("?" if row.get("uid") is None else str(row["uid"]))
        cmd = " ".join(visible(str(arg)) for arg in row.get("cmdline") or [])
        lines.append(
            (
                when,
                str(row["pid"]),
                visible(user),
                visible(row.get("classification") or "unknown"),
                visible(row.get("exe") or "?"),
                _trim(cmd, cmdline_width),
                visible(row["path"]),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in lines
    )


def format_jsonl(rows: list[dict[str, Any]]) -> str:
    """One JSON object per line (stable keys), for scripts."""
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
