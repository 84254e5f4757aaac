"""Linux audit backend: kernel audit watch rules + the audit netlink multicast read-log group.

Why this shape:

* Rules are file watches, one per planted file, installed with ``auditctl``:
  ``-a always,exit -F path=FILE -F perm=r -F key=KEY`` (listed back as ``-w FILE -p r -k KEY``).
  The kernel keeps a watch on the *parent directory* and re-points the rule at the new inode when a
  file of that name is created or renamed in, so an atomic replace (temp file + rename) keeps being
  watched (tested). ``-F dir=`` would watch every file of the directory tree (``~/.aws/config`` too)
  and needs filtering anyway, so we do not use it.
* The key defaults to a neutral ``cfgread``: ``auditctl -l`` must not announce "canary".
* Records are read from the multicast group ``AUDIT_NLGRP_READLOG`` (needs CAP_AUDIT_READ): it
  coexists with auditd (which owns the unicast channel) and works without it, independently of
  auditd's log location, format, rotation or permissions. Socket overflow (ENOBUFS) and the
  kernel's ``lost`` counter are reported as lost events, never silently dropped. Without auditd
  the kernel also prints each record to the kernel log (rate-limited): run auditd to avoid that.
* Only our own rules are ever removed (``auditctl -d`` with the exact rule); never ``-D``.
  If someone deletes them (``augenrules --load`` starts with ``-D``), the CONFIG_CHANGE record and a
  periodic check put them back.
* If auditing is disabled (``enabled 0``) we enable it and, at stop, disable it again only if no
  auditd and no other rule appeared meanwhile. A raised backlog limit is left raised (harmless).

Limits (documented, not hidden): processes forked before auditing was first enabled have no audit
context and are not seen; io_uring opens are not syscalls; PROCTITLE is truncated to 128 bytes
(we use the full /proc cmdline when the reader is still alive); ancestors come from /proc at
delivery time and are marked missing (pid only) once a process has exited.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import socket
import threading
from collections.abc import Iterable
from typing import ClassVar

import psutil

from agent import osflags
from agent.events.model import ReadEvent, user_name
from agent.sensors._audit_netlink import AuditReader, open_multicast_socket
from agent.sensors._audit_parse import AuditRecord, AuditSyscall, syscall_from_event
from agent.sensors._audit_proc import ancestors_of, live_process, utc
from agent.sensors._audit_rules import AuditRules, audit_status
from agent.sensors.base import (
    AFTER_THE_FACT,
    Capabilities,
    ReadCallback,
    Sensor,
    SensorError,
    SensorHealth,
    SensorUnavailable,
)

log = logging.getLogger(__name__)

CAP_AUDIT_CONTROL = 30
CAP_AUDIT_READ = 37


def _effective_caps() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


class AuditSensor(Sensor):
    name = "audit"
    mode = "netlink-multicast"
    capabilities: ClassVar[Capabilities] = AFTER_THE_FACT

    def __init__(
        self,
        paths: Iterable[str],
        callback: ReadCallback,
        *,
        key: str = "cfgread",
        auditctl: str = "auditctl",
        min_backlog: int = 8192,
        rule_check_interval: float = 30.0,
        include_failed: bool = False,
        event_timeout: float = 2.0,
        skip_pids: Iterable[int] = (),
    ) -> None:
        super().__init__([os.path.abspath(p) for p in paths], callback)
        if not key or any(c.isspace() for c in key):
            raise ValueError(f"audit rule key must be a non-empty word, got {key!r}")
        self.key = key
        self.auditctl = auditctl
        self.min_backlog = min_backlog
        self.rule_check_interval = rule_check_interval
        self.include_failed = include_failed
        self.event_timeout = event_timeout
        self.skip_pids = frozenset({os.getpid(), *skip_pids})
        self._rules = AuditRules(auditctl, key)
        self._reader: AuditReader | None = None
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._recheck = threading.Event()
        self._threads: list[threading.Thread] = []
        self._enabled_by_us = False
        self._kernel_lost_base = 0
        self._kernel_lost = 0
        self._error: str | None = None
        self._started = False

    @property
    def rules_restored(self) -> int:
        """How many times a deleted rule was put back."""
        return self._rules.restored

    # ---- availability -------------------------------------------------------------------------

    @classmethod
    def check_available(cls, auditctl: str = "auditctl") -> str | None:
        if not osflags.LINUX:
            return "the audit sensor needs Linux (kernel audit subsystem)"
        caps = _effective_caps()
        wanted = ((CAP_AUDIT_CONTROL, "CAP_AUDIT_CONTROL"), (CAP_AUDIT_READ, "CAP_AUDIT_READ"))
        missing = [name for bit, name in wanted if not caps >> bit & 1]
        if missing:
            return (
                f"the audit sensor needs root ({' and '.join(missing)} missing: "
                "CAP_AUDIT_CONTROL to add rules, CAP_AUDIT_READ to read the audit multicast log)"
            )
        if shutil.which(auditctl) is None:
            return (
                f"{auditctl} not found on PATH: install the audit userspace tools "
                "(Debian/Ubuntu: apt-get install auditd; RHEL/Fedora: dnf install audit)"
            )
        try:
            status = audit_status(auditctl)
        except SensorError as exc:
            return f"kernel audit subsystem unavailable: {exc}"
        if status.get("enabled") == 2:
            return "audit rules are locked (auditctl -s: enabled 2, immutable until reboot); cannot add rules"
        return None

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        problem = self.check_available(self.auditctl)
        if problem:
            raise SensorUnavailable(problem)
        # Bound before any rule exists: records queue in the socket, none is missed at start.
        self._sock = open_multicast_socket()
        self._stop.clear()
        try:
            self._prepare_kernel()
        except SensorError:
            self.stop()
            raise
        self._started = True
        # An unhandled exception or sys.exit must not leave our rules in the kernel (SIGKILL can:
        # the next start removes those). stop() unregisters this.
        atexit.register(self.stop)
        self._reader = AuditReader(
            self._sock, self._stop, self._note_config_change, self._handle, self.event_timeout
        )
        self._threads = [
            threading.Thread(target=self._reader.run, name="audit-reader", daemon=True),
            threading.Thread(target=self._maintain_loop, name="audit-rules", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _prepare_kernel(self) -> None:
        status = self._rules.status()
        if status.get("enabled") == 0:
            self._rules.run("-e", "1")
            self._enabled_by_us = True
        if status.get("backlog_limit", 0) < self.min_backlog:
            self._rules.run("-b", str(self.min_backlog))
        self._kernel_lost_base = self._kernel_lost = status.get("lost", 0)
        with self._rules.lock:
            # Rules with our key for files no longer planted: left by an agent that crashed.
            for stale in sorted(set(self._rules.loaded()) - self.paths):
                self._rules.delete(stale)
            for path in sorted(self.paths):
                self._rules.add(path)

    def stop(self) -> None:
        atexit.unregister(self.stop)
        self._stop.set()
        self._recheck.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []
        with self._rules.lock:
            for path in sorted(self._rules.installed):
                self._rules.delete(path)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._enabled_by_us:
            self._enabled_by_us = False
            with contextlib.suppress(SensorError):
                status = self._rules.status()
                if status.get("pid", 0) == 0 and self._rules.loaded() == []:
                    self._rules.run("-e", "0")
        self._started = False

    def set_paths(self, paths: Iterable[str]) -> None:
        """Add/remove rules; a file whose directory is missing is retried by the rule check."""
        new = frozenset(os.path.abspath(p) for p in paths)
        failures = []
        with self._rules.lock:
            self.paths = new
            if self._started:
                for path in sorted(self._rules.installed - new):
                    self._rules.delete(path)
                for path in sorted(new - self._rules.installed):
                    try:
                        self._rules.add(path)
                    except SensorError as exc:
                        failures.append(str(exc))
        self._recheck.set()  # re-planted files whose directory was recreated get their rule back now
        if failures:
            self._error = "; ".join(failures)
            raise SensorError(self._error)

    def health(self) -> SensorHealth:
        overflows = self._reader.overflows if self._reader else 0
        lost = overflows + max(0, self._kernel_lost - self._kernel_lost_base)
        alive = self._started and all(t.is_alive() for t in self._threads)
        error = self._error or (self._reader.error if self._reader else None)
        return SensorHealth(
            name=self.name,
            mode=self.mode,
            healthy=alive and error is None,
            error=error if self._started else (error or "not started"),
            lost_events=lost,
        )

    def installed_rules(self) -> list[str]:
        """Paths whose rule this sensor believes installed (for status and tests)."""
        with self._rules.lock:
            return sorted(self._rules.installed)

    # ---- rule upkeep --------------------------------------------------------------------------

    def _maintain_loop(self) -> None:
        while not self._stop.is_set():
            self._recheck.wait(self.rule_check_interval)
            self._recheck.clear()
            if self._stop.is_set():
                return
            try:
                self._maintain_once()
            except Exception as exc:
                self._error = f"audit rule check failed: {exc}"
                log.exception("audit rule check failed")

    def _maintain_once(self) -> None:
        status = self._rules.status()
        self._kernel_lost = status.get("lost", 0)
        if status.get("enabled") == 0:
            log.warning("kernel auditing was disabled by someone else; re-enabling it")
            self._rules.run("-e", "1")
        failures = self._rules.restore_missing(self.paths, self._stop)
        self._error = "; ".join(failures) or None

    # ---- records ------------------------------------------------------------------------------

    def _note_config_change(self, record: AuditRecord) -> None:
        if (
            record.type == "CONFIG_CHANGE"
            and record.fields.get("op") == "remove_rule"
            and self.key in (record.fields.get("key") or "")
            and not self._stop.is_set()
        ):
            self._recheck.set()

    def _handle(self, records: list[AuditRecord]) -> None:
        try:
            parsed = syscall_from_event(records)
            if parsed is None or self.key not in parsed.keys:
                return
            if not parsed.is_open() or parsed.pid in self.skip_pids:
                return
            if parsed.success is False and not self.include_failed:
                return
            self.callback(self._to_event(parsed))
        except Exception:
            log.exception("could not handle audit event")

    def _match_path(self, parsed: AuditSyscall) -> str:
        candidates: list[str] = []
        for item in parsed.paths:
            if not item.name or item.nametype == "PARENT":
                continue
            name = item.name
            if not os.path.isabs(name) and parsed.cwd:
                name = os.path.normpath(os.path.join(parsed.cwd, name))
            if name in self.paths:
                return name
            candidates.append(name)
        # openat(dirfd, relative) names are relative to dirfd, not cwd: fall back to the inode.
        inodes = {p.inode for p in parsed.paths if p.inode}
        for path in self.paths:
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino in inodes:
                    return path
        if len(self.paths) == 1:
            return next(iter(self.paths))
        return candidates[0] if candidates else "?"

    def _to_event(self, parsed: AuditSyscall) -> ReadEvent:
        event_ts = parsed.time.timestamp()
        cmdline: tuple[str, ...] = parsed.proctitle
        start_time = None
        reader = live_process(parsed.pid, event_ts)
        if reader is not None:
            with contextlib.suppress(psutil.Error):
                full = tuple(reader.cmdline())
                # PROCTITLE is cut at 128 bytes; /proc has it whole while the reader lives.
                if full and (not cmdline or full[0] == cmdline[0]):
                    cmdline = full
                start_time = utc(reader.create_time())
        return ReadEvent(
            time=parsed.time,
            path=self._match_path(parsed),
            pid=parsed.pid,
            sensor=self.name,
            access="open",
            ppid=parsed.ppid,
            exe=parsed.exe,
            cmdline=cmdline,
            uid=parsed.uid,
            user=user_name(parsed.uid),
            start_time=start_time,
            cwd=parsed.cwd,
            ancestors=ancestors_of(parsed.ppid, event_ts),
        )
