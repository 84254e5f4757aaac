"""Audit rule upkeep for the audit sensor: one file watch per planted file, kept in the kernel.

Rules are installed with ``auditctl`` as ``-a always,exit -F path=FILE -F perm=r -F key=KEY`` (listed
back as ``-w FILE -p r -k KEY``). Only our own rules are ever removed (``auditctl -d`` with the exact
rule, never ``-D``); rules that someone else deleted are put back by `maintain_once`.
"""

from __future__ import annotations

import logging
import subprocess
import threading

from agent.sensors.base import SensorError

log = logging.getLogger(__name__)


def audit_status(auditctl: str) -> dict[str, int]:
    """`auditctl -s` as {field: number} (enabled, pid, backlog_limit, lost, ...)."""
    try:
        result = subprocess.run([auditctl, "-s"], capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        raise SensorError(f"{auditctl} -s could not run: {exc}") from exc
    if result.returncode != 0:
        raise SensorError(f"{auditctl} -s failed: {(result.stderr or result.stdout).strip()}")
    status: dict[str, int] = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            status[parts[0]] = int(parts[1])
    if "enabled" not in status:
        raise SensorError(f"{auditctl} -s printed no status: {result.stdout.strip()[:200]}")
    return status


class AuditRules:
    """The watches carrying `key`, for `paths`. Callers hold `lock` around changes."""

    def __init__(self, auditctl: str, key: str) -> None:
        self.auditctl = auditctl
        self.key = key
        self.lock = threading.Lock()
        self.installed: set[str] = set()
        self.restored = 0  # how many times a deleted rule was put back

    def status(self) -> dict[str, int]:
        return audit_status(self.auditctl)

    def rule(self, path: str) -> list[str]:
        return ["always,exit", "-F", f"path={path}", "-F", "perm=r", "-F", f"key={self.key}"]

    def add(self, path: str) -> None:
        result = self.auditctl_run("-a", *self.rule(path))
        if result.returncode != 0 and "exists" not in result.stderr:
            raise SensorError(f"auditctl could not add the watch for {path}: {result.stderr.strip()}")
        self.installed.add(path)

    def delete(self, path: str) -> None:
        result = self.auditctl_run("-d", *self.rule(path))
        if result.returncode != 0 and "No such file" not in result.stderr:
            log.warning("auditctl could not delete the watch for %s: %s", path, result.stderr.strip())
        self.installed.discard(path)

    def loaded(self) -> list[str]:
        """Paths of the rules carrying our key that are loaded in the kernel now."""
        result = self.auditctl_run("-l", "-k", self.key)
        suffix = f" -p r -k {self.key}"
        return [
            line[3 : -len(suffix)]
            for line in result.stdout.splitlines()
            if line.startswith("-w ") and line.endswith(suffix)
        ]

    def auditctl_run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.auditctl, *args], capture_output=True, text=True, timeout=30, check=False)

    def run(self, *args: str) -> None:
        result = self.auditctl_run(*args)
        if result.returncode != 0:
            raise SensorError(f"auditctl {' '.join(args)} failed: {result.stderr.strip()}")

    def restore_missing(self, paths: frozenset[str], stopping: threading.Event) -> list[str]:
        """Add back the rules of `paths` that are not loaded; returns the failures (holds the lock)."""
        failures = []
        with self.lock:
            loaded = set(self.loaded())
            for path in sorted(paths - loaded):
                if stopping.is_set():
                    break
                # Removed by someone else, or by the kernel when the file's directory was deleted.
                log.warning("audit watch for %s is gone; adding it back", path)
                try:
                    self.add(path)
                    self.restored += 1
                except SensorError as exc:
                    failures.append(str(exc))
        return failures


__all__ = ["AuditRules", "audit_status"]
