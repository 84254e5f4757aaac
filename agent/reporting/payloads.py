"""Every payload that leaves the host, built in one place: read, tamper and self-report events for
the spool, and the heartbeat (docs/api.md defines each shape).

Pure functions. Each passes through the one known-secret scrubber (agent.events.secrets) last, so
no planted secret key can reach the issuer whatever a sensor's redaction or a message missed.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from agent import __version__
from agent.clock import to_iso
from agent.events.bounds import TEXT_BUDGET, bound_optional, bound_text
from agent.events.model import READER_FIELDS, ReadEvent
from agent.events.secrets import KnownSecrets, known
from agent.events.trust import Classification
from agent.state import StateStore

Secrets = Iterable[str] | KnownSecrets

# The version of the event and heartbeat JSON (docs/schema.md, "Versions"); the issuer accepts 1.x.
SCHEMA_VERSION = "1.0"


def read_event_payload(
    event: ReadEvent, event_id: str, classification: str | Classification | None, *, secrets: Secrets = ()
) -> dict[str, Any]:
    """A sensor ReadEvent as the "read" event (never file contents), with its provenance and, when
    the reader's provenance did not support the label its name claims, that claim and why."""
    data = event.to_dict()
    read = {key: data.get(key) for key in READER_FIELDS}
    if event.start_time is not None:
        read["start_time"] = to_iso(event.start_time)
    if isinstance(classification, Classification):
        read["classification"] = classification.label
        read["claimed_label"] = classification.claimed
        read["trust_reason"] = bound_optional(classification.reason, TEXT_BUDGET)
    else:
        read["classification"] = classification
    payload = {
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id,
        "kind": "read",
        "time": to_iso(event.time),
        "path": event.path,
        "read": read,
    }
    return known(secrets).scrub_payload(payload)


def tamper_payload(
    path: str,
    action: str,
    detail: str,
    replanted: bool,
    now: dt.datetime,
    *,
    found: Mapping[str, Any] | None = None,
    secrets: Secrets = (),
) -> dict[str, Any]:
    """A "tamper" event: the planted profile was changed, removed or could not be kept. `found`: what
    stands where the file should be (agent.planting.findings), when the file was replaced."""
    tamper: dict[str, Any] = {
        "action": action,
        "detail": bound_text(detail, TEXT_BUDGET),
        "replanted": replanted,
    }
    if found is not None:
        tamper["found"] = {
            key: bound_text(value, TEXT_BUDGET) if isinstance(value, str) else value
            for key, value in found.items()
        }
    payload = {
        "schema_version": SCHEMA_VERSION,
        "event_id": str(uuid.uuid4()),
        "kind": "tamper",
        "time": to_iso(now),
        "path": path,
        "tamper": tamper,
    }
    return known(secrets).scrub_payload(payload)


def self_report_payload(
    path: str | None, user: str, note: str | None, at: dt.datetime, *, secrets: Secrets = ()
) -> dict[str, Any]:
    """A "self_report" event: a local user says they opened the file ("I opened it by mistake")."""
    payload = {
        "schema_version": SCHEMA_VERSION,
        "event_id": str(uuid.uuid4()),
        "kind": "self_report",
        "time": to_iso(at),
        "path": path,
        "self_report": {"user": user, "note": note},
    }
    return known(secrets).scrub_payload(payload)


def heartbeat_payload(
    *,
    sensor_health: Mapping[str, Any],
    targets: Iterable[Mapping[str, Any]],
    last_event_at: str | None,
    spool: Any | None,
    selfreport: Mapping[str, Any] | None = None,
    agent_version: str = __version__,
    secrets: Secrets = (),
) -> dict[str, Any]:
    """The heartbeat body. `spool` is the agent's Spool (pending/dropped/rejected counts) or None;
    `selfreport` the self-report socket's health (SelfReportServer.health) or None.

    `sensor_health` is the service's health record: the sensor's fields, plus `deadman`,
    `readlog_failed` and `spool_failed` (sent at the top level)."""
    sensor = {
        "name": sensor_health.get("name"),
        "mode": sensor_health.get("mode"),
        "healthy": bool(sensor_health.get("healthy")),
        "error": bound_optional(sensor_health.get("error"), TEXT_BUDGET),
        "lost_events": int(sensor_health.get("lost_events") or 0),
        # What the sensor attached and what it cannot see (eBPF: hooks; io_uring direct opens...).
        "detail": bound_optional(sensor_health.get("detail"), TEXT_BUDGET),
        "uncovered": [bound_text(str(gap), TEXT_BUDGET) for gap in sensor_health.get("uncovered") or ()][:32],
    }
    payload = {
        "schema_version": SCHEMA_VERSION,
        "agent_version": agent_version,
        "sensor": sensor,
        "targets": [
            {
                "path": t["path"],
                "local_user": t["local_user"],
                "profile": t["profile"],
                "access_key_id": t.get("access_key_id"),
                "planted": bool(t.get("planted")),
                "error": bound_optional(t.get("error"), TEXT_BUDGET),
            }
            for t in targets
        ],
        "last_event_at": last_event_at,
        "spool_pending": spool.pending() if spool else 0,
        "spool_dropped": spool.dropped() if spool else 0,
        "spool_rejected": spool.rejected() if spool else 0,
        # Reads seen but not kept (agent.reporting.losses): not in the read log / never queued.
        "readlog_failed": int(sensor_health.get("readlog_failed") or 0),
        "spool_failed": int(sensor_health.get("spool_failed") or 0),
        "deadman": _deadman(sensor_health.get("deadman")),
    }
    if selfreport is not None:
        payload["selfreport"] = {
            "enabled": bool(selfreport.get("enabled")),
            "running": bool(selfreport.get("running")),
            "error": bound_optional(selfreport.get("error"), TEXT_BUDGET),
            "refused": int(selfreport.get("refused") or 0),
            "busy": int(selfreport.get("busy") or 0),
            "restarts": int(selfreport.get("restarts") or 0),
            "last_error": bound_optional(selfreport.get("last_error"), TEXT_BUDGET),
        }
    return known(secrets).scrub_payload(payload)


def _deadman(value: Any) -> dict[str, Any] | None:
    """Whether a stopped or wedged agent is killed from outside (agent.runtime.deadman), as sent."""
    if not isinstance(value, Mapping):
        return None
    timeout = value.get("timeout_ms")
    return {
        "armed": bool(value.get("armed")),
        "kind": bound_optional(value.get("kind"), 40),
        "timeout_ms": int(timeout) if isinstance(timeout, int | float) else None,
        "petted_by": bound_optional(value.get("petted_by"), TEXT_BUDGET),
        "detail": bound_optional(value.get("detail"), TEXT_BUDGET),
    }


def unavailable_health(sensor: str, error: str) -> dict[str, Any]:
    """Sensor health for a sensor that could not be created or started."""
    return {
        "name": sensor,
        "mode": "unavailable",
        "healthy": False,
        "error": error,
        "lost_events": 0,
        "weaker": False,
    }


def target_reports(store: StateStore) -> list[dict[str, Any]]:
    """Per-target lines for the heartbeat (and `status`)."""
    return [
        {
            "path": ts.path,
            "local_user": ts.owner,
            "profile": ts.profile,
            "access_key_id": ts.access_key_id,
            "planted": ts.planted,
            "error": ts.last_error,
        }
        for ts in sorted(store.state.targets.values(), key=lambda t: t.path)
    ]


__all__ = [
    "SCHEMA_VERSION",
    "heartbeat_payload",
    "read_event_payload",
    "self_report_payload",
    "tamper_payload",
    "target_reports",
    "unavailable_health",
]
