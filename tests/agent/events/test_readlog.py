"""The local read log: storage, queries, retention, concurrency, permissions, and no secrets."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from agent.events.model import ProcessInfo, ReadEvent
from agent.events.readlog import ReadLog, ReadLogError, format_jsonl, format_table, parse_since
from tests.support.paths import REPO_ROOT

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # the canary secret key: never stored
FILE_BODY = f"[prod-backup]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = {SECRET}\n"


def event(
    minutes_ago: float = 0, path: str = "/home/alice/.aws/credentials", pid: int = 100, **kw
) -> ReadEvent:
    fields = {
        "time": NOW - dt.timedelta(minutes=minutes_ago),
        "path": path,
        "pid": pid,
        "sensor": "audit",
        "ppid": 1,
        "exe": "/usr/bin/cat",
        "cmdline": ("cat", path),
        "uid": 1000,
        "user": "alice",
        "cwd": "/home/alice",
        "start_time": NOW - dt.timedelta(minutes=minutes_ago, seconds=1),
        "ancestors": (
            ProcessInfo(pid=1, exe="/sbin/init", cmdline=("/sbin/init",), uid=0),
            ProcessInfo(pid=9),
        ),
    }
    fields.update(kw)
    return ReadEvent(**fields)


def raw_bytes(db_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))


@pytest.fixture
def log(tmp_path: Path):
    with ReadLog(tmp_path / "state" / "reads.db") as opened:
        yield opened


def test_record_and_query_round_trip(log: ReadLog):
    event_id = log.record(event(), "shell_utility")
    assert uuid.UUID(event_id).version == 4
    (row,) = log.query()
    assert row == {
        "event_id": event_id,
        "time": "2026-11-22T12:00:00Z",
        "path": "/home/alice/.aws/credentials",
        "pid": 100,
        "ppid": 1,
        "exe": "/usr/bin/cat",
        "cmdline": ["cat", "/home/alice/.aws/credentials"],
        "uid": 1000,
        "user": "alice",
        "start_time": "2026-11-22T11:59:59Z",
        "cwd": "/home/alice",
        "access": "open",
        "sensor": "audit",
        "ancestors": [
            {"pid": 1, "exe": "/sbin/init", "cmdline": ["/sbin/init"], "uid": 0, "user": "root"},
            # exited before it could be read
            {"pid": 9, "exe": None, "cmdline": [], "uid": None, "user": None},
        ],
        "classification": "shell_utility",
        "provenance": None,
        "claimed_label": None,
        "trust_reason": None,
        "partial": False,
    }


# Schema 1 as the first Tripkey release created it (agent/events/readlog.py before provenance).
SCHEMA_V1 = """
CREATE TABLE reads (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, time TEXT NOT NULL,
    time_epoch REAL NOT NULL, path TEXT NOT NULL, pid INTEGER NOT NULL, ppid INTEGER, exe TEXT,
    cmdline TEXT NOT NULL, uid INTEGER, user TEXT, start_time TEXT, cwd TEXT, access TEXT NOT NULL,
    sensor TEXT NOT NULL, ancestors TEXT NOT NULL, classification TEXT NOT NULL);
CREATE INDEX reads_by_time ON reads (time_epoch);
CREATE INDEX reads_by_path ON reads (path, time_epoch);
INSERT INTO reads (event_id, time, time_epoch, path, pid, cmdline, access, sensor, ancestors, classification)
VALUES ('old-1', '2026-11-22T11:00:00+00:00', 1795345200.0, '/home/alice/.aws/credentials', 7,
        '["cat"]', 'open', 'audit', '[]', 'shell_utility');
