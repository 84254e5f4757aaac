"""EventLogSensor: contract tests with the Win32 surface faked at the OS boundary only.

The fake (tests/support/win32.py) stands in for pywin32's win32evtlog/win32event/win32security/
win32api, advapi32's audit policy and the registry, and behaves as their documentation says; the
sensor, its Win32 plumbing (agent/sensors/_eventlog_win32.py), the parser and the 4663/4688 join
run for real. Only the OS gate (check_available) is bypassed. What the fake cannot prove — that
Windows really logs a 4663 when a child process reads the file — is the Windows runner's job
(tests/agent/sensors/test_eventlog_windows_live.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from agent import osflags
from agent.events.model import ReadEvent
from agent.sensors import _eventlog_win32 as win32
from agent.sensors._eventlog import GPO_HINT, UNAVAILABLE_OS, EventLogSensor, EventlogSensor
from agent.sensors.base import SensorUnavailable
from tests.support.eventlog import CMD, EXPLORER, PS, access, start
from tests.support.eventlog import CRED as WIN_CRED
from tests.support.win32 import Acl, FakeWindows, Sid

FOLDER = r"C:\Users\alice\.aws"
OUR_ACE = ((0x2, 0x1 | 0x8 | 0x40), 0x1, Sid("S-1-1-0"))  # audit, OI|IO|success, ReadData, Everyone


def test_not_available_off_windows_and_start_says_so() -> None:
    if osflags.WINDOWS:
        pytest.skip("checks the behaviour on a host without Windows")
    assert EventlogSensor is EventLogSensor
    assert EventLogSensor.check_available() == UNAVAILABLE_OS
    sensor = EventLogSensor([WIN_CRED], lambda e: None)
    with pytest.raises(SensorUnavailable, match="only available on Windows"):
        sensor.start()
    assert not sensor.health().healthy and sensor.health().error == "not started"
    sensor.stop()
    sensor.stop()


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> FakeWindows:
    fake = FakeWindows()
    fake.install(monkeypatch, win32)
    fake.sacls[FOLDER] = Acl([((0x2, 0x3 | 0x80), 0x10000, Sid("S-1-5-21-1-2-3-500"))])  # someone else's
    monkeypatch.setattr(EventLogSensor, "check_available", classmethod(lambda cls: None))
    return fake


@pytest.fixture
def running(windows: FakeWindows) -> Iterator[tuple[EventLogSensor, list[ReadEvent]]]:
    got: list[ReadEvent] = []
    sensor = EventLogSensor([WIN_CRED], got.append, wait_ms=20, policy_interval=3600)
    sensor.start()
    try:
        yield sensor, got
    finally:
        sensor.stop()


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_start_sets_privilege_policy_and_the_inherit_only_audit_ace(windows: FakeWindows) -> None:
    sensor = EventLogSensor([WIN_CRED], lambda e: None, wait_ms=20)
    sensor.start()
    try:
        assert windows.enabled_privileges == {"SeSecurityPrivilege"}
        assert {g: f & 1 for g, f in windows.audit.items()} == dict.fromkeys(win32.SUBCATEGORIES, 1)
        assert windows.dwords[(win32.CMDLINE_KEY, win32.CMDLINE_VALUE)] == 1
        aces = windows.sacls[FOLDER].aces  # type: ignore[union-attr]
        assert aces[-1] == OUR_ACE and len(aces) == 2  # added next to the existing one
        assert sensor.health().healthy
    finally:
        sensor.stop()
    assert windows.sacls[FOLDER].aces == [((0x2, 0x83), 0x10000, Sid("S-1-5-21-1-2-3-500"))]  # type: ignore[union-attr]


def test_a_second_start_does_not_add_the_ace_twice(windows: FakeWindows) -> None:
    for _ in range(2):
        sensor = EventLogSensor([WIN_CRED], lambda e: None, wait_ms=20)
        win32.enable_privilege()
        win32.add_audit_ace(FOLDER)
        assert win32.add_audit_ace(FOLDER) is False
        sensor.stop()
    assert windows.sacls[FOLDER].aces.count(OUR_ACE) == 1  # type: ignore[union-attr]


def test_subscription_joins_4663_with_4688_for_command_line_and_parent(
    windows: FakeWindows, running: tuple[EventLogSensor, list[ReadEvent]]
) -> None:
    sensor, got = running
    windows.log.append(4688, lambda r: start(r, 0x1000, CMD, 0x700, f'"{CMD}" ', EXPLORER))
    windows.log.append(
        4688, lambda r: start(r, 0x1234, PS, 0x1000, f"powershell -c Get-Content {WIN_CRED}", CMD)
    )
    windows.log.append(4624, lambda r: start(r, 0x1, CMD, 0x0, "not asked for", EXPLORER))
    windows.log.append(4663, lambda r: access(r, 0x1234, PS))
    eventually(lambda: len(got) == 1)
    [read] = got
    assert (read.pid, read.ppid, read.exe) == (0x1234, 0x1000, PS)
    assert read.cmdline == ("powershell", "-c", "Get-Content", WIN_CRED)
    assert [a.pid for a in read.ancestors] == [0x1000, 0x700]
    assert sensor.health().healthy and sensor.health().lost_events == 0


def test_processes_started_before_the_agent_come_from_the_seeded_history(windows: FakeWindows) -> None:
    windows.log.append(4688, lambda r: start(r, 0x50, CMD, 0x4, "cmd /c old job", EXPLORER))
    windows.log.append(4663, lambda r: access(r, 0x50, CMD))  # before the agent: not reported
    got: list[ReadEvent] = []
    sensor = EventLogSensor([WIN_CRED], got.append, wait_ms=20)
    sensor.start()
    try:
        windows.log.append(4663, lambda r: access(r, 0x50, CMD))
        eventually(lambda: len(got) == 1)
        assert got[0].cmdline == ("cmd", "/c", "old", "job")
    finally:
        sensor.stop()


def test_a_cleared_log_is_a_tamper_signal_and_the_sensor_keeps_reading(
    windows: FakeWindows, running: tuple[EventLogSensor, list[ReadEvent]]
) -> None:
    sensor, got = running
    windows.log.clear(by="mallory")
    eventually(lambda: sensor.log_clears == 1)
    health = sensor.health()
    assert (
        not health.healthy
        and "cleared" in (health.error or "")
        and "CONTOSO\\mallory" in (health.error or "")
    )
    windows.log.append(4663, lambda r: access(r, 0x77, CMD))
    eventually(lambda: len(got) == 1)  # still subscribed


def test_a_stale_subscription_is_counted_and_resumed_after_the_bookmark(
    windows: FakeWindows, running: tuple[EventLogSensor, list[ReadEvent]]
) -> None:
    sensor, got = running
    windows.log.append(4663, lambda r: access(r, 0x10, CMD))
    eventually(lambda: len(got) == 1)
    windows.log.clear(stale=True)  # the open result set is invalid now (ERROR_EVT_QUERY_RESULT_STALE)
    windows.log.append(4663, lambda r: access(r, 0x11, CMD))
    eventually(lambda: len(got) == 2 and sensor.log_clears == 1)
    assert [e.pid for e in got] == [0x10, 0x11]
    assert sensor.health().lost_events >= 1 and not sensor.health().healthy


def test_group_policy_turning_auditing_off_again_is_reported_loudly(
    windows: FakeWindows, running: tuple[EventLogSensor, list[ReadEvent]]
) -> None:
    sensor, _ = running
    sensor.check_policy()
    assert sensor.health().healthy
    windows.gpo_forced_off.add(win32.FILE_SYSTEM)  # a GPO refresh re-applies its Advanced Audit Policy
    windows.dwords[(win32.CMDLINE_KEY, win32.CMDLINE_VALUE)] = 0
    sensor.check_policy()
    health = sensor.health()
    assert not health.healthy
    assert "File System was turned off again" in (health.error or "") and GPO_HINT in (health.error or "")
    assert "command lines in process-creation events were turned off again" in (health.error or "")


def test_process_creation_without_command_lines_is_reported(
    windows: FakeWindows, running: tuple[EventLogSensor, list[ReadEvent]]
) -> None:
    sensor, _ = running
    for pid in range(0x100, 0x106):
        windows.log.append(4688, lambda r, p=pid: start(r, p, CMD, 0x4, "", EXPLORER))
    eventually(lambda: sensor.correlator.starts >= 6)
    sensor.check_policy()
    assert "carried no command line" in (sensor.health().error or "")


def test_group_policy_that_keeps_auditing_off_stops_start(windows: FakeWindows) -> None:
    windows.gpo_forced_off.add(win32.PROCESS_CREATION)
    with pytest.raises(SensorUnavailable, match="Process Creation stays off"):
        EventLogSensor([WIN_CRED], lambda e: None).start()
    assert OUR_ACE not in windows.sacls[FOLDER].aces  # type: ignore[union-attr]


def test_without_se_security_privilege_start_fails_and_changes_nothing(windows: FakeWindows) -> None:
    windows.held_privileges.clear()
    with pytest.raises(SensorUnavailable, match="SeSecurityPrivilege"):
        EventLogSensor([WIN_CRED], lambda e: None).start()
    assert windows.audit == {} and len(windows.sacls[FOLDER].aces) == 1  # type: ignore[union-attr]


def test_new_and_removed_targets_move_the_audit_ace(
    windows: FakeWindows, running: tuple[EventLogSensor, list[ReadEvent]]
) -> None:
    sensor, _ = running
    bob = r"C:\Users\bob\.aws"
    windows.sacls[bob] = None  # no SACL yet
    sensor.set_paths([bob + r"\credentials"])
    assert windows.sacls[bob].aces == [OUR_ACE]  # type: ignore[union-attr]
    assert OUR_ACE not in windows.sacls[FOLDER].aces  # type: ignore[union-attr]
    sensor.set_paths([bob + r"\credentials", r"C:\Users\gone\.aws\credentials"])
    assert "cannot add the audit ACE" in (sensor.health().error or "")
