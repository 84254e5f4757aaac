"""macOS backend: Apple's `eslogger` (Endpoint Security, macOS 13+) streamed as JSON lines.

The agent runs `/usr/bin/eslogger open exec fork exit --format json` as a child process. That
needs root and Full Disk Access for the agent binary (the PPPC profile in
packaging/macos/tripkey-agent-pppc.mobileconfig grants it); without it eslogger exits at once
with ES_NEW_CLIENT_RESULT_ERR_NOT_PERMITTED, which start() turns into SensorUnavailable saying
so. Parsing is in eslogger_parse (pure, tested on fixtures); this module is the process plumbing:
a reader thread, a stderr collector, restart with back-off if eslogger dies, loud health.

Notification only: the reader is not held, so processes that exit at once are only known by
what eslogger itself carried (exe, pid, ppid, uid, start time, and argv if their exec was seen).

Full Disk Access: when Endpoint Security refuses eslogger (ES_NEW_CLIENT_RESULT_ERR_NOT_PERMITTED,
the TCC refusal), the sensor does not give up: it reports "Full Disk Access is missing" with the fix
in its health (so in `tripkey-agent status` and the heartbeat) and keeps retrying, with back-off up
to MAX_RESTART_DELAY, so a PPPC profile that MDM delivers after the package takes effect without
a restart. eslogger exiting for any other reason is restarted the same way and reported until it
has run for `startup_grace` seconds again. Any other failure to start at all is SensorUnavailable.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import logging
import os
import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

import psutil

from agent import osflags
from agent.events.model import user_name
from agent.sensors._eslogger_parse import EsloggerParser, ProcRecord
from agent.sensors.base import (
    AFTER_THE_FACT,
    Capabilities,
    ReadCallback,
    Sensor,
    SensorHealth,
    SensorUnavailable,
)

log = logging.getLogger(__name__)

ESLOGGER = "/usr/bin/eslogger"
EVENTS = ("open", "exec", "fork", "exit")
UNAVAILABLE_OS = "eslogger is only available on macOS 13+ (this host is not macOS)"
MAX_RESTART_DELAY = 300.0
REFUSED_MARKERS = ("NOT_PERMITTED", "TCC", "Full Disk Access")
FDA_HINT = (
    "grant Full Disk Access to the Tripkey agent (MDM: install the PPPC profile "
    "packaging/macos/tripkey-agent-pppc.mobileconfig; by hand: System Settings > Privacy & "
    "Security > Full Disk Access)"
)


def refused_by_tcc(detail: str) -> bool:
    """Whether eslogger's stderr says Endpoint Security refused it for want of Full Disk Access."""
    return any(marker in detail for marker in REFUSED_MARKERS)


def eslogger_command(eslogger: str = ESLOGGER) -> list[str]:
    return [eslogger, *EVENTS, "--format", "json"]