PRAGMA user_version = 1;
"""


def test_a_schema_1_read_log_is_migrated_in_place_keeping_every_read(tmp_path: Path):
    path = tmp_path / "reads.db"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_V1)
    # `tripkey-agent reads` may run before the upgraded agent has opened the log: it reads schema 1.
    with ReadLog(path, readonly=True) as old:
        (row,) = old.query()
        assert row["event_id"] == "old-1" and row["provenance"] is None and row["claimed_label"] is None
    with ReadLog(path) as upgraded:
        from agent.events.trust import Classification

        upgraded.record(
            event(), Classification("masquerading", "secret scanners", "secret_scanner", "in /tmp")
        )
        rows = upgraded.query()
    assert [r["event_id"] for r in rows][1] == "old-1"
    assert (rows[0]["classification"], rows[0]["claimed_label"], rows[0]["trust_reason"]) == (
        "masquerading",
        "secret_scanner",
        "in /tmp",
    )
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    with ReadLog(path) as again:  # opening a migrated log again changes nothing
        assert len(again.query()) == 2


def test_query_newest_first_with_since_path_and_limit(log: ReadLog):
    for minutes, path in [(300, "/a"), (30, "/b"), (10, "/a"), (1, "/b")]:
        log.record(event(minutes, path=path, pid=minutes), "unknown")
    assert [r["pid"] for r in log.query()] == [1, 10, 30, 300]
    assert [r["pid"] for r in log.query(since=NOW - dt.timedelta(hours=1))] == [1, 10, 30]
    assert [r["pid"] for r in log.query(path="/a")] == [10, 300]
    assert [r["pid"] for r in log.query(since=NOW - dt.timedelta(minutes=20), path="/a", limit=5)] == [10]
    assert [r["pid"] for r in log.query(limit=2)] == [1, 10]
    with pytest.raises(ValueError, match="timezone-aware"):
        log.query(since=dt.datetime(2026, 1, 1))


def test_file_is_private_and_in_wal_mode(tmp_path: Path):
    path = tmp_path / "state" / "reads.db"
    with ReadLog(path) as opened:
        opened.record(event(), "unknown")
        for file in path.parent.glob("reads.db*"):  # the -wal and -shm files too
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_retention_by_age(tmp_path: Path):
    with ReadLog(tmp_path / "reads.db", retention_days=1) as opened:
        for minutes in (3 * 1440, 2 * 1440, 60, 0):
            opened.record(event(minutes, pid=minutes), "unknown")
        assert opened.prune(now=NOW) == 2
        assert [r["pid"] for r in opened.query()] == [0, 60]
        assert opened.prune(now=NOW) == 0


def test_retention_by_size_prunes_oldest_first(tmp_path: Path):
    path = tmp_path / "reads.db"
    with ReadLog(path, max_mb=0.25, prune_every=100) as opened:
        long_args = tuple(f"--arg-{i}-" + "x" * 80 for i in range(10))
        for i in range(3000):
            opened.record(event(minutes_ago=3000 - i, pid=i, cmdline=("tool", *long_args)), "unknown")
        opened.prune(now=NOW)
        kept = [r["pid"] for r in opened.query()]
        assert 0 < len(kept) < 3000
        assert kept == list(range(2999, 2999 - len(kept), -1))  # a contiguous run of the newest
        assert opened._used_bytes() <= 0.25 * 1024 * 1024
    assert path.stat().st_size < 0.6 * 1024 * 1024  # incremental vacuum gave the space back


def test_threads_write_while_another_process_reads(tmp_path: Path):
    path = tmp_path / "reads.db"
    reader_code = textwrap.dedent(
        f"""
        import time
        from agent.events.readlog import ReadLog
        log = ReadLog({str(path)!r}, readonly=True)
        seen = 0
        deadline = time.monotonic() + 60
        while seen < 800 and time.monotonic() < deadline:
            rows = log.query()
            assert all(r["classification"] == "unknown" for r in rows)
            seen = len(rows)
        print(seen)
        """
    )
    with ReadLog(path) as opened:
        reader = subprocess.Popen(
            [sys.executable, "-c", reader_code], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        errors: list[BaseException] = []

        def write(base: int) -> None:
            try:
                for i in range(200):
                    opened.record(event(pid=base + i), "unknown")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(n * 1000,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        out, err = reader.communicate(timeout=90)
        assert not errors
        assert reader.returncode == 0, err.decode()
        assert int(out) == 800
        assert opened.count() == 800
        assert len({r["event_id"] for r in opened.query()}) == 800


def test_readonly_open_never_writes_and_needs_an_existing_log(tmp_path: Path):
    with pytest.raises(ReadLogError, match="no read log at"):
        ReadLog(tmp_path / "missing.db", readonly=True)
    with ReadLog(tmp_path / "reads.db") as writer:
        writer.record(event(), "unknown")
    with ReadLog(tmp_path / "reads.db", readonly=True) as reader:
        assert len(reader.query()) == 1
        with pytest.raises(ReadLogError, match="read-only"):
            reader.record(event(), "unknown")


def test_file_contents_and_registered_secrets_are_never_stored(tmp_path: Path):
    path = tmp_path / "reads.db"
    planted = tmp_path / "credentials"
    planted.write_text(FILE_BODY)
    with ReadLog(path, secrets=[SECRET]) as opened:
        opened.record(event(path=str(planted)), "shell_utility")
        leaky = ("aws", "configure", "set", "aws_secret_access_key", SECRET)
        opened.record(
            event(
                cmdline=leaky, ancestors=(ProcessInfo(pid=5, exe="/bin/sh", cmdline=("sh", "-c", SECRET)),)
            ),
            "aws_tool",
        )
        rows = opened.query()
        assert rows[0]["cmdline"] == ["aws", "configure", "set", "aws_secret_access_key", "[REDACTED]"]
        assert rows[0]["ancestors"][0]["cmdline"] == ["sh", "-c", "[REDACTED]"]
        data = raw_bytes(path)
        assert b"aws_secret_access_key" in data  # the command line is stored ...
        assert SECRET.encode() not in data  # ... the secret never is
        assert b"AKIAEXAMPLE" not in data  # nor anything from the file's contents


def test_bad_database_and_parameters(tmp_path: Path):
    junk = tmp_path / "reads.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ReadLogError, match="cannot open the read log"):
        ReadLog(junk)
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(ReadLogError, match="newer Tripkey"):
        ReadLog(newer)
    with pytest.raises(ValueError, match="positive"):
        ReadLog(tmp_path / "x.db", max_mb=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", NOW - dt.timedelta(hours=24)),
        ("90m", NOW - dt.timedelta(minutes=90)),
        ("7d", NOW - dt.timedelta(days=7)),
        ("30s", NOW - dt.timedelta(seconds=30)),
        ("2w", NOW - dt.timedelta(weeks=2)),
        ("1.5h", NOW - dt.timedelta(minutes=90)),
        ("2026-11-01T00:00:00Z", dt.datetime(2026, 11, 1, tzinfo=dt.UTC)),
        ("2026-11-01T02:00:00+02:00", dt.datetime(2026, 11, 1, tzinfo=dt.UTC)),
        ("2026-11-01", dt.datetime(2026, 11, 1, tzinfo=dt.UTC)),
    ],
)
def test_parse_since(text, expected):
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "24", "h", "-5m", "5y", "2026-13-01"])
def test_parse_since_rejects_garbage(text):
    with pytest.raises(ValueError, match=r"invalid --since .*use a duration like 24h"):
        parse_since(text, now=NOW)


def test_table_and_json_lines(log: ReadLog):
    assert format_table([]) == "no reads recorded"
    log.record(event(1, pid=7, cmdline=("python3", "-c", "x" * 200)), "unknown")
    log.record(event(0, pid=8, user=None, uid=1234), "shell_utility")
    rows = log.query()
    table = format_table(rows).splitlines()
    assert table[0].split() == ["TIME", "(UTC)", "PID", "USER", "CLASS", "EXE", "CMDLINE", "PATH"]
    assert table[1].split()[:5] == ["2026-11-22", "12:00:00", "8", "1234", "shell_utility"]
    assert "python3 -c xxx" in table[2] and "…" in table[2] and "x" * 100 not in table[2]
    assert table[2].endswith("/home/alice/.aws/credentials")
    lines = format_jsonl(rows).splitlines()
    assert [json.loads(line)["pid"] for line in lines] == [8, 7]


def test_a_version_2_log_is_read_as_is_and_upgraded_in_place(tmp_path: Path) -> None:
    """An agent upgraded over an existing read log: nothing of it is lost, `partial` is added."""
    path = tmp_path / "reads.db"
    with ReadLog(path) as current:
        current.record(event(), "shell_utility")
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE reads DROP COLUMN partial")  # the layout Tripkey wrote before
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    with ReadLog(path, readonly=True) as old:
        (row,) = old.query()  # a reader of a not-yet-upgraded log sees every read
        assert row["partial"] is False and row["pid"] == 100
    with ReadLog(path) as upgraded:
        upgraded.record(event(pid=101, partial=True), "shell_utility")
        rows = {r["pid"]: r["partial"] for r in upgraded.query()}
    assert rows == {100: False, 101: True}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
