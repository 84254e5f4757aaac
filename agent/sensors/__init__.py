"""Sensor registry and selection: one `create_sensor` over every OS mechanism (psutil-style).

    sensor = create_sensor(config.sensor, paths, queue.put)   # "auto" or an explicit name
    sensor.start()
    log.info("sensor %s (%s): %s", sensor.name, sensor.mode, sensor.selection.reason)

An explicitly named sensor that cannot run here raises SensorUnavailable saying exactly what is
missing: it never falls back. `auto` tries this OS's sensors strongest first and logs which one it
picked and why the stronger ones were skipped (a WARNING when the pick is weaker). Sensor modules
are imported lazily, so a Linux agent never imports the macOS or Windows backends.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
from collections.abc import Iterable
from typing import Any

from agent import osflags
from agent.sensors.base import ReadCallback, Sensor, SensorUnavailable
from agent.sensors.names import SENSOR_NAMES

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    module: str
    cls: str
    os_ok: bool
    os_name: str


def _registry() -> dict[str, _Entry]:
    # Built on call (not at import) so tests and tools see the OS flags as they are now.
    return {
        "ebpf": _Entry("agent.sensors._ebpf", "EbpfSensor", osflags.LINUX, "Linux"),
        "fanotify": _Entry("agent.sensors._fanotify", "FanotifySensor", osflags.LINUX, "Linux"),
        "fanotify-notify": _Entry("agent.sensors._fanotify", "FanotifyNotifySensor", osflags.LINUX, "Linux"),
        "audit": _Entry("agent.sensors._audit", "AuditSensor", osflags.LINUX, "Linux"),
        "eslogger": _Entry("agent.sensors._eslogger", "EsloggerSensor", osflags.MACOS, "macOS"),
        "eventlog": _Entry("agent.sensors._eventlog", "EventLogSensor", osflags.WINDOWS, "Windows"),
    }


def auto_order() -> tuple[str, ...]:
    """`auto`'s preference on this OS, strongest first.

    Linux: eBPF (context captured in the kernel at open time, keyed by inode; the reader never
    waits) > permission fanotify (context captured while the reader is held, with an external
    deadman) > audit (synchronous pid/uid/exe in the syscall record) > notification fanotify (the
    reader may be gone before its context is read).
    """
    if osflags.LINUX:
        return ("ebpf", "fanotify", "audit", "fanotify-notify")
    if osflags.MACOS:
        return ("eslogger",)
    if osflags.WINDOWS:
        return ("eventlog",)
    return ()


@dataclasses.dataclass(frozen=True, slots=True)
class Selection:
    """Which sensor was chosen and why; `skipped` lists (name, what is missing) for stronger ones."""

    requested: str
    name: str
    reason: str
    skipped: tuple[tuple[str, str], ...] = ()


def sensor_class(name: str) -> type[Sensor]:
    """The class behind an explicit sensor name; SensorUnavailable if it cannot exist on this OS."""
    entry = _registry().get(name)
    if entry is None:
        raise ValueError(f"unknown sensor {name!r}; choose one of: {', '.join(SENSOR_NAMES)}")
    if not entry.os_ok:
        raise SensorUnavailable(f"sensor {name!r} exists only on {entry.os_name}; this host cannot run it")
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        raise SensorUnavailable(f"sensor {name!r} is not part of this agent build ({exc})") from exc
    cls: type[Sensor] | None = getattr(module, entry.cls, None)
    if cls is None:
        raise SensorUnavailable(f"sensor {name!r}: {entry.module} has no {entry.cls} (agent build is broken)")
    return cls


def unavailable_reason(name: str) -> str | None:
    """None if sensor `name` can start here, else what is missing."""
    try:
        cls = sensor_class(name)
    except SensorUnavailable as exc:
        return str(exc)
    return cls.check_available()


def select_sensor(name: str) -> tuple[type[Sensor], Selection]:
    if name != "auto":
        cls = sensor_class(name)
        missing = cls.check_available()
        if missing:
            raise SensorUnavailable(missing)
        return cls, Selection(requested=name, name=name, reason=f"configured explicitly (sensor = {name!r})")
    skipped: list[tuple[str, str]] = []
    for candidate in auto_order():
        missing = unavailable_reason(candidate)
        if missing is None:
            cls = sensor_class(candidate)
            reason = f"auto: {candidate} is the strongest sensor available on this host"
            if skipped:
                reason += " (skipped " + "; ".join(f"{n}: {why}" for n, why in skipped) + ")"
            return cls, Selection(requested="auto", name=candidate, reason=reason, skipped=tuple(skipped))
        skipped.append((candidate, missing))
    details = "; ".join(f"{n}: {why}" for n, why in skipped) or "no sensor exists for this OS"
    raise SensorUnavailable(f"no sensor can run on this host: {details}")


def create_sensor(name: str, paths: Iterable[str], callback: ReadCallback, **options: Any) -> Sensor:
    """Build (not start) the sensor `name` ("auto" or one of SENSOR_NAMES) for `paths`.

    `options` go to the sensor's constructor (e.g. budget=0.1 for fanotify). With "auto", options
    the chosen sensor does not take are dropped (they were meant for another backend); with an
    explicit name an unknown option is a TypeError. The result carries `.selection` (Selection).
    """
    cls, selection = select_sensor(name)
    if name == "auto":
        accepted = inspect.signature(cls.__init__).parameters
        dropped = sorted(k for k in options if k not in accepted)
        if dropped:
            log.debug("auto picked %s; ignoring options for other sensors: %s", cls.name, dropped)
        options = {k: v for k, v in options.items() if k in accepted}
    sensor = cls(paths, callback, **options)
    sensor.selection = selection  # type: ignore[attr-defined]
    weaker = sensor.capabilities.weaker or bool(selection.skipped)
    log.log(
        logging.WARNING if weaker else logging.INFO,
        "sensor %s (mode %s) selected: %s",
        sensor.name,
        sensor.mode,
        selection.reason,
    )
    return sensor


__all__ = [
    "SENSOR_NAMES",
    "Selection",
    "Sensor",
    "SensorUnavailable",
    "auto_order",
    "create_sensor",
    "select_sensor",
    "sensor_class",
    "unavailable_reason",
]