def psutil_fallback(pid: int) -> ProcRecord | None:
    """A live process the table does not know (it started before eslogger did)."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            record = ProcRecord(
                pid=pid,
                ppid=proc.ppid(),
                start_time=dt.datetime.fromtimestamp(proc.create_time(), tz=dt.UTC),
            )
            with contextlib.suppress(psutil.Error):
                record.exe = proc.exe() or None
            with contextlib.suppress(psutil.Error):
                record.args = tuple(proc.cmdline())
            with contextlib.suppress(psutil.Error):
                record.uid = proc.uids().real
            with contextlib.suppress(psutil.Error):
                record.cwd = proc.cwd() or None
        return record
    except (psutil.Error, OSError):
        return None


class EsloggerStream:
    """Run a line-producing command; hand each stdout chunk to `on_data`; keep stderr's tail.

    OS-independent so the plumbing is tested on Linux with a stand-in command.
    """

    def __init__(self, command: Sequence[str], on_data: Callable[[bytes], None]) -> None:
        self.command = list(command)
        self.on_data = on_data
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.stderr_tail.clear()
        self.proc = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._threads = [
            threading.Thread(target=self._pump, name="eslogger-stdout", daemon=True),
            threading.Thread(target=self._errors, name="eslogger-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            self.on_data(chunk)

    def _errors(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.stderr_tail.append(line)
                log.warning("eslogger: %s", line)

    def wait_output_done(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.wait_output_done(timeout)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        self.proc = None


class EsloggerSensor(Sensor):
    name = "eslogger"
    mode = "endpoint-security"
    capabilities: ClassVar[Capabilities] = AFTER_THE_FACT

    def __init__(
        self,
        paths: Iterable[str],
        callback: ReadCallback,
        *,
        eslogger: str = ESLOGGER,
        case_sensitive: bool = False,
        startup_grace: float = 1.5,
        restart_delay: float = 5.0,
        skip_pids: Iterable[int] = (),
    ) -> None:
        super().__init__(paths, callback)
        self.eslogger = eslogger
        self.startup_grace = startup_grace
        self.restart_delay = restart_delay
        self._lock = threading.Lock()
        self.parser = EsloggerParser(
            self.paths,
            case_sensitive=case_sensitive,
            skip_pids={os.getpid(), *skip_pids},
            user_name=user_name,
            fallback=psutil_fallback,
        )
        self.stream = EsloggerStream(eslogger_command(eslogger), self._on_data)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._error: str | None = None
        self._started = False
        self._launched_at = 0.0
        self.restarts = 0
        self.full_disk_access: bool | None = None  # None until eslogger has been tried

    @classmethod
    def check_available(cls, eslogger: str = ESLOGGER) -> str | None:
        if not osflags.MACOS:
            return UNAVAILABLE_OS
        release = platform.mac_ver()[0]
        try:
            major = int(release.split(".")[0])
        except ValueError:
            major = 0
        if major < 13:
            return f"eslogger needs macOS 13 (Ventura) or later; this host runs macOS {release or 'unknown'}"
        if os.geteuid() != 0:
            return "the eslogger sensor needs root (Endpoint Security clients must run as root)"
        if shutil.which(eslogger) is None:
            return f"{eslogger} not found (it ships with macOS 13+)"
        return None

    def start(self) -> None:
        if self._started:
            return
        problem = self.check_available(self.eslogger)
        if problem:
            raise SensorUnavailable(problem)
        self._launch_checked()
        self._started = True
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="eslogger-watch", daemon=True)
        self._watcher.start()

    def _launch_checked(self) -> None:
        """Start eslogger; if it dies within the grace period, say why. A Full Disk Access refusal
        leaves the sensor started and unhealthy (the watcher retries); anything else raises."""
        with self._lock:
            self.parser.new_stream()
        try:
            self.stream.start()
        except OSError as exc:
            raise SensorUnavailable(f"cannot run {self.eslogger}: {exc}") from exc
        self._launched_at = time.monotonic()
        deadline = self._launched_at + self.startup_grace
        while time.monotonic() < deadline and self.stream.exited() is None:
            time.sleep(0.05)
        code = self.stream.exited()
        if code is None:
            self.full_disk_access = True
            return
        self.stream.wait_output_done(2.0)
        detail = "; ".join(self.stream.stderr_tail) or f"exit status {code}"
        self.stream.stop()
        if refused_by_tcc(detail):
            self._note_refusal(detail, self.restart_delay)
            return
        raise SensorUnavailable(f"eslogger exited at start: {detail}")

    def _note_refusal(self, detail: str, retry_in: float) -> None:
        self.full_disk_access = False
        self._error = (
            f"Full Disk Access is missing: Endpoint Security refused eslogger ({detail}) — {FDA_HINT}; "
            f"retrying every {retry_in:.0f} s or less"
        )
        log.error("%s", self._error)

    def _on_data(self, chunk: bytes) -> None:
        with self._lock:
            events = self.parser.feed(chunk)
        for event in events:
            try:
                self.callback(event)
            except Exception:
                log.exception("read callback failed")

    def _watch(self) -> None:
        delay = self.restart_delay
        while not self._stop.wait(0.5):
            code = self.stream.exited()
            if code is None and self.stream.proc is not None:
                if self._error is not None and time.monotonic() - self._launched_at >= self.startup_grace:
                    self._error, self.full_disk_access, delay = None, True, self.restart_delay  # recovered
                continue
            detail = f"exit status {code}"
            if self.stream.proc is not None:  # it ran and exited: deliver what it wrote, then restart
                self.stream.wait_output_done(2.0)
                with self._lock:
                    tail = self.parser.finish()
                for event in tail:
                    self.callback(event)
                detail = "; ".join(self.stream.stderr_tail) or detail
                self.stream.stop()
            if refused_by_tcc(detail):
                self._note_refusal(detail, delay)
            elif self.full_disk_access is not False or self._error is None:
                self._error = f"eslogger exited with {detail}; restarting in {delay:.0f} s"
                log.error("%s", self._error)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, MAX_RESTART_DELAY)
            try:
                with self._lock:
                    self.parser.new_stream()
                self.stream.start()
                self._launched_at = time.monotonic()
                self.restarts += 1
            except OSError as exc:
                self._error = f"cannot restart eslogger: {exc}"
                log.error("%s", self._error)

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
            self._watcher = None
        self.stream.stop()
        self._started = False

    def set_paths(self, paths: Iterable[str]) -> None:
        self.paths = frozenset(paths)
        with self._lock:
            self.parser.set_paths(self.paths)

    def health(self) -> SensorHealth:
        running = self._started and self.stream.exited() is None
        error = self._error or (None if self._started else "not started")
        if self.parser.last_error and running and error is None:
            error = (
                f"skipped {self.parser.malformed} malformed eslogger line(s); last: {self.parser.last_error}"
            )
        return SensorHealth(
            name=self.name,
            mode=self.mode,
            healthy=running and self._error is None,
            error=error,
            lost_events=self.parser.lost_events,
        )


__all__ = ["EsloggerSensor", "EsloggerStream", "eslogger_command", "psutil_fallback", "refused_by_tcc"]
