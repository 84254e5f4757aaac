"""fanotify sensor behaviour beyond the acceptance set: marks, notify mode, close-only readers,
health, lifecycle, and the fail-open guard's exactly-once books."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.sensors import _fanotify_abi as abi
from agent.sensors import procinfo
from agent.sensors._fanotify_guard import PermissionGuard
from tests.conftest import requires_root
from tests.sensors.conftest import FanCollector, fan_plant


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


def test_guard_answers_late_events_once_and_handler_does_not_repeat() -> None:
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK)
    guard = PermissionGuard(write_fd, budget=0.05)
    try:
        guard.register(7)
        time.sleep(0.3)
        assert _responses(read_fd) == [(7, abi.FAN_ALLOW)]
        assert guard.guard_answered == 1
        assert guard.answer(7) is False  # the late handler must not write a second response
        assert guard.answer(7) is False
        time.sleep(0.1)
        assert _responses(read_fd) == []
    finally:
        guard.close()
        os.close(read_fd)
        os.close(write_fd)


def test_guard_leaves_handled_events_alone() -> None:
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK)
    guard = PermissionGuard(write_fd, budget=0.05)
    try:
        guard.register(8)
        assert guard.answer(8) is True
        guard.register(8)  # the fd number was closed and reused by the next event: a new entry
        assert guard.pending == 1
        assert guard.answer(8) is True
        time.sleep(0.2)
        assert _responses(read_fd) == [(8, abi.FAN_ALLOW), (8, abi.FAN_ALLOW)]
        assert guard.guard_answered == 0 and guard.pending == 0
    finally:
        guard.close()
        os.close(read_fd)
        os.close(write_fd)


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
    config = fan_plant(fan_target.parent, "config", "[default]\n")
    fan_sensor_factory([fan_target], fan_collector)
    other = _cat(config)
    reader = _cat(fan_target)
    assert _recorded(fan_collector, reader)
    assert fan_collector.for_pid(other) == []


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
def test_missing_directory_is_unhealthy_until_remarked(
    fan_home: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    target = fan_home / "later" / "credentials"
    sensor = fan_sensor_factory([target], fan_collector)
    health = sensor.health()  # type: ignore[attr-defined]
    assert not health.healthy
    assert health.unwatched and str(target.parent) in health.unwatched[0] and "No such file" in health.error
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
