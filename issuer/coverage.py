"""Is a device covered? What its last heartbeat says about planting, the sensor and the agent.

`GET /v1/devices` and `tripkey devices list` show it, so a device whose canaries are gone (a file
replaced by a FIFO or a symlink, a symlinked ~/.aws, a file that cannot be planted) is never shown as
`ok` with 0 of 2 targets planted. States, worst first:

* `stale`: no heartbeat for `stale_after_seconds` (or never): nothing below is known to be current;
* `not_planted`: at least one target is not planted (each reason says which and why), or the agent
  reports no target at all;
* `sensor_unhealthy`: reads of the planted files are not being recorded;
* `degraded`: planted and sensing, but something users rely on is down (the self-report socket);
* `ok`.
"""

from __future__ import annotations

from typing import Any

from issuer.models import Device
from issuer.timefmt import iso


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any, default: str) -> str:
    return str(value) if value not in (None, "") else default


def coverage_info(device: Device, stale: bool) -> dict[str, Any]:
    health = _dict(device.health)
    targets = [t for t in health.get("targets") or [] if isinstance(t, dict)]
    sensor, selfreport = _dict(health.get("sensor")), _dict(health.get("selfreport"))
    planted = sum(1 for t in targets if t.get("planted"))
    reasons: list[str] = []
    if device.last_heartbeat_at is None:
        reasons.append("the agent has never sent a heartbeat")
    elif stale:
        reasons.append(f"no heartbeat since {iso(device.last_heartbeat_at)}")
    not_planted = [t for t in targets if not t.get("planted")]
    for target in not_planted:
        reasons.append(f"{_text(target.get('path'), '?')}: {_text(target.get('error'), 'not planted')}")
    if device.last_heartbeat_at is not None and not targets:
        reasons.append("not planted: the agent reports no target")
    sensor_down = bool(sensor) and not sensor.get("healthy")
    if sensor_down:
        name = _text(sensor.get("name"), "sensor")
        reasons.append(f"sensor {name} is not working: {_text(sensor.get('error'), 'no reason given')}")
    selfreport_down = bool(selfreport.get("enabled")) and not selfreport.get("running")
    if selfreport_down:
        reasons.append(f"self-report socket is down: {_text(selfreport.get('error'), 'no reason given')}")
    if stale or device.last_heartbeat_at is None:
        state = "stale"
    elif not_planted or not targets:
        state = "not_planted"
    elif sensor_down:
        state = "sensor_unhealthy"
    elif selfreport_down:
        state = "degraded"
    else:
        state = "ok"
    return {"state": state, "planted": planted, "targets": len(targets), "reasons": reasons}


__all__ = ["coverage_info"]
