"""Acceptance: the fanotify sensor on the real kernel (root).

1,000 short-lived readers of mixed kinds and uids are all recorded with the right context; an
atomic replace stays watched; a stalled handler never hangs a reader (fail-open guard); our own
reads are not recorded; without privilege the sensor says exactly what is missing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import pwd
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.sensors import _procinfo as procinfo
from tests.support.paths import requires_root
from tests.support.sensors import NOBODY, FanCollector, fan_atomic_replace, fan_run_unprivileged

pytestmark = requires_root

SYSTEM_PYTHON = "/usr/bin/python3"
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _reader_argvs(path: str) -> list[tuple[list[str], int]]:
    """(argv as the reader sees it, uid) for every kind of reader; setpriv execs, keeping the pid."""
    kinds = [["cat", path], ["head", "-c", "10", path]]
    if os.access(SYSTEM_PYTHON, os.X_OK):
        kinds.append([SYSTEM_PYTHON, "-S", "-c", f"open({path!r}).read()"])
    return [(argv, 0) for argv in kinds] + [(argv, NOBODY) for argv in kinds]


def _spawn(argv: list[str], uid: int) -> subprocess.Popen[bytes]:
    full = argv if uid == 0 else [*AS_NOBODY, *argv]
    return subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _exe_of(argv0: str) -> str:
    return os.path.realpath(argv0 if os.path.isabs(argv0) else f"/usr/bin/{argv0}")


def test_thousand_short_lived_readers_all_recorded(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    sensor = fan_sensor_factory([fan_target], fan_collector)
    kinds = _reader_argvs(str(fan_target))
    total, concurrency = 1000, 8
    expected: dict[int, tuple[list[str], int]] = {}
    running: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    wall_start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)  # start_time has tick precision
    for i in range(total):
        argv, uid = kinds[i % len(kinds)] if i % 10 else kinds[(i // 10) % len(kinds)]
        proc = _spawn(argv, uid)
        expected[proc.pid] = (argv, uid)
        running.append(proc)
        if len(running) >= concurrency:
            _reap(running.pop(0))
    for proc in running:
        _reap(proc)
    elapsed = time.monotonic() - started
    wall_end = dt.datetime.now(dt.UTC)

    assert fan_collector.wait_for(lambda evs: len(evs) >= total, timeout=30), (
        f"only {len(fan_collector.events)} of {total} readers recorded; health={sensor.health()}"
    )
    time.sleep(0.2)  # anything extra (a duplicate) would arrive now
    by_pid: dict[int, list] = {}
    for event in fan_collector.events:
        by_pid.setdefault(event.pid, []).append(event)
    assert set(by_pid) == set(expected)
    me, my_exe, my_cmdline = (
        os.getpid(),
        os.path.realpath(sys.executable),
        tuple(procinfo.capture(os.getpid()).cmdline),
    )
    for pid, (argv, uid) in expected.items():
        (event,) = by_pid[pid]  # exactly one event per reader: deduped, none lost
        assert (event.sensor, event.access, event.path) == ("fanotify", "open", str(fan_target)), event
        assert event.exe == _exe_of(argv[0]), event
        assert event.cmdline == tuple(argv), event
        assert event.uid == uid and event.user == pwd.getpwuid(uid).pw_name, event
        assert event.ppid == me and event.cwd == os.getcwd(), event
        parent = event.ancestors[0]
        assert (parent.pid, parent.exe, parent.cmdline, parent.uid) == (me, my_exe, my_cmdline, 0), event
        assert event.ancestors[-1].pid == 1 and len({a.pid for a in event.ancestors}) == len(event.ancestors)
        assert event.start_time is not None and wall_start <= event.start_time <= event.time <= wall_end, (
            event
        )
    health = sensor.health()
    assert health.lost_events == 0 and health.context_missing == 0, health
    assert health.healthy and health.callback_errors == 0
    assert health.max_hold_ms > 0
    print(f"\n1000 readers in {elapsed:.1f} s; guard answered {health.guard_answered}; "
          f"longest hold {health.max_hold_ms:.1f} ms")  # fmt: skip


def _reap(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_atomic_replace_still_recorded(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    """The planter's replace: the new inode is marked (watch_new_file) before the rename."""
    sensor = fan_sensor_factory([fan_target], fan_collector)
    for round_ in range(3):
        fan_atomic_replace(
            fan_target,
            f"[prod-backup]\nround = {round_}\n",
            lambda fd: sensor.watch_new_file(str(fan_target), fd),  # type: ignore[attr-defined]
        )
        reader = subprocess.Popen(["cat", str(fan_target)], stdout=subprocess.PIPE)
        out, _ = reader.communicate(timeout=10)
        assert f"round = {round_}" in out.decode()
        assert fan_collector.wait_for(lambda evs, pid=reader.pid: any(e.pid == pid for e in evs), 5)
        (event,) = fan_collector.for_pid(reader.pid)
        assert event.path == str(fan_target) and event.exe == "/usr/bin/cat"


