"""DB leases: one holder at a time, renewal, expiry, cursor writes only by the holder."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from issuer.detection.counters import bump_counter, read_counter
from issuer.detection.locks import Lease
from tests.support.detection import sessionmaker_for


@pytest.fixture
def det_sessionmaker(db_url: str):  # type: ignore[no-untyped-def]
    """This module runs on SQLite and on a real PostgreSQL server (tests/conftest.py `db_url`)."""
    engine, maker = sessionmaker_for(db_url)
    yield maker
    engine.dispose()


def test_one_holder_at_a_time(det_sessionmaker) -> None:  # type: ignore[no-untyped-def]
    a = Lease(det_sessionmaker, "poller", "replica-a", ttl=60)
    b = Lease(det_sessionmaker, "poller", "replica-b", ttl=60)
    assert a.acquire()
    assert not b.acquire()
    assert a.acquire(), "the holder renews"
    assert a.write_cursor({"until": "x"})
    assert not b.write_cursor({"until": "rewound"})
    assert b.read_cursor() == {"until": "x"}
    a.release()
    assert b.acquire()
    assert not a.acquire()


def test_expired_lease_is_taken_over(det_sessionmaker) -> None:  # type: ignore[no-untyped-def]
    clock = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]
    a = Lease(det_sessionmaker, "p", "a", ttl=30, clock=lambda: clock[0])
    b = Lease(det_sessionmaker, "p", "b", ttl=30, clock=lambda: clock[0])
    assert a.acquire()
    clock[0] += dt.timedelta(seconds=29)
    assert not b.acquire()
    clock[0] += dt.timedelta(seconds=2)
    assert b.acquire()
    assert not a.acquire()


def test_concurrent_acquire_has_one_winner(det_sessionmaker) -> None:  # type: ignore[no-untyped-def]
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def contend(name: str) -> None:
        lease = Lease(det_sessionmaker, "race", name, ttl=60)
        barrier.wait()
        results.append(lease.acquire())

    threads = [threading.Thread(target=contend, args=(f"r{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1


def test_counters(det_sessionmaker) -> None:  # type: ignore[no-untyped-def]
    with det_sessionmaker() as session:
        bump_counter(session, "ingest.malformed")
        bump_counter(session, "ingest.malformed", 2)
        bump_counter(session, "ingest.malformed", 0)
        session.commit()
        assert read_counter(session, "ingest.malformed") == 3
        assert read_counter(session, "nothing") == 0
