"""The self-test mark: which reads are the trigger's own (pid + start time, or its children)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

from agent.events.model import ProcessInfo, ReadEvent
from agent.selftest_mark import MARK_FILE, MarkReader, marked_as_selftest, own_start_time

NOW = dt.datetime.now(dt.UTC)


def _read(pid: int, start: float | None, ancestors: tuple[int, ...] = ()) -> ReadEvent:
    return ReadEvent(
        time=NOW,
        path="/home/alice/.aws/credentials",
        pid=pid,
        sensor="fanotify",
        start_time=None if start is None else dt.datetime.fromtimestamp(start, dt.UTC),
        ancestors=tuple(ProcessInfo(pid=a) for a in ancestors),
    )


def test_the_trigger_and_its_children_are_the_self_test_and_no_one_else(tmp_path: Path) -> None:
    reader = MarkReader(tmp_path)
    me, started = os.getpid(), own_start_time()
    assert started is not None
    assert not reader.is_selftest(_read(me, started))  # no mark: nothing is the self-test
    with marked_as_selftest(tmp_path) as mark:
        assert (tmp_path / MARK_FILE).stat().st_mode & 0o777 == 0o600
        assert mark.pid == me
        assert reader.is_selftest(_read(me, started))
        assert reader.is_selftest(_read(me, None))  # a sensor that could not see the start time
        assert reader.is_selftest(_read(99999, started + 5, ancestors=(4000, me)))  # a child (aws)
        # The same pid with another start time is another process (pid reuse): not the self-test.
        assert not reader.is_selftest(_read(me, started - 3600))
        assert not reader.is_selftest(_read(me + 1, started))
    # After the trigger: a short grace for the service to record the read, then nothing.
    assert reader.is_selftest(_read(me, started))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    assert not reader.is_selftest(_read(me, started), now=later)


def test_a_damaged_or_expired_mark_marks_nothing(tmp_path: Path) -> None:
    reader = MarkReader(tmp_path)
    (tmp_path / MARK_FILE).write_text("{not json")
    assert not reader.is_selftest(_read(os.getpid(), None))
    with marked_as_selftest(tmp_path) as mark:
        expired = dataclasses.replace(mark, expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        (tmp_path / MARK_FILE).write_text(expired.to_json())
        assert not reader.is_selftest(_read(os.getpid(), None))
