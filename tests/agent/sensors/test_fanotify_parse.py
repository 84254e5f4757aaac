"""The fanotify record parser and the sensor's per-record decisions, on crafted byte buffers.

Buffers are built with the layout of <linux/fanotify.h> (struct fanotify_event_metadata, 24
bytes, then optional info records; FAN_EVENT_INFO_TYPE_PIDFD = 4 carries an s32 pidfd). One test
also reads a real overflow record from the kernel so the crafted layout is checked against it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.sensors import _fanotify_abi as abi
from agent.sensors._fanotify import FanotifyNotifySensor, FanotifySensor
from agent.sensors._fanotify_books import OpenBooks
from tests.support.paths import requires_root


def test_several_events_in_one_buffer_with_pidfds() -> None:
    buf = (
        abi.pack_event(abi.FAN_OPEN_PERM, fd=7, pid=100, pidfd=8)
        + abi.pack_event(abi.FAN_CLOSE_NOWRITE, fd=9, pid=100, pidfd=10)
        + abi.pack_event(abi.FAN_OPEN_PERM, fd=11, pid=200, pidfd=12)
    )
    events = abi.parse_events(buf)
    assert [(e.mask, e.fd, e.pid, e.pidfd) for e in events] == [
        (abi.FAN_OPEN_PERM, 7, 100, 8),
        (abi.FAN_CLOSE_NOWRITE, 9, 100, 10),
        (abi.FAN_OPEN_PERM, 11, 200, 12),
    ]
    assert [e.permission for e in events] == [True, False, True]
    assert events[0].owned_fds() == [7, 8]


def test_overflow_record_has_no_fd() -> None:
    buf = abi.pack_event(abi.FAN_OPEN_PERM, fd=5, pid=1, pidfd=6) + abi.pack_event(
        abi.FAN_Q_OVERFLOW, fd=abi.FAN_NOFD, pid=0, pidfd=abi.FAN_NOPIDFD
    )
    first, overflow = abi.parse_events(buf)
    assert not first.overflow
    assert overflow.overflow and overflow.fd == abi.FAN_NOFD
    assert overflow.owned_fds() == []


def test_merged_mask_keeps_every_bit() -> None:
    (event,) = abi.parse_events(abi.pack_event(abi.FAN_OPEN | abi.FAN_CLOSE_NOWRITE, fd=3, pid=42))
    assert event.mask & abi.FAN_OPEN and event.mask & abi.FAN_CLOSE_NOWRITE
    assert not event.permission


@pytest.mark.parametrize("pidfd", [abi.FAN_NOPIDFD, abi.FAN_EPIDFD])
def test_missing_pidfd_is_not_an_fd_to_close(pidfd: int) -> None:
    (event,) = abi.parse_events(abi.pack_event(abi.FAN_OPEN_PERM, fd=3, pid=42, pidfd=pidfd))
    assert event.pidfd == pidfd
    assert event.owned_fds() == [3]


def test_no_info_record_means_pidfd_not_reported() -> None:
    (event,) = abi.parse_events(abi.pack_event(abi.FAN_OPEN_PERM, fd=3, pid=42))
    assert event.pidfd is abi.PIDFD_NOT_REPORTED


def test_unknown_and_zero_length_info_records_do_not_loop() -> None:
    unknown = struct.pack("=BBH4x", 99, 0, 8)
    pidfd = abi.INFO_PIDFD.pack(abi.FAN_EVENT_INFO_TYPE_PIDFD, 0, 8, 13)
    zero = struct.pack("=BBH4x", 1, 0, 0)
    for info, expected in ((unknown + pidfd, 13), (zero + pidfd, None)):
        record = abi.METADATA.pack(24 + len(info), 3, 0, 24, abi.FAN_OPEN_PERM, 4, 42) + info
        (event,) = abi.parse_events(record)
        assert event.pidfd == expected


def test_version_mismatch_is_an_error_that_keeps_parsed_events() -> None:
    good = abi.pack_event(abi.FAN_OPEN_PERM, fd=7, pid=1)
    bad = abi.pack_event(abi.FAN_OPEN_PERM, fd=8, pid=1, vers=2)
    with pytest.raises(abi.FanotifyAbiError, match="version 2") as info:
        abi.parse_events(good + bad)
    assert [e.fd for e in info.value.events] == [7]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "buf",
    [
        abi.pack_event(abi.FAN_OPEN, fd=1, pid=1)[:20],  # shorter than the metadata
        abi.METADATA.pack(100, 3, 0, 24, abi.FAN_OPEN, 1, 1),  # event_len past the buffer
        abi.METADATA.pack(16, 3, 0, 24, abi.FAN_OPEN, 1, 1),  # event_len < metadata_len (would loop)
        abi.METADATA.pack(24, 3, 0, 8, abi.FAN_OPEN, 1, 1),  # metadata_len too small
    ],
)
def test_truncated_or_inconsistent_records_are_errors(buf: bytes) -> None:
    with pytest.raises(abi.FanotifyAbiError):
        abi.parse_events(buf)


def test_empty_buffer_has_no_events() -> None:
    assert abi.parse_events(b"") == []


records = st.tuples(
    st.sampled_from([abi.FAN_OPEN_PERM, abi.FAN_CLOSE_NOWRITE, abi.FAN_OPEN | abi.FAN_CLOSE_NOWRITE]),
    st.integers(min_value=0, max_value=2**31 - 1),
    st.integers(min_value=1, max_value=2**22),
    st.one_of(st.none(), st.integers(min_value=-2, max_value=2**31 - 1)),
)


@given(st.lists(records, max_size=40))
def test_pack_parse_round_trip(items: list[tuple[int, int, int, int | None]]) -> None:
    buf = b"".join(abi.pack_event(mask, fd, pid, pidfd) for mask, fd, pid, pidfd in items)
    assert [(e.mask, e.fd, e.pid, e.pidfd) for e in abi.parse_events(buf)] == items


def test_response_layout() -> None:
    assert abi.allow_response(9) == struct.pack("=iI", 9, 1)


# ---- the sensor's decisions on crafted records (no kernel needed) -----------------------------


def _sensor(cls: type[FanotifySensor] = FanotifySensor) -> FanotifySensor:
    return cls(["/srv/x/credentials"], lambda event: None)


def test_overflow_is_counted_as_lost() -> None:
    sensor = _sensor()
    sensor._handle(abi.RawEvent(mask=abi.FAN_Q_OVERFLOW, fd=abi.FAN_NOFD, pid=0))
    sensor._handle(abi.RawEvent(mask=abi.FAN_Q_OVERFLOW, fd=abi.FAN_NOFD, pid=0))
    assert sensor.health().lost_events == 2
    assert not sensor.health().healthy  # not started


def test_dedupe_one_open_one_event() -> None:
    sensor = _sensor()
    path = "/srv/x/credentials"
    open_ = abi.RawEvent(mask=abi.FAN_OPEN_PERM, fd=3, pid=10)
    close = abi.RawEvent(mask=abi.FAN_CLOSE_NOWRITE, fd=4, pid=10)
    assert sensor._dedupe(open_, path) == "open"
    assert sensor._dedupe(close, path) is None  # balanced by the open we reported
    assert sensor._dedupe(close, path) == "close"  # a close whose open we never saw: keep the reader
    assert len(sensor._open_books) == 0


def test_dedupe_merged_open_close_is_one_open() -> None:
    sensor = _sensor(FanotifyNotifySensor)
    merged = abi.RawEvent(mask=abi.FAN_OPEN | abi.FAN_CLOSE_NOWRITE, fd=3, pid=10)
    assert sensor._dedupe(merged, "/srv/x/credentials") == "open"
    assert len(sensor._open_books) == 0


def test_dedupe_is_per_process() -> None:
    sensor = _sensor()
    path = "/srv/x/credentials"
    assert sensor._dedupe(abi.RawEvent(mask=abi.FAN_OPEN_PERM, fd=3, pid=10), path) == "open"
    assert sensor._dedupe(abi.RawEvent(mask=abi.FAN_OPEN_PERM, fd=3, pid=11), path) == "open"
    assert sensor._dedupe(abi.RawEvent(mask=abi.FAN_CLOSE_NOWRITE, fd=3, pid=11), path) is None
    assert sensor._dedupe(abi.RawEvent(mask=abi.FAN_CLOSE_WRITE, fd=3, pid=10), path) is None


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="budget"):
        FanotifySensor([], lambda event: None, budget=0)


@requires_root
def test_real_kernel_overflow_record_parses(tmp_path: Path) -> None:
    """Fill a real notification queue past fs.fanotify.max_queued_events and read it back."""
    limit = int(Path("/proc/sys/fs/fanotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"max_queued_events={limit} is too large to overflow quickly")
    fan_fd = abi.fanotify_init(abi.FAN_CLASS_NOTIF | abi.FAN_CLOEXEC | abi.FAN_NONBLOCK, abi.EVENT_F_FLAGS)
    try:
        abi.fanotify_mark(fan_fd, abi.FAN_MARK_ADD, abi.FAN_OPEN | abi.FAN_EVENT_ON_CHILD, str(tmp_path))
        target = tmp_path / "f"
        target.write_text("x")
        pid = os.fork()
        if pid == 0:  # a distinct pid per open would defeat merging; one child, distinct files
            try:
                for i in range(limit + 10):
                    (tmp_path / f"f{i}").touch()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        overflow = 0
        seen = 0
        while True:
            try:
                data = os.read(fan_fd, 4096)
            except BlockingIOError:
                break
            for event in abi.parse_events(data):
                seen += 1
                overflow += event.overflow
                for fd in event.owned_fds():
                    os.close(fd)
        assert overflow == 1
        assert seen >= limit
    finally:
        os.close(fan_fd)


def test_open_books_stay_bounded() -> None:
    books = OpenBooks(limit=2)
    assert books.note(1, "/p", abi.FAN_OPEN_PERM) == "open"  # a failed open: its close never comes
    assert books.note(2, "/p", abi.FAN_OPEN_PERM) == "open"
    assert books.note(3, "/p", abi.FAN_OPEN_PERM) == "open"  # full: the books start over
    assert len(books) == 1
    assert books.note(3, "/p", abi.FAN_CLOSE_NOWRITE) is None
    assert books.note(1, "/p", abi.FAN_CLOSE_NOWRITE) == "close"  # forgotten open: still reported
    assert books.note(4, "/p", abi.FAN_MODIFY) is None and len(books) == 0
