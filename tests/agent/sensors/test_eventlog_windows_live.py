"""The real eventlog sensor on Windows: SACL, audit policy, Security log subscription, 4663 + 4688.

Runs only on Windows as an administrator (the CI job `windows-sensor` on a GitHub Windows runner);
everywhere else it skips and says why. It plants a stand-in credentials file in a temporary folder,
starts EventLogSensor on it (which enables SeSecurityPrivilege, the File System and Process Creation
audit subcategories, command lines in 4688, the inherit-only read-audit ACE on the folder, and
subscribes to the Security log), reads the file from a child process with a recognisable command
line, and expects the read with that pid and command line (the 4663/4688 pair), then checks that
stop() removed the ACE.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent import osflags
from agent.events.model import ReadEvent


def _skip_reason() -> str | None:
    if not osflags.WINDOWS:
        return "needs Windows: the Security event log, SACLs and the audit policy exist only there"
    import ctypes

    if not ctypes.windll.shell32.IsUserAnAdmin():
        return "needs an elevated (administrator) session to set SACLs and the audit policy"
    try:
        import win32evtlog  # noqa: F401
    except ImportError as exc:
        return f"needs pywin32 ({exc})"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def test_a_child_process_reading_the_planted_file_is_seen_with_its_command_line(tmp_path: Path) -> None:
    from agent.sensors import _eventlog_win32 as win32
    from agent.sensors._eventlog import EventLogSensor

    # resolve(): the runner's TEMP is an 8.3 short path (RUNNER~1), the Security log names files by
    # their long path; the planter's paths come from the profile list and are long already.
    folder = tmp_path.resolve() / ".aws"
    folder.mkdir()
    planted = folder / "credentials"
    planted.write_text("[prod-backup]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n")
    marker = f"tripkey-live-{uuid.uuid4().hex[:8]}"
    got: list[ReadEvent] = []
    sensor = EventLogSensor([str(planted)], got.append, wait_ms=200, policy_interval=3600)
    sensor.start()
    try:
        assert win32.has_audit_ace(str(folder))
        assert sensor.health().healthy, sensor.health().error
        # The planter replaces the file atomically: a file created after the ACE inherits it.
        planted.write_text(planted.read_text())
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; open(sys.argv[1]).read()", str(planted), marker]
        )
        child.wait(30)
        deadline = time.monotonic() + 60
        while not [e for e in got if e.pid == child.pid]:
            assert time.monotonic() < deadline, f"no read by pid {child.pid}; got {got}; {sensor.health()}"
            time.sleep(0.5)
        [read] = [e for e in got if e.pid == child.pid][:1]
        assert read.path == str(planted) and read.sensor == "eventlog"
        assert read.exe is not None and read.exe.lower().endswith(".exe")
        assert marker in read.cmdline, read.cmdline  # 4688's command line, joined by pid and time
        assert read.ppid is not None and read.user
    finally:
        sensor.stop()
    assert not win32.has_audit_ace(str(folder))
