"""Acceptance: the eBPF sensor on the real kernel (root), held to the fanotify sensor's contract.

1,000 short-lived readers of mixed kinds and uids are all recorded once with full context; a
stopped agent never holds a reader; the agent's own reads are skipped; an idle sensor wakes about
once a second; without privilege or without the built object it says exactly what is missing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.sensors import _procinfo as procinfo
from agent.sensors.base import SensorUnavailable
from tests.support.ebpf import read_with
from tests.support.paths import REPO_ROOT, requires_root
from tests.support.sensors import FAN_PRELOAD, NOBODY, Collector, fan_run_unprivileged

pytestmark = requires_root

SYSTEM_PYTHON = "/usr/bin/python3"
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _reader_argvs(path: str) -> list[tuple[list[str], int]]:
    """(argv as the reader sees it, uid) for every kind of reader; setpriv execs, keeping the pid."""
    kinds = [["cat", path], ["head", "-c", "10", path]]
    if os.access(SYSTEM_PYTHON, os.X_OK):
        kinds.append([SYSTEM_PYTHON, "-S", "-c", f"open({path!r}).read()"])
    return [(argv, 0) for argv in kinds] + [(argv, NOBODY) for argv in kinds]


def _exe_of(argv0: str) -> str:
    return os.path.realpath(argv0 if os.path.isabs(argv0) else f"/usr/bin/{argv0}")


def _reap(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_thousand_short_lived_readers_all_recorded(
    fan_target: Path, fan_collector: Collector, ebpf_sensor_factory: Callable[..., object]
) -> None:
    sensor = ebpf_sensor_factory([fan_target], fan_collector)
    kinds = _reader_argvs(str(fan_target))
    total, concurrency = 1000, 8
    expected: dict[int, tuple[list[str], int]] = {}
    running: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    wall_start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)  # start_time has tick precision
    for i in range(total):
        argv, uid = kinds[i % len(kinds)] if i % 10 else kinds[(i // 10) % len(kinds)]
        full = argv if uid == 0 else [*AS_NOBODY, *argv]
        proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        expected[proc.pid] = (argv, uid)
        running.append(proc)
        if len(running) >= concurrency:
            _reap(running.pop(0))
    for proc in running:
        _reap(proc)
    elapsed = time.monotonic() - started
    wall_end = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)  # events arrive after the reap

    assert fan_collector.wait_for(lambda evs: len(evs) >= total, timeout=30), (
        f"only {len(fan_collector.events)} of {total} readers recorded; health={sensor.health()}"
    )
    time.sleep(1.2)  # anything extra (a duplicate) would arrive now
    by_pid: dict[int, list] = {}
    for event in fan_collector.events:
        by_pid.setdefault(event.pid, []).append(event)
    assert set(by_pid) == set(expected)
    me, my_exe = os.getpid(), os.path.realpath(sys.executable)
    my_cmdline = tuple(procinfo.capture(me).cmdline)
    for pid, (argv, uid) in expected.items():
        (event,) = by_pid[pid]  # exactly one event per reader: none lost, none doubled
        assert (event.sensor, event.access, event.path) == ("ebpf", "open", str(fan_target)), event
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
    assert health.lost_events == 0 and health.unfilled == 0, health
    assert health.healthy and health.callback_errors == 0 and health.events_reported == total, health
    counters = sensor.details()["counters"]
    # every reader was exec'd after the sensor started: its exe came from the exec-time cache
    assert counters["reader_cache_misses"] == 0 and counters["cache_full"] == 0, counters
    print(f"\n1000 readers in {elapsed:.1f} s; {counters}")


SENSOR_CHILD = """
import json, signal, sys, threading
from agent.sensors._ebpf import EbpfSensor
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
sensor = EbpfSensor([sys.argv[1]], lambda e: print(json.dumps({"pid": e.pid, "exe": e.exe}), flush=True))
sensor.start()
print("ready", flush=True)
done.wait()
sensor.stop()
print("lost", sensor.health().lost_events, flush=True)
"""


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _state(pid: int) -> str:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2]


def test_stopped_agent_never_holds_a_reader(fan_target: Path, ebpf_object: Path) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", SENSOR_CHILD, str(fan_target)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    lines = _lines(agent)
    try:
        assert lines.get(timeout=30) == "ready"
        os.kill(agent.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while _state(agent.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(agent.pid) == "T"
        readers = []
        for _ in range(5):
            started = time.monotonic()
            readers.append(read_with(["cat", str(fan_target)]))
            assert time.monotonic() - started < 1, "a reader waited for the stopped agent"
        os.kill(agent.pid, signal.SIGCONT)
        seen: set[int] = set()
        deadline = time.monotonic() + 10
        while not set(readers) <= seen and time.monotonic() < deadline:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            seen.add(json.loads(line)["pid"])
        assert set(readers) <= seen  # held in the ring buffer while the agent was stopped
        agent.terminate()
        assert agent.wait(timeout=15) == 0
        tail = []
        while not lines.empty():
            tail.append(lines.get())
        assert "lost 0" in tail
    finally:
        if agent.poll() is None:
            os.kill(agent.pid, signal.SIGCONT)
            agent.kill()
            agent.wait()


def test_own_reads_are_not_recorded(
    fan_target: Path, fan_collector: Collector, ebpf_sensor_factory: Callable[..., object]
) -> None:
    sensor = ebpf_sensor_factory([fan_target], fan_collector)
    before = sensor.details()["counters"]["own_opens_skipped"]
    for _ in range(3):
        assert fan_target.read_text().startswith("[prod-backup]")
    thread = threading.Thread(target=fan_target.read_text)  # another thread of our process
    thread.start()
    thread.join(5)
    control = read_with(["cat", str(fan_target)])
    assert fan_collector.wait_for(lambda evs: len(evs) >= 1, 5)
    time.sleep(1.2)
    assert [e.pid for e in fan_collector.events] == [control]  # the positive control only
    assert sensor.details()["counters"]["own_opens_skipped"] >= before + 4


def test_idle_sensor_wakes_about_once_a_second_and_stops_promptly(
    fan_target: Path, ebpf_sensor_factory: Callable[..., object]
) -> None:
    sensor = ebpf_sensor_factory([fan_target], lambda event: None)
    tid = sensor._thread.native_id  # type: ignore[attr-defined]

    def switches() -> int:
        status = Path(f"/proc/self/task/{tid}/status").read_text().splitlines()
        return sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)

    time.sleep(0.5)
    before, started = switches(), time.monotonic()
    time.sleep(5)
    rate = (switches() - before) / (time.monotonic() - started)
    assert rate <= 1.5, f"poll thread woke {rate:.1f} times a second while idle"
    started = time.monotonic()
    sensor.stop()  # type: ignore[attr-defined]
    assert time.monotonic() - started < 2.5
    sensor.stop()  # type: ignore[attr-defined]  # twice is safe
    assert sensor.health().error == "stopped"  # type: ignore[attr-defined]


UNPRIVILEGED_START = """
import sys
from agent.sensors.base import SensorUnavailable
from agent.sensors._ebpf import EbpfSensor
print("CHECK", EbpfSensor.check_available())
try:
    EbpfSensor(["{path}"], print).start()
