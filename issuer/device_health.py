"""A heartbeat's health document, projected into the device columns that filters and coverage use.

The health JSON stays the record of what the agent said; these columns are derived from it at each
heartbeat so that "which devices have an unhealthy sensor" is an indexed query, not 100,000 JSON
parses. `health_hash` lets a heartbeat that changed nothing skip rewriting the document.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def health_hash(health: Mapping[str, Any]) -> str:
    canonical = json.dumps(health, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def health_columns(health: Mapping[str, Any]) -> dict[str, Any]:
    """The Device columns derived from one health document (see issuer/models.py Device)."""
    raw_sensor = health.get("sensor")
    sensor: Mapping[str, Any] = raw_sensor if isinstance(raw_sensor, Mapping) else {}
    targets = [t for t in health.get("targets") or [] if isinstance(t, Mapping)]
    healthy = sensor.get("healthy")
    return {
        "health_hash": health_hash(health),
        "sensor_name": str(sensor["name"])[:40] if sensor.get("name") else None,
        "sensor_healthy": healthy if isinstance(healthy, bool) else None,
        "targets_expected": len(targets),
        "targets_planted": sum(1 for t in targets if t.get("planted") is True),
        "sensor_lost_events": _count(sensor.get("lost_events")),
        "spool_dropped": _count(health.get("spool_dropped")),
        "spool_rejected": _count(health.get("spool_rejected")),
    }
