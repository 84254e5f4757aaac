"""fanotify sensor behaviour beyond the acceptance set: marks, notify mode, close-only readers,
health, lifecycle, and the fail-open guard's exactly-once books."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.sensors import _fanotify_abi as abi
from agent.sensors import _procinfo as procinfo
from agent.sensors._fanotify_guard import PermissionGuard
from tests.support.paths import requires_root
from tests.support.sensors import FanCollector, fan_plant


def _cat(path: Path) -> int:
    proc = subprocess.Popen(["cat", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.wait(timeout=10)
    return proc.pid


def _recorded(collector: FanCollector, pid: int, timeout: float = 5.0) -> bool:
    return collector.wait_for(lambda evs: any(e.pid == pid for e in evs), timeout)


# ---- guard books on a real pipe (the fanotify fd stand-in whose writes we can read back) ----------


def _responses(read_fd: int) -> list[tuple[int, int]]:
    try:
        data = os.read(read_fd, 4096)
    except BlockingIOError:
        return []
    return [abi.RESPONSE.unpack_from(data, i) for i in range(0, len(data), abi.RESPONSE.size)]


@contextlib.contextmanager
def _guard_on_pipe(budget: float) -> Iterator[tuple[PermissionGuard, int]]:
    """(guard writing to a pipe, the pipe's read end); closed afterwards."""
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK)
    guard = PermissionGuard(write_fd, budget=budget)
    try:
        yield guard, read_fd
    finally:
        guard.close()
        os.close(read_fd)
        os.close(write_fd)


def test_guard_answers_late_events_once_and_handler_does_not_repeat() -> None:
    with _guard_on_pipe(0.05) as (guard, read_fd):
        guard.register(7)
        time.sleep(0.3)
        assert _responses(read_fd) == [(7, abi.FAN_ALLOW)]
        assert guard.guard_answered == 1
        assert guard.answer(7) is False  # the late handler must not write a second response
        assert guard.answer(7) is False
        time.sleep(0.1)
        assert _responses(read_fd) == []


def test_guard_leaves_handled_events_alone() -> None:
    with _guard_on_pipe(0.05) as (guard, read_fd):
        guard.register(8)
        assert guard.answer(8) is True
        guard.register(8)  # the fd number was closed and reused by the next event: a new entry
        assert guard.pending == 1
        assert guard.answer(8) is True
        time.sleep(0.2)
        assert _responses(read_fd) == [(8, abi.FAN_ALLOW), (8, abi.FAN_ALLOW)]
        assert guard.guard_answered == 0 and guard.pending == 0


def test_guard_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    """A stalled host must not also be flooded with one warning per reader: at most one a second."""
    with _guard_on_pipe(0.01) as (guard, read_fd):
        with caplog.at_level("WARNING", logger="agent.sensors._fanotify_guard"):
            for fd in range(100, 112):
                guard.register(fd)
                time.sleep(0.03)  # each expires on its own
            time.sleep(0.05)
            assert guard.guard_answered == 12 and len(_responses(read_fd)) == 12
            time.sleep(1.2)  # the rest are reported in one line a second later, not forgotten
        warnings = [r.getMessage() for r in caplog.records if "fail-open" in r.getMessage()]
        counts = [int(w.split()[2]) for w in warnings]  # "fail-open: allowed N reader(s) ..."
        assert sum(counts) == 12 and 1 <= len(warnings) <= 3, warnings  # not one line per reader


def test_guard_answers_a_stale_entry_before_replacing_it() -> None:
    """An fd registered while its old entry is unanswered (a bug elsewhere) never strands a reader."""
    with _guard_on_pipe(60) as (guard, read_fd):
        guard.register(5)
        guard.register(5)
        assert _responses(read_fd) == [(5, abi.FAN_ALLOW)]  # the stale one, at once
        assert guard.pending == 1 and guard.answer(5) is True


def test_guard_close_allows_everything_pending_then_writes_nothing() -> None:
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK)
    guard = PermissionGuard(write_fd, budget=60)
    guard.register(3)
    guard.register(4)
    guard.close()
    guard.close()
    assert sorted(_responses(read_fd)) == [(3, abi.FAN_ALLOW), (4, abi.FAN_ALLOW)]
    assert guard.answer(3) is False
    assert _responses(read_fd) == []
    os.close(read_fd)
    os.close(write_fd)


# ---- real kernel ----------------------------------------------------------------------------------