def test_reader_of_replaced_file_is_still_attributed(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    """A reader that opened the old version keeps it open across the replace: its close still counts."""
    fan_sensor_factory([fan_target], fan_collector)
    reader = subprocess.Popen(
        ["sh", "-c", f"exec 3<{fan_target}; read line; cat <&3"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert fan_collector.wait_for(lambda evs: any(e.pid == reader.pid for e in evs), 5)
    fan_atomic_replace(fan_target, "[prod-backup]\nnew = 1\n")
    out, _ = reader.communicate(b"go\n", timeout=10)
    assert b"[prod-backup]" in out and b"new" not in out  # it read the old inode
    events = fan_collector.for_pid(reader.pid)
    assert [e.access for e in events] == ["open"]
    assert events[0].path == str(fan_target)


def test_stalled_capture_fails_open_within_budget(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    release = threading.Event()

    def stalled_capture(pid: int, pidfd: int | None) -> procinfo.ProcContext:
        release.wait(5)
        return procinfo.ProcContext(pid=pid, gone=True)

    sensor = fan_sensor_factory([fan_target], fan_collector, capture=stalled_capture, capture_workers=1)
    try:
        for _ in range(2):  # the second reader's event waits behind the stalled one: guard too
            started = time.monotonic()
            subprocess.run(["cat", str(fan_target)], capture_output=True, check=True, timeout=10)
            assert time.monotonic() - started < 2, "reader hung behind a stalled capture"
        assert sensor.health().guard_answered == 2
    finally:
        release.set()
    assert fan_collector.wait_for(lambda evs: len(evs) == 2, 5)  # still reported, without context
    time.sleep(0.1)
    health = sensor.health()
    assert health.guard_answered == 2 and health.response_errors == 0  # answered exactly once


def _fds_open_on(path: Path) -> int:
    """Open file descriptions of `path` in this process (the marks' O_PATH pins do not count)."""
    count = 0
    for entry in os.scandir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(entry.path) == str(path):
                info = Path(f"/proc/self/fdinfo/{entry.name}").read_text()
                flags = int(next(x for x in info.splitlines() if x.startswith("flags:")).split()[1], 8)
                count += not flags & os.O_PATH
    return count


def test_stop_behind_a_capture_that_never_returns_closes_every_queued_record(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    release = threading.Event()

    def stuck_capture(pid: int, pidfd: int | None) -> procinfo.ProcContext:
        release.wait(30)  # outlives stop(): the worker is abandoned
        return procinfo.ProcContext(pid=pid, gone=True)

    sensor = fan_sensor_factory([fan_target], fan_collector, capture=stuck_capture, capture_workers=1)
    try:
        for _ in range(4):  # one held by the stuck worker, three queued behind it
            subprocess.run(["cat", str(fan_target)], capture_output=True, check=True, timeout=10)
        assert _fds_open_on(fan_target) == 4  # each record owns an fd of the file until finished
        sensor.stop()  # type: ignore[attr-defined]
        # The three queued records were answered, closed and counted; only the stuck one remains.
        assert _fds_open_on(fan_target) == 1
        assert sensor.health().lost_events == 3  # type: ignore[attr-defined]
    finally:
        release.set()


def test_stalled_callback_never_holds_a_reader(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    release = threading.Event()

    def stalled_callback(event: object) -> None:
        release.wait(5)  # "sleeps 5 s" unless the test is done earlier
        fan_collector(event)  # type: ignore[arg-type]

    sensor = fan_sensor_factory([fan_target], stalled_callback)
    try:
        pids = []
        for _ in range(3):
            started = time.monotonic()
            reader = subprocess.Popen(["cat", str(fan_target)], stdout=subprocess.DEVNULL)
            assert reader.wait(timeout=10) == 0
            assert time.monotonic() - started < 2, "reader hung behind a stalled callback"
            pids.append(reader.pid)
        # The callback runs after the allow, so the guard was not even needed.
        assert sensor.health().guard_answered == 0
    finally:
        release.set()
    assert fan_collector.wait_for(lambda evs: len(evs) == 3, 10)
    assert [e.pid for e in fan_collector.events] == pids
    assert all(e.exe == "/usr/bin/cat" and e.cmdline[0] == "cat" for e in fan_collector.events)


def test_own_reads_are_not_recorded(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    sensor = fan_sensor_factory([fan_target], fan_collector)
    before = sensor.health().own_events_skipped
    for _ in range(3):
        assert fan_target.read_text().startswith("[prod-backup]")
    thread = threading.Thread(target=fan_target.read_text)  # another thread of our pid
    thread.start()
    thread.join(5)
    control = subprocess.Popen(["cat", str(fan_target)], stdout=subprocess.DEVNULL)
    assert control.wait(timeout=10) == 0
    assert fan_collector.wait_for(lambda evs: len(evs) >= 1, 5)
    time.sleep(0.1)
    assert [e.pid for e in fan_collector.events] == [control.pid]  # the positive control only
    assert all(e.pid != os.getpid() for e in fan_collector.events)
    assert sensor.health().own_events_skipped >= before + 4


UNPRIVILEGED_START = """
import sys
from agent.sensors.base import SensorUnavailable
from agent.sensors._fanotify import {cls}
try:
    {cls}(["{path}"], print).start()
except SensorUnavailable as exc:
    print(exc)
    sys.exit(3)
print("started")
"""


@pytest.mark.parametrize("cls", ["FanotifySensor", "FanotifyNotifySensor"])
def test_without_privilege_a_clear_message(cls: str, fan_target: Path) -> None:
    result = fan_run_unprivileged(UNPRIVILEGED_START.format(cls=cls, path=fan_target))
    assert result.returncode == 3, result
    assert "needs root (CAP_SYS_ADMIN)" in result.stdout
    assert "run tripkey-agent as root" in result.stdout.lower()


def test_unprivileged_runner_really_is_unprivileged() -> None:
    result = fan_run_unprivileged("import os; print(os.getuid(), os.geteuid(), os.getgroups())")
    assert result.stdout.split() == [str(NOBODY), str(NOBODY), "[]"], result
