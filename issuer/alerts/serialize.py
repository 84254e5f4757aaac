"""The JSON shape of an alert, shared by the API (GET /v1/alerts/{id}) and the sinks
(docs/schema.md; docs/schemas/alert.json)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from issuer.alerts.service import SELFTEST, SUMMARY_KEYS
from issuer.alerts.siem import siem_block
from issuer.models import Alert, Delivery
from issuer.timefmt import iso_or_none as _iso

# The version of the alert's JSON (docs/schema.md, "Versions"): the minor part grows with additions,
# the major part changes when a field is renamed, removed or changes meaning.
ALERT_SCHEMA_VERSION = "1.0"


def _alert_head(alert: Alert) -> dict[str, Any]:
    """The fields the list and the full alert share."""
    return {
        "alert_id": alert.id,
        "kind": alert.kind,
        "severity": alert.severity,
        "status": alert.status,
        "title": alert.title,
        "selftest": alert.kind == SELFTEST,
        "first_seen": _iso(alert.first_seen),
        "last_seen": _iso(alert.last_seen),
        "event_count": alert.event_count,
    }


def alert_summary(alert: Alert) -> dict[str, Any]:
    """The short form listed by GET /v1/alerts."""
    enrichment = alert.enrichment or {}
    device = enrichment.get("device") or {}
    credential = enrichment.get("credential") or {}
    return {
        **_alert_head(alert),
        "hostname": device.get("hostname"),
        "device_id": device.get("device_id"),
        "access_key_id": credential.get("access_key_id"),
        "verdict_hint": (alert.verdict or {}).get("hint"),
    }


def alert_to_dict(session: Session, alert: Alert, *, with_deliveries: bool = True) -> dict[str, Any]:
    summary = alert.summary or {}
    data: dict[str, Any] = {
        "schema_version": ALERT_SCHEMA_VERSION,
        **_alert_head(alert),
        "summary": {key: list(summary.get(key) or []) for key in SUMMARY_KEYS}
        | {
            "detection_sources": list(summary.get("detection_sources") or []),
            # what the issuer could not take at face value: a time not believed, a malformed record
            "warnings": list(summary.get("warnings") or []),
        },
        "enrichment": alert.enrichment or {},
        "verdict": alert.verdict or {"hint": None, "reasons": []},
        "notes": list(alert.notes or []),
        "updates": list(summary.get("updates") or []),
        "created_at": _iso(alert.created_at),
        "updated_at": _iso(alert.updated_at),
    }
    data["siem"] = siem_block(data)
    if with_deliveries:
        rows = session.scalars(
            select(Delivery).where(Delivery.alert_id == alert.id).order_by(Delivery.sink, Delivery.revision)
        ).all()
        data["deliveries"] = [
            {
                "sink": row.sink,
                "revision": row.revision,
                "status": row.status,
                "attempts": row.attempts,
                "last_error": row.last_error,
                "delivered_at": _iso(row.delivered_at),
            }
            for row in rows
        ]
    return data
