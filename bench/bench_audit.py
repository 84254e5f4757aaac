"""Audit backend: how fast reads of a watched file reach the callback, and whether any is lost.

Needs root and the kernel audit subsystem (no auditd needed: the sensor reads the multicast group;
without auditd the kernel also copies records to its log). Rows say why when it cannot run.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.events.model import ReadEvent
from agent.sensors._audit import AuditSensor

READERS = 300


def run() -> list[dict[str, Any]]:
    problem = AuditSensor.check_available()
    if problem:
        return [{"case": "audit sensor", "readers": 0, "note": f"not run: {problem}"}]
    auditd = "yes" if _audit_pid() else "no"
    root = Path(tempfile.mkdtemp(prefix="tripkey-bench-audit-"))
    try:
        target = root / "credentials"
        target.write_text("[prod-backup]\n")
        arrived: dict[int, float] = {}
        done = threading.Condition()

        def callback(event: ReadEvent) -> None:
            with done:
                arrived[event.pid] = time.monotonic()
                done.notify_all()

        sensor = AuditSensor([str(target)], callback, key="cfgread-bench")
        sensor.start()
        try:
            return _measure(sensor, target, arrived, done, auditd)
        finally:
            sensor.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(
    sensor: AuditSensor, target: Path, arrived: dict[int, float], done: threading.Condition, auditd: str
) -> list[dict[str, Any]]:
    cat = shutil.which("cat") or "/bin/cat"
    rows = []
    for case, count, pause in (("burst of cat readers", READERS, 0.0), ("cat readers 50 ms apart", 40, 0.05)):
        with done:
            arrived.clear()
        exited: dict[int, float] = {}
        start = time.monotonic()
        for _ in range(count):
            proc = subprocess.Popen([cat, str(target)], stdout=subprocess.DEVNULL)
            proc.wait()
            exited[proc.pid] = time.monotonic()
            time.sleep(pause)
        spawn_seconds = time.monotonic() - start
        with done:
            done.wait_for(lambda pids=set(exited): pids <= set(arrived), timeout=30)
            seen = [pid for pid in exited if pid in arrived]
            delays = sorted((arrived[pid] - exited[pid]) * 1000 for pid in seen)
        rows.append(
            {
                "case": case,
                "readers": count,
                "recorded": len(seen),
                "lost_events": sensor.health().lost_events,
                "reads_per_s": round(count / spawn_seconds),
                "delay_p50_ms": round(statistics.median(delays), 2) if delays else None,
                "delay_max_ms": round(delays[-1], 2) if delays else None,
                "note": f"delay after the reader exited; auditd running: {auditd}",
            }
        )
    return rows


def _audit_pid() -> int:
    out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "pid" and parts[1].isdigit():
            return int(parts[1])
    return 0
