"""What the fanotify sensor costs a reader: `cat` latency without/with the sensor, and events/s.

Latency: `runs` sequential `cat FILE` processes (spawn to exit, as a user sees it) per scenario.
Throughput: one process opening+closing the planted file `opens` times in a loop; with the
permission sensor each open waits for capture + FAN_ALLOW, so opens/s is the sensor's event rate.
Needs root (fanotify). `python -m bench fanotify`.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.events.model import ReadEvent
from agent.sensors._fanotify import FanotifyNotifySensor, FanotifySensor
from agent.sensors.base import SensorUnavailable

TITLE = "fanotify sensor: reader latency and event rate"
SYSTEM_PYTHON = "/usr/bin/python3"


class _Counter:
    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, event: ReadEvent) -> None:
        with self._lock:
            self.count += 1

    def wait(self, at_least: int, timeout: float, settle: float = 0.5) -> int:
        """Until `at_least` events arrived, nothing new came for `settle` s, or `timeout`."""
        deadline = time.monotonic() + timeout
        last, last_change = self.count, time.monotonic()
        while self.count < at_least and time.monotonic() < deadline:
            time.sleep(0.01)
            if self.count != last:
                last, last_change = self.count, time.monotonic()
            elif time.monotonic() - last_change > settle:
                break
        return self.count


def _percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))
    return ordered[index]


def _cat_latencies(path: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _open_loop(path: Path, opens: int) -> float:
    """Seconds for one process to open+close `path` `opens` times (interpreter start excluded)."""
    code = (
        "import os, sys, time\n"
        f"p = {str(path)!r}\n"
        "t = time.perf_counter()\n"
        f"for _ in range({opens}): os.close(os.open(p, os.O_RDONLY))\n"
        "print(time.perf_counter() - t)\n"
    )
    python = SYSTEM_PYTHON if os.access(SYSTEM_PYTHON, os.X_OK) else "python3"
    out = subprocess.run([python, "-S", "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


SCENARIOS: list[tuple[str, type[FanotifySensor] | None]] = [
    ("no sensor", None),
    ("fanotify (permission)", FanotifySensor),
    ("fanotify-notify", FanotifyNotifySensor),
]


def _measure(sensor_cls: type[FanotifySensor] | None, path: Path, runs: int, opens: int) -> dict[str, Any]:
    counter = _Counter()
    sensor = sensor_cls([str(path)], counter) if sensor_cls else None
    if sensor:
        sensor.start()
    try:
        _cat_latencies(path, 5)  # warm the page cache and the dynamic loader
        baseline = counter.wait(5 if sensor else 0, 5)
        latencies = _cat_latencies(path, runs)
        loop_seconds = _open_loop(path, opens)
        # notify mode: the kernel merges identical queued events of one process, so the open
        # loop yields fewer records than opens; that is coalescing, not loss (lost stays 0).
        recorded = counter.wait(baseline + runs + opens, 10) - baseline
        health = sensor.health() if sensor else None
    finally:
        if sensor:
            sensor.stop()
    return {
        "latencies": latencies,
        "loop_seconds": loop_seconds,
        "recorded": recorded if sensor else None,
        "lost": health.lost_events if health else None,
        "guard": health.guard_answered if health else None,
        "max_hold_ms": health.max_hold_ms if health else None,
    }


def run(runs: int = 300, opens: int = 2000, rounds: int = 3) -> list[dict[str, Any]]:
    """Scenarios are interleaved over `rounds` so load from other work hits them alike.

    Columns: cat latency (spawn to exit) median/p95/p99 ms; opens_per_s and per_open_ms from one
    process opening the file in a loop (with the permission sensor: the sensor's event rate);
    recorded/lost/guard_allowed/max_hold_ms from the sensor's health.
    """
    if os.geteuid() != 0:
        raise SensorUnavailable("the fanotify bench needs root (CAP_SYS_ADMIN)")
    home = Path(tempfile.mkdtemp(prefix="tripkey-bench-", dir="/tmp"))
    samples: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in SCENARIOS}
    try:
        target = home / ".aws" / "credentials"
        target.parent.mkdir()
        target.write_text("[prod-backup]\naws_access_key_id = AKIAEXAMPLEEXAMPLE00\n")
        for round_ in range(rounds):  # rotate the order too: no scenario always runs first
            for label, cls in SCENARIOS[round_ % 3 :] + SCENARIOS[: round_ % 3]:
                samples[label].append(_measure(cls, target, runs // rounds, opens // rounds))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    rows = []
    for label, _ in SCENARIOS:
        parts = samples[label]
        latencies = [ms for part in parts for ms in part["latencies"]]
        loop_seconds = sum(part["loop_seconds"] for part in parts)
        has_sensor = parts[0]["recorded"] is not None
        rows.append({
            "scenario": label,
            "cat_runs": len(latencies),
            "median_ms": statistics.median(latencies),
            "p95_ms": _percentile(latencies, 95),
            "p99_ms": _percentile(latencies, 99),
            "opens_per_s": round(opens // rounds * rounds / loop_seconds),
            "per_open_ms": loop_seconds * 1000 / (opens // rounds * rounds),
            "recorded": sum(p["recorded"] for p in parts) if has_sensor else None,
            "lost": sum(p["lost"] for p in parts) if has_sensor else None,
            "guard_allowed": sum(p["guard"] for p in parts) if has_sensor else None,
            "max_hold_ms": max(p["max_hold_ms"] for p in parts) if has_sensor else None,
        })  # fmt: skip
    base = rows[0]["median_ms"]
    for row in rows:
        row["added_median_ms"] = row["median_ms"] - base
    return rows
