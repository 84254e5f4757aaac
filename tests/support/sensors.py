"""Shared sensor fixtures. fanotify fixtures are prefixed `fan_`, audit fixtures `audit_`."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.events.model import ReadEvent
from tests.support.paths import REPO_ROOT

NOBODY = 65534


# ---- fanotify (helper C1) ---------------------------------------------------------------------


class Collector:
    """Thread-safe sensor callback that tests can wait on (shared by the fanotify and audit tests)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.events: list[ReadEvent] = []

    def __call__(self, event: ReadEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[ReadEvent]], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.events):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_for_pids(self, pids: set[int], timeout: float = 30.0) -> set[int]:
        """Wait until every pid has an event; returns the pids still missing."""
        self.wait_for(lambda evs: pids <= {e.pid for e in evs}, timeout)
        with self._cond:
            return pids - {e.pid for e in self.events}

    def for_pid(self, pid: int) -> list[ReadEvent]:
        with self._cond:
            return [e for e in self.events if e.pid == pid]


FanCollector = AuditCollector = Collector


@pytest.fixture
def fan_collector() -> FanCollector:
    return FanCollector()


@pytest.fixture
def fan_home() -> Iterator[Path]:
    """A world-traversable directory outside pytest's 0700 tmp tree, so non-root readers get in."""
    root = Path(tempfile.mkdtemp(prefix="tripkey-fan-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fan_plant(directory: Path, name: str = "credentials", text: str = "[prod-backup]\n") -> Path:
    """Write a planted-looking file readable by everyone (the readers run as several uids)."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    directory.chmod(0o755)
    path = directory / name
    path.write_text(text)
    path.chmod(0o644)
    return path


def fan_atomic_replace(path: Path, text: str, before_replace: Callable[[int], None] | None = None) -> None:
    """Replace a file the way the planter does: temp file in the same directory, fsync, then
    `before_replace(fd)` (the agent passes sensor.watch_new_file there), rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tripkey-")
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, 0o644)
        os.fsync(fd)
        if before_replace is not None:
            before_replace(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@pytest.fixture
def fan_target(fan_home: Path) -> Path:
    return fan_plant(fan_home / ".aws")


@pytest.fixture
def fan_sensor_factory() -> Iterator[Callable[..., object]]:
    """Start sensors (stopped at teardown, even when a test fails)."""
    from agent.sensors._fanotify import FanotifyNotifySensor, FanotifySensor

    started: list[FanotifySensor] = []
    # As `tripkey-agent run` does (agent.service.run_service): the objects alive now, here the whole
    # test session's, are frozen, so a full garbage collection cannot pause the capture worker past
    # the fail-open budget in the middle of an acceptance test.
    gc.freeze()

    def make(
        paths: list[Path], callback: Callable[[ReadEvent], None], notify: bool = False, **options: object
    ) -> FanotifySensor:
        cls = FanotifyNotifySensor if notify else FanotifySensor
        sensor = cls([str(p) for p in paths], callback, **options)
        sensor.start()
        started.append(sensor)
        return sensor

    yield make
    for sensor in started:
        sensor.stop()
    gc.unfreeze()


# ---- audit (helper C2) ------------------------------------------------------------------------
# A REAL auditd is started for the audit tests (auditd -n with a private config and log in a temp
# dir), unless the host already runs one: the kernel accepts a single audit daemon, so then we
# reuse it and `audit_daemon.log_path` is None. If the kernel audit subsystem is unusable here
# (`auditctl -s` fails: container without CAP_AUDIT_CONTROL, kernel booted with audit=0) the tests
# FAIL with that reason; set TRIPKEY_ALLOW_NO_AUDIT=1 to turn that into a skip on such machines.

from dataclasses import dataclass  # noqa: E402

_AUDITD_CONF = """\
local_events = yes
write_logs = yes
log_file = {log}
log_format = ENRICHED
flush = DATA
freq = 0
max_log_file = 8
num_logs = 2
max_log_file_action = ROTATE
space_left = 2
space_left_action = IGNORE
admin_space_left = 1
admin_space_left_action = IGNORE
disk_full_action = IGNORE
disk_error_action = IGNORE
plugin_dir = {plugins}
q_depth = 2000
overflow_action = SYSLOG
end_of_event_timeout = 2
"""


@dataclass
class AuditDaemon:
    pid: int
    log_path: Path | None  # None when an auditd we did not start was reused

    def log_lines(self) -> list[str]:
        if self.log_path is None or not self.log_path.exists():
            return []
        return self.log_path.read_text(errors="replace").splitlines()


def _audit_status() -> dict[str, int]:
    out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError((out.stderr or out.stdout).strip() or f"exit {out.returncode}")
    return {
        p[0]: int(p[1])
        for p in (line.split() for line in out.stdout.splitlines())
        if len(p) >= 2 and p[1].isdigit()
    }


def _audit_unusable(reason: str) -> None:
    if os.environ.get("TRIPKEY_ALLOW_NO_AUDIT") == "1":
        pytest.skip(f"kernel audit unavailable here: {reason}")
    pytest.fail(f"kernel audit unavailable here: {reason} (set TRIPKEY_ALLOW_NO_AUDIT=1 to skip)")


@pytest.fixture(scope="session")
def audit_daemon() -> Iterator[AuditDaemon]:
    if shutil.which("auditctl") is None or shutil.which("auditd") is None:
        _audit_unusable("auditctl/auditd not installed (Debian package auditd; `make system-deps`)")
    try:
        initial = _audit_status()
    except RuntimeError as exc:
        _audit_unusable(f"`auditctl -s` failed: {exc}")
    existing = initial.get("pid", 0)
    if existing and Path(f"/proc/{existing}").exists():
        yield AuditDaemon(pid=existing, log_path=None)
        return
    workdir = Path(tempfile.mkdtemp(prefix="tripkey-auditd-"))
    (workdir / "plugins.d").mkdir()
    log_path = workdir / "log" / "audit.log"
    log_path.parent.mkdir()
    conf = workdir / "auditd.conf"
    conf.write_text(_AUDITD_CONF.format(log=log_path, plugins=workdir / "plugins.d"))
    conf.chmod(0o600)
    stderr = open(workdir / "auditd.stderr", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["auditd", "-n", "-c", str(workdir)], stdout=stderr, stderr=stderr)
    try:
        deadline = time.monotonic() + 15
        while _audit_status().get("pid") != proc.pid:
            if proc.poll() is not None or time.monotonic() > deadline:
                detail = (workdir / "auditd.stderr").read_text(errors="replace").strip()
                pytest.fail(f"auditd did not register with the kernel (exit {proc.poll()}): {detail}")
            time.sleep(0.1)
        yield AuditDaemon(pid=proc.pid, log_path=log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr.close()
        rules = subprocess.run(["auditctl", "-l"], capture_output=True, text=True, check=False).stdout
        if initial.get("enabled") == 0 and "No rules" in rules:
            subprocess.run(["auditctl", "-e", "0"], capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def audit_collector() -> AuditCollector:
    return AuditCollector()


@pytest.fixture
def audit_home() -> Iterator[Path]:
    """A world-traversable directory with a planted-looking file readable by every uid."""
    root = Path(tempfile.mkdtemp(prefix="tripkey-audit-", dir="/tmp"))
    root.chmod(0o755)
    aws = root / ".aws"
    aws.mkdir(mode=0o755)
    (aws / "credentials").write_text("[prod-backup]\naws_access_key_id = AKIAEXAMPLE\n")
    (aws / "credentials").chmod(0o644)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def audit_sensor_factory(audit_daemon: AuditDaemon) -> Iterator[Callable[..., object]]:
    """Start AuditSensors against the real kernel (stopped at teardown, even when a test fails)."""
    from agent.sensors._audit import AuditSensor

    started: list[AuditSensor] = []

    def make(paths: list[Path], callback: Callable[[ReadEvent], None], **options: object) -> AuditSensor:
        sensor = AuditSensor([str(p) for p in paths], callback, **options)
        started.append(sensor)
        sensor.start()
        return sensor

    yield make
    for sensor in started:
        sensor.stop()


FAN_PRELOAD = (
    "import ctypes, ctypes.util, errno, json, logging, queue, resource, select, signal, pwd, shutil;"
    "import subprocess, encodings.ascii, encodings.latin_1, encodings.utf_8, psutil;"
    "import agent.sensors, agent.sensors._fanotify, agent.sensors._audit;"
    "from agent.sensors._fanotify_abi import _Libc; _Libc.get()"
)


def fan_run_unprivileged(code: str, preload: str = FAN_PRELOAD) -> subprocess.CompletedProcess[str]:
    """Run `code` in this interpreter as uid/gid nobody with no groups and no capabilities.

    The interpreter's stdlib may live under a 0700 /root, so modules are imported while still
    root (`preload`); then the child drops to nobody and only then runs `code` (read from stdin).
    """
    drop = (
        f"{preload}\nimport os\nos.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        "assert os.geteuid() != 0\nos.chdir('/')\nexec(compile(sys.stdin.read(), '<unprivileged>', 'exec'))"
    )
    return subprocess.run(
        [sys.executable, "-c", "import sys\n" + drop],
        input=code,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )
