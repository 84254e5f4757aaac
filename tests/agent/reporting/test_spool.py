"""The SQLite upload spool: persistence across reopen, idempotent put, bound + drop accounting."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from agent.reporting.spool import Spool, spool_counts


def read(i: int) -> dict:
    return {
        "event_id": f"r-{i}",
        "kind": "read",
        "time": "2026-11-22T10:00:00Z",
        "path": "/p",
        "read": {"pid": i},
    }


def tamper(i: int) -> dict:
    return {
        "event_id": f"t-{i}",
        "kind": "tamper",
        "time": "2026-11-22T10:00:00Z",
        "path": "/p",
        "tamper": {"action": "section_removed", "detail": "", "replanted": True},
    }


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        for i in range(3):
            assert spool.put(read(i))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with Spool(path) as spool:
        assert spool.pending() == 3
        assert [e["event_id"] for e in spool.peek(10)] == ["r-0", "r-1", "r-2"]
        assert spool.peek(10)[0] == read(0)  # the body round-trips unchanged


def test_put_is_idempotent_by_event_id(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        assert spool.put(read(1)) is True
        assert spool.put(read(1)) is False
        assert spool.pending() == 1


def test_ack_removes_only_acknowledged(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        for i in range(5):
            spool.put(read(i))
        assert spool.ack(["r-1", "r-3", "unknown"]) == 2
        assert [e["event_id"] for e in spool.peek(10)] == ["r-0", "r-2", "r-4"]


def test_bound_drops_oldest_reads_first_and_counts_persistently(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path, max_events=3) as spool:
        spool.put(tamper(0))
        for i in range(4):
            spool.put(read(i))
        # 5 queued into 3 places: the two oldest READS went, the older tamper event stayed.
        assert [e["event_id"] for e in spool.peek(10)] == ["t-0", "r-2", "r-3"]
        assert spool.dropped() == 2
    with Spool(path, max_events=3) as spool:
        assert spool.dropped() == 2  # the counter survives a restart
    assert spool_counts(path) == {"pending": 3, "dropped": 2, "rejected": 0}


def test_only_tamper_events_left_then_oldest_goes(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_events=2) as spool:
        for i in range(3):
            spool.put(tamper(i))
        assert [e["event_id"] for e in spool.peek(10)] == ["t-1", "t-2"]
        assert spool.dropped() == 1


def test_discard_counts_rejected(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        spool.put(read(1))
        assert spool.discard(["r-1"]) == 1
        assert spool.rejected() == 1 and spool.pending() == 0


def test_bad_events_and_bounds_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Spool(tmp_path / "s.db", max_events=0)
    with Spool(tmp_path / "s.db") as spool, pytest.raises(ValueError, match="event_id"):
        spool.put({"kind": "read"})


def test_counts_of_missing_spool_are_none(tmp_path: Path) -> None:
    assert spool_counts(tmp_path / "none.db") is None


def test_concurrent_puts(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:

        def worker(base: int) -> None:
            for i in range(50):
                spool.put(read(base + i))

        threads = [threading.Thread(target=worker, args=(n * 1000,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert spool.pending() == 200
