"""The real eslogger sensor on macOS: Endpoint Security sees a child process open the planted file.

Runs only on macOS 13+ as root (the CI job `macos-eslogger` runs it with sudo). Endpoint Security
also needs Full Disk Access for the process that runs eslogger; a GitHub-hosted runner cannot grant
it (TCC's system database is SIP-protected and no MDM profile can be installed there), so there the
test starts the sensor, sees it report "Full Disk Access is missing" in its health, and skips with
that text as the reason. On a Mac where FDA is granted (the PPPC profile, or by hand for the
terminal) it checks the whole path: the read, its pid and command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent import osflags
from agent.events.model import ReadEvent


def _skip_reason() -> str | None:
    if not osflags.MACOS:
        return "needs macOS 13+: eslogger (Endpoint Security) exists only there"
    if os.geteuid() != 0:
        return "needs root: Endpoint Security clients must run as root (run pytest with sudo)"
    if shutil.which("/usr/bin/eslogger") is None:
        return "needs /usr/bin/eslogger (macOS 13 or later)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def test_a_child_process_opening_the_planted_file_is_seen(tmp_path: Path) -> None:
    from agent.sensors._eslogger import EsloggerSensor

    planted = tmp_path / ".aws" / "credentials"
    planted.parent.mkdir()
    planted.write_text("[prod-backup]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n")
    got: list[ReadEvent] = []
    sensor = EsloggerSensor([str(planted)], got.append, startup_grace=3.0)
    sensor.start()
    try:
        if sensor.full_disk_access is False:
            pytest.skip(f"Full Disk Access cannot be granted on this runner: {sensor.health().error}")
        marker = f"tripkey-live-{uuid.uuid4().hex[:8]}"
        child = subprocess.run(
            [sys.executable, "-c", "import sys; open(sys.argv[1]).read()", str(planted), marker]
        )
        assert child.returncode == 0
        deadline = time.monotonic() + 30
        while not [e for e in got if marker in e.cmdline]:
            assert time.monotonic() < deadline, f"no read seen; {sensor.health()}"
            time.sleep(0.2)
        [read] = [e for e in got if marker in e.cmdline][:1]
        assert read.sensor == "eslogger" and read.path == str(planted)
        assert read.exe and read.ppid == os.getpid()
    finally:
        sensor.stop()