@requires_root
def test_other_files_in_the_directory_are_not_recorded(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    """~/.aws/config is read all the time: it is allowed at once, never captured (costly) or reported."""
    captured: list[int] = []

    def counting_capture(pid: int, pidfd: int | None) -> procinfo.ProcContext:
        captured.append(pid)
        return procinfo.capture(pid, pidfd)

    config = fan_plant(fan_target.parent, "config", "[default]\n")
    sensor = fan_sensor_factory([fan_target], fan_collector, capture=counting_capture)
    others = [_cat(config) for _ in range(5)]
    reader = _cat(fan_target)
    assert _recorded(fan_collector, reader)
    assert all(fan_collector.for_pid(other) == [] for other in others)
    assert captured == [reader]
    assert sensor.health().guard_answered == 0  # type: ignore[attr-defined]


@requires_root
def test_set_paths_moves_marks(
    fan_home: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    first = fan_plant(fan_home / "a")
    second = fan_plant(fan_home / "b")
    sensor = fan_sensor_factory([first], fan_collector)
    not_yet = _cat(second)
    sensor.set_paths([str(second)])  # type: ignore[attr-defined]
    dropped = _cat(first)
    watched = _cat(second)
    assert _recorded(fan_collector, watched)
    time.sleep(0.1)
    assert fan_collector.for_pid(not_yet) == [] and fan_collector.for_pid(dropped) == []
    assert sensor.paths == frozenset({str(second)})  # type: ignore[attr-defined]


@requires_root
def test_missing_file_is_unhealthy_until_remarked(
    fan_home: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    target = fan_home / "later" / "credentials"
    sensor = fan_sensor_factory([target], fan_collector)
    health = sensor.health()  # type: ignore[attr-defined]
    assert not health.healthy
    assert health.unwatched and str(target) in health.unwatched[0] and "missing" in (health.error or "")
    fan_plant(target.parent)
    sensor.set_paths([str(target)])  # type: ignore[attr-defined]
    assert sensor.health().healthy  # type: ignore[attr-defined]
    assert _recorded(fan_collector, _cat(target))


@requires_root
def test_replaced_directory_is_watched_after_set_paths(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    sensor = fan_sensor_factory([fan_target], fan_collector)
    shutil.rmtree(fan_target.parent)
    fan_plant(fan_target.parent)
    sensor.set_paths([str(fan_target)])  # type: ignore[attr-defined]
    assert _recorded(fan_collector, _cat(fan_target))


@requires_root
def test_file_replaced_by_someone_else_is_unhealthy_until_remarked(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    """The mark stays on the old inode: status must say so instead of claiming to watch."""
    sensor = fan_sensor_factory([fan_target], fan_collector)
    shutil.rmtree(fan_target.parent)
    fan_plant(fan_target.parent)
    health = sensor.health()  # type: ignore[attr-defined]
    assert not health.healthy and "replaced" in (health.error or ""), health
    unseen = _cat(fan_target)  # honest: this read is not seen until the new file is marked
    sensor.refresh()  # type: ignore[attr-defined]
    assert sensor.health().healthy  # type: ignore[attr-defined]
    assert _recorded(fan_collector, _cat(fan_target))
    assert fan_collector.for_pid(unseen) == []
    shutil.rmtree(fan_target.parent)
    health = sensor.health()  # type: ignore[attr-defined]
    assert not health.healthy and "missing" in (health.error or ""), health


@requires_root
def test_reader_whose_parent_exited_has_a_consistent_chain(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    """An orphan is re-parented (to pid 1 or a subreaper) before it reads: the chain shows that."""
    fan_sensor_factory([fan_target], fan_collector)
    out = subprocess.run(
        ["sh", "-c", f"sh -c 'sleep 0.3; exec cat {fan_target} >/dev/null' & echo $!"],
        capture_output=True, text=True, check=True, timeout=10,
    )  # fmt: skip
    orphan = int(out.stdout.strip())
    assert _recorded(fan_collector, orphan)
    (event,) = fan_collector.for_pid(orphan)
    assert event.exe == "/usr/bin/cat" and event.ppid is not None and event.ppid != os.getpid()
    assert event.ancestors and event.ancestors[0].pid == event.ppid
    assert event.ancestors[0].cmdline  # the new parent, as it is now (exe of pid 1 may be hidden)
    assert event.ancestors[-1].pid == 1


@requires_root
def test_guard_bound_holds_for_many_concurrent_readers(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    """Every capture stalled and 40 readers at once: each is let through by the guard, once."""
    release = threading.Event()

    def stalled(pid: int, pidfd: int | None) -> procinfo.ProcContext:
        release.wait(30)
        return procinfo.ProcContext(pid=pid, gone=True)

    sensor = fan_sensor_factory([fan_target], fan_collector, capture=stalled, capture_workers=2)
    durations: list[float] = []

    def read_once() -> None:
        started = time.monotonic()
        subprocess.run(["cat", str(fan_target)], capture_output=True, check=True, timeout=20)
        durations.append(time.monotonic() - started)

    threads = [threading.Thread(target=read_once) for _ in range(40)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        release.set()
    assert len(durations) == 40 and max(durations) < 3, sorted(durations)[-5:]  # "did not hang"
    assert fan_collector.wait_for(lambda evs: len(evs) == 40, 10)
    time.sleep(0.2)
    health = sensor.health()  # type: ignore[attr-defined]
    assert health.guard_answered == 40 and health.response_errors == 0, health


@requires_root
def test_reader_that_opened_before_start_is_reported_at_close(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    holder = subprocess.Popen(
        ["sh", "-c", f"exec 3<{fan_target}; read a; exec 3<&-; read b"], stdin=subprocess.PIPE
    )
    time.sleep(0.2)  # fd 3 is open before the sensor exists
    fan_sensor_factory([fan_target], fan_collector)
    assert holder.stdin is not None
    holder.stdin.write(b"x\n")
    holder.stdin.flush()
    assert _recorded(fan_collector, holder.pid)
    (event,) = fan_collector.for_pid(holder.pid)
    assert event.access == "close" and event.exe is not None and event.exe.endswith("sh")
    holder.communicate(b"y\n", timeout=10)


@requires_root
def test_start_stop_cycles_leak_no_fd_or_thread(
    fan_home: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    from agent.sensors._fanotify import FanotifyNotifySensor, FanotifySensor

    first, second = fan_plant(fan_home / "a"), fan_plant(fan_home / "b")
    fds_before, threads_before = len(os.listdir("/proc/self/fd")), threading.active_count()
    for i in range(60):
        cls = FanotifySensor if i % 2 else FanotifyNotifySensor
        sensor = cls([str(first)], fan_collector)
        sensor.start()
        sensor.set_paths([str(first), str(second)])
        if i % 20 == 0:
            _cat(second)  # events in flight at stop
        sensor.set_paths([str(second)])
        sensor.stop()
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert threading.active_count() == threads_before


@requires_root
def test_health_when_running_and_after_stop(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    sensor = fan_sensor_factory([fan_target], fan_collector, budget=0.25)
    health = sensor.health()  # type: ignore[attr-defined]
    assert (health.name, health.mode, health.weaker) == ("fanotify", "permission", False)
    assert health.healthy
    assert health.pidfd is True  # kernel 5.15+ on these machines; without it: detail says so
    assert health.budget_ms == 250 and health.error is None
    assert health.to_dict()["guard_answered"] == 0
    with pytest.raises(RuntimeError):
        sensor.start()  # type: ignore[attr-defined]
    sensor.stop()  # type: ignore[attr-defined]
    sensor.stop()  # type: ignore[attr-defined]
    after = sensor.health()  # type: ignore[attr-defined]
    assert not after.healthy and after.error == "stopped"
    started = time.monotonic()
    _cat(fan_target)  # no mark left behind: nothing to hold the reader
    assert time.monotonic() - started < 2 and fan_collector.events == []


@requires_root
def test_notify_mode_is_weaker_and_records_pids(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    sensor = fan_sensor_factory([fan_target], fan_collector, notify=True)
    assert sensor.capabilities.weaker and not sensor.capabilities.blocks_reader  # type: ignore[attr-defined]
    holder = subprocess.Popen(["sh", "-c", f"exec 3<{fan_target}; read a"], stdin=subprocess.PIPE)
    assert _recorded(fan_collector, holder.pid)
    (held,) = fan_collector.for_pid(holder.pid)  # still alive: full context
    assert held.sensor == "fanotify-notify" and held.access == "open"
    assert held.exe is not None and held.ppid == os.getpid() and held.uid == 0
    holder.communicate(b"x\n", timeout=10)
    pids = [_cat(fan_target) for _ in range(20)]
    assert fan_collector.wait_for(lambda evs: len(evs) >= 21, 10)
    time.sleep(0.1)
    assert sorted(e.pid for e in fan_collector.events if e.pid != holder.pid) == sorted(pids)
    health = sensor.health()  # type: ignore[attr-defined]
    assert (health.mode, health.weaker) == ("notify", True) and "weaker" in (health.detail or "")
    missing = [e for e in fan_collector.events if e.exe is None]
    assert health.context_missing == len(missing)  # short-lived readers may lose context: counted


@requires_root
def test_sensor_threads_run_at_raised_priority(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    """Readers wait on the sensor's threads (and the guard): they get nice -10, the process does not."""
    fan_sensor_factory([fan_target], fan_collector)
    time.sleep(0.1)
    nices = {
        t.name: os.getpriority(os.PRIO_PROCESS, t.native_id)
        for t in threading.enumerate()
        if t.name.startswith("tripkey-fanotify") and t.native_id is not None
    }
    assert {"tripkey-fanotify-reader", "tripkey-fanotify-guard", "tripkey-fanotify-dispatch"} <= set(nices)
    assert set(nices.values()) == {-10}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != -10  # only ours


@requires_root
def test_stop_does_not_wait_for_a_stalled_capture(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    release = threading.Event()

    def stuck(pid: int, pidfd: int | None) -> procinfo.ProcContext:
        release.wait(30)
        return procinfo.ProcContext(pid=pid)

    sensor = fan_sensor_factory([fan_target], fan_collector, capture=stuck, capture_workers=1)
    try:
        _cat(fan_target)  # allowed by the guard; the capture stays stuck
        started = time.monotonic()
        sensor.stop()  # type: ignore[attr-defined]
        assert time.monotonic() - started < 5
        assert sensor.health().response_errors == 0  # type: ignore[attr-defined]
        started = time.monotonic()
        _cat(fan_target)
        assert time.monotonic() - started < 2
    finally:
        release.set()
    time.sleep(0.2)  # the abandoned worker finishes: it must not answer or close anything twice
    assert sensor.health().response_errors == 0  # type: ignore[attr-defined]


@requires_root
def test_a_failing_record_handler_fails_open_for_that_reader(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    sensor = fan_sensor_factory([fan_target], fan_collector)

    def broken(event: abi.RawEvent, path: str) -> str | None:
        raise RuntimeError("injected fault")

    sensor._dedupe = broken  # type: ignore[attr-defined]
    started = time.monotonic()
    _cat(fan_target)
    assert time.monotonic() - started < 2
    health = sensor.health()  # type: ignore[attr-defined]
    assert health.guard_answered == 0 and health.response_errors == 0  # allowed by the handler
    assert fan_collector.events == []
    del sensor._dedupe  # type: ignore[attr-defined]
    assert _recorded(fan_collector, _cat(fan_target))  # the reader thread survived


@requires_root
def test_unparseable_kernel_data_stops_sensing_loudly_and_lets_readers_through(
    fan_target: Path,
    fan_collector: FanCollector,
    fan_sensor_factory: Callable[..., object],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def future_kernel(buf: bytes) -> list[abi.RawEvent]:
        error = abi.FanotifyAbiError("fanotify metadata version 4, this agent understands 3")
        error.events = []  # type: ignore[attr-defined]
        raise error

    sensor = fan_sensor_factory([fan_target], fan_collector)
    monkeypatch.setattr(abi, "parse_events", future_kernel)
    started = time.monotonic()
    _cat(fan_target)  # the unparsed record's fd is lost to us: closing the group allows the reader
    _cat(fan_target)
    assert time.monotonic() - started < 3
    health = sensor.health()  # type: ignore[attr-defined]
    assert not health.healthy and "version 4" in (health.error or "")
    assert any(r.levelname == "CRITICAL" and "NOT recorded" in r.getMessage() for r in caplog.records)


@requires_root
def test_capture_threads_get_the_interpreter_back_quickly_while_running(
    fan_target: Path, fan_collector: FanCollector
) -> None:
    """Big-file parsing elsewhere in the agent must not hold the GIL for 5 ms each time a capture
    thread wants it (issue #10's 10,000-profile churn); the setting is put back at stop."""
    import sys

    from agent.sensors._fanotify import FanotifySensor

    before = sys.getswitchinterval()
    sensor = FanotifySensor([str(fan_target)], fan_collector)
    sensor.start()
    try:
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sensor.stop()
    assert sys.getswitchinterval() == before
