"""What the agent tells the issuer about itself: read events for the spool, heartbeat lines.

Pure functions, called by agent.service. The planted secrets are scrubbed from every read event
here, whatever the sensor's redaction missed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .sensors.base import READER_FIELDS
from .sensors.redact import REDACTED
from .state import StateStore, to_iso


def read_event_payload(
    event: Any, event_id: str, classification: str | None, *, secrets: Iterable[str] = ()
) -> dict[str, Any]:
    """A sensor ReadEvent as the docs/api.md "read" event (never file contents).

    `secrets` (the planted secret keys and tokens) are replaced by [REDACTED] wherever they appear:
    the sensor's own redaction is a heuristic, these values are known exactly."""
    data = event.to_dict()
    read = {key: data.get(key) for key in READER_FIELDS}
    if event.start_time is not None:
        read["start_time"] = to_iso(event.start_time)
    read["classification"] = classification
    payload = {
        "event_id": event_id,
        "kind": "read",
        "time": to_iso(event.time),
        "path": event.path,
        "read": read,
    }
    return scrub_secrets(payload, secrets)


def scrub_secrets(payload: dict[str, Any], secrets: Iterable[str]) -> dict[str, Any]:
    """`payload` with every occurrence of each secret, in any string, replaced by [REDACTED]."""
    text = json.dumps(payload)
    # Longest first, so a secret that contains a shorter one is replaced whole.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(json.dumps(secret)[1:-1], REDACTED)
    return dict(json.loads(text))


def unavailable_health(sensor: str, error: str) -> dict[str, Any]:
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


__all__ = ["read_event_payload", "scrub_secrets", "target_reports", "unavailable_health"]
