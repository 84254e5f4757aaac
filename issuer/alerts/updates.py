"""Alerts that follow the incident: when a later event brings something materially new — a new
source address or user-agent family, a new kind of calls, a new region — the sinks receive an
update of the same alert (a new delivery revision, marked `update` in the payload).

Rate limit: at most one update per alert every `min_interval` seconds. A change that arrives sooner
is owed, not dropped: the alert's `update_due_at` says when, and the delivery worker sends it then
(`promote_due_updates`), with everything that changed meanwhile. While a delivery of the alert is
still pending, it will carry the latest state anyway, so no separate update is made for it.

State kept in the alert's summary: `notified` (what the sinks were last told, as a fingerprint),
`last_notified_at`, and `updates` (each revision with its list of changes, shown in the API too).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from issuer.detection.events import as_utc
from issuer.models import Alert, Delivery

FINGERPRINT_KEYS = ("addresses", "ua_families", "call_kinds", "regions")
MAX_UPDATES_KEPT = 50
MAX_CHANGES = 20
OPEN_STATUSES = ("open", "acknowledged")


def fingerprint(enrichment: dict[str, Any]) -> dict[str, list[str]]:
    """What is material about the AWS side of an alert (from its enrichment's `aws` block)."""
    aws = enrichment.get("aws") if isinstance(enrichment.get("aws"), dict) else {}
    assert isinstance(aws, dict)
    addresses = [a.get("address") for a in aws.get("source_addresses") or [] if isinstance(a, dict)]
    return {
        "addresses": sorted(str(a) for a in addresses if a),
        "ua_families": sorted(str(f) for f in aws.get("user_agent_families") or []),
        "call_kinds": sorted(str(k) for k in aws.get("call_kinds") or [] if k != "unknown"),
        "regions": sorted(str(r) for r in aws.get("regions") or []),
    }


def describe_changes(before: dict[str, Any], enrichment: dict[str, Any]) -> list[str]:
    """What is new since `before`, in words that quote the evidence."""
    now = fingerprint(enrichment)
    aws = enrichment.get("aws") or {}
    relations = {a.get("address"): a.get("meaning") for a in aws.get("source_addresses") or []}
    calls = aws.get("calls") or []
    changes: list[str] = []
    for address in now["addresses"]:
        if address not in (before.get("addresses") or []):
            changes.append(f"new source address {address} ({relations.get(address) or 'unknown relation'})")
    for family in now["ua_families"]:
        if family not in (before.get("ua_families") or []):
            agents = sorted(
                {c.get("user_agent_detail") or family for c in calls if c.get("user_agent_family") == family}
            )
            changes.append(f"new user-agent family {family} ({', '.join(agents[:3])})")
    for kind in now["call_kinds"]:
        if kind not in (before.get("call_kinds") or []):
            names = sorted({str(c.get("call")) for c in calls if c.get("kind") == kind})
            changes.append(f"new kind of calls: {kind} ({', '.join(names[:5])})")
    for region in now["regions"]:
        if region not in (before.get("regions") or []):
            changes.append(f"new region {region}")
    return changes[:MAX_CHANGES]


def _iso(value: dt.datetime) -> str:
    return as_utc(value).isoformat().replace("+00:00", "Z")


def _parse(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


def mark_notified(alert: Alert, now: dt.datetime) -> None:
    """The sinks are about to be told the alert as it is now (a first delivery)."""
    summary = dict(alert.summary or {})
    summary["notified"] = fingerprint(alert.enrichment or {})
    summary["last_notified_at"] = _iso(now)
    alert.summary = summary
    alert.update_due_at = None


def _latest_revision(session: Session, alert_id: str) -> int:
    value = session.scalar(select(func.max(Delivery.revision)).where(Delivery.alert_id == alert_id))
    return int(value or 0)


def _pending(session: Session, alert_id: str) -> bool:
    found = session.scalar(
        select(Delivery.id).where(Delivery.alert_id == alert_id, Delivery.status == "pending").limit(1)
    )
    return found is not None


def consider_update(
    session: Session,
    alert: Alert,
    sink_names: Collection[str],
    *,
    min_interval: float,
    now: dt.datetime,
) -> int | None:
    """After an event joined `alert`: send an update now, owe one, or do nothing. Returns the new
    revision when deliveries were made."""
    if not sink_names or alert.status not in OPEN_STATUSES:
        return None
    summary = dict(alert.summary or {})
    notified = summary.get("notified")
    before: dict[str, Any] = notified if isinstance(notified, dict) else {}
    changes = describe_changes(before, alert.enrichment or {})
    if not changes:
        return None
    if _pending(session, alert.id):
        # A delivery not sent yet will carry the latest state; an update it is, say what it adds.
        updates = list(summary.get("updates") or [])
        if updates and updates[-1].get("revision") == _latest_revision(session, alert.id):
            updates[-1] = {
                **updates[-1],
                "changes": (list(updates[-1].get("changes") or []) + changes)[:MAX_CHANGES],
            }
            summary["updates"] = updates
        summary["notified"] = fingerprint(alert.enrichment or {})
        alert.summary = summary
        return None
    last = _parse(summary.get("last_notified_at"))
    if last is not None and (now - last).total_seconds() < min_interval:
        due = last + dt.timedelta(seconds=min_interval)
        if alert.update_due_at is None or as_utc(alert.update_due_at) > due:
            alert.update_due_at = due
        return None
    revision = _latest_revision(session, alert.id) + 1
    for sink in sink_names:
        session.add(Delivery(alert_id=alert.id, sink=sink, revision=revision, status="pending", attempts=0))
    updates = list(summary.get("updates") or [])
    updates.append({"revision": revision, "at": _iso(now), "changes": changes})
    summary["updates"] = updates[-MAX_UPDATES_KEPT:]
    summary["notified"] = fingerprint(alert.enrichment or {})
    summary["last_notified_at"] = _iso(now)
    alert.summary = summary
    alert.update_due_at = None
    return revision


def promote_due_updates(session: Session, sink_names: Collection[str], now: dt.datetime) -> list[str]:
    """Send the updates the rate limit held back and that are now due; returns the alert ids. Commits."""
    if not sink_names:
        return []
    alerts = session.scalars(
        select(Alert)
        .where(Alert.update_due_at.is_not(None), Alert.update_due_at <= now, Alert.status.in_(OPEN_STATUSES))
        .limit(100)
    ).all()
    sent = []
    for alert in alerts:
        alert.update_due_at = None
        if consider_update(session, alert, sink_names, min_interval=0.0, now=now) is not None:
            sent.append(alert.id)
    session.commit()
    return sent


def update_of(alert: Alert, revision: int) -> dict[str, Any] | None:
    """The `update` object a delivery of `revision` (> 0) carries."""
    if revision <= 0:
        return None
    for item in (alert.summary or {}).get("updates") or []:
        if isinstance(item, dict) and item.get("revision") == revision:
            return {"revision": revision, "at": item.get("at"), "changes": list(item.get("changes") or [])}
    return {"revision": revision, "at": None, "changes": []}


__all__ = [
    "consider_update",
    "describe_changes",
    "fingerprint",
    "mark_notified",
    "promote_due_updates",
    "update_of",
]