except SensorUnavailable as exc:
    print("START", exc)
    sys.exit(3)
print("started")
"""


def test_without_privilege_a_clear_message(fan_target: Path, ebpf_object: Path) -> None:
    result = fan_run_unprivileged(
        UNPRIVILEGED_START.format(path=fan_target), preload=FAN_PRELOAD + "; import agent.sensors._ebpf"
    )
    assert result.returncode == 3, result
    check, start = result.stdout.splitlines()
    for line in (check, start):
        assert "ebpf needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)" in line, result
        assert f"(uid {NOBODY})" in line and "Run tripkey-agent as root" in line, result


def test_missing_object_names_make(
    fan_target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ebpf_object: Path
) -> None:
    from agent.sensors import _ebpf_loader
    from agent.sensors._ebpf import EbpfSensor

    missing = tmp_path / "tripkey.bpf.o"
    with pytest.raises(SensorUnavailable) as raised:
        EbpfSensor([str(fan_target)], print, object_path=missing).start()
    assert f"the BPF object {missing} is not built: run `make -C agent/sensors/bpf`" in str(raised.value)
    monkeypatch.setattr(_ebpf_loader, "object_path", lambda: missing)
    message = EbpfSensor.check_available()
    assert message is not None and "`make -C agent/sensors/bpf`" in message and str(missing) in message
    monkeypatch.undo()
    assert EbpfSensor.check_available() is None  # the real object loads and attaches here
