"""What each sensor can do on this host, and a live proof that the chosen one attributes a read.

    tripkey-agent sensors            # availability of every sensor, and what `auto` picks and why
    tripkey-agent sensors --live     # start the pick on a scratch file; a child `cat` reads it

The live check is how an operator (and the packaging test) learns that the installed agent really
loads its sensor here: the read is done by a child process because every sensor skips the agent's
own reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.events.model import ReadEvent
from agent.sensors import auto_order, create_sensor, select_sensor, unavailable_reason
from agent.sensors.base import SensorUnavailable


def availability(requested: str = "auto") -> dict[str, Any]:
    """Every sensor of this OS with None (usable) or what is missing, and what `requested` picks."""
    sensors = {name: unavailable_reason(name) for name in auto_order()}
    try:
        cls, selection = select_sensor(requested)
    except SensorUnavailable as exc:
        return {"requested": requested, "sensors": sensors, "pick": None, "reason": str(exc)}
    return {"requested": requested, "sensors": sensors, "pick": cls.name, "reason": selection.reason}


def live_check(requested: str = "auto", *, timeout: float = 10.0) -> dict[str, Any]:
    """Start the sensor on a scratch file, have a child `cat` read it, report what was recorded."""
    cat = shutil.which("cat")
    if cat is None:
        return {"ok": False, "error": "no `cat` on PATH to read the scratch file"}
    seen: list[ReadEvent] = []
    arrived = threading.Event()

    def on_read(event: ReadEvent) -> None:
        seen.append(event)
        arrived.set()

    with tempfile.TemporaryDirectory(prefix="tripkey-sensor-check-") as scratch:
        target = Path(scratch) / "credentials"
        target.write_text("[sensor-check]\n")
        try:
            sensor = create_sensor(requested, [str(target)], on_read)
            sensor.start()
        except SensorUnavailable as exc:
            return {"ok": False, "error": str(exc)}
        try:
            started = time.monotonic()
            child = subprocess.run([cat, str(target)], capture_output=True, check=False, timeout=timeout)
            arrived.wait(timeout)
            latency = time.monotonic() - started
            health = sensor.health().to_dict()
        finally:
            sensor.stop()
    mine = [e for e in seen if e.exe and os.path.basename(e.exe) == "cat"]
    result: dict[str, Any] = {"ok": bool(mine), "sensor": sensor.name, "mode": sensor.mode, "health": health}
    if child.returncode != 0:
        result.update(ok=False, error=f"the child `cat` failed: {child.stderr.decode(errors='replace')}")
    elif mine:
        event = mine[0]
        result["read"] = {
            "pid": event.pid,
            "exe": event.exe,
            "cmdline": list(event.cmdline),
            "uid": event.uid,
        }
        result["seconds"] = round(latency, 3)
    else:
        result["error"] = f"no read of the scratch file was recorded within {timeout:g} s"
    return result


__all__ = ["availability", "live_check"]
