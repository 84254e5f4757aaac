"""Open or join alerts: one alert per incident of a credential, de-duplicated by event.

An incident stays open until resolved: later detections of the same credential (and kind) join the
open or acknowledged alert; a use after resolution opens a new alert. A use during an active
self-test window opens a low-severity `selftest` alert that pages nobody. When AWS itself attaches
its compromised-key quarantine policy to a canary principal, the alert is of its own kind,
`aws_key_published`: AWS found the key published. A joined event that brings something materially
new updates the alert in the sinks (issuer.alerts.updates).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from issuer.alerts.awsfacts import quarantine_policy
from issuer.alerts.enrich import build_context
from issuer.alerts.updates import consider_update, mark_notified
from issuer.alerts.verdict import context_reason
from issuer.detection.events import AwsEvent, as_utc
from issuer.detection.matching import TAMPER, Match
from issuer.models import Alert, Credential, Delivery, Detection, SelfTest, utcnow

CANARY_USE = "canary_use"
PRINCIPAL_TAMPER = "principal_tamper"
AWS_KEY_PUBLISHED = "aws_key_published"
SELFTEST = "selftest"
SEVERITY = {CANARY_USE: "high", PRINCIPAL_TAMPER: "high", AWS_KEY_PUBLISHED: "high", SELFTEST: "low"}
ALERT_KINDS = (CANARY_USE, PRINCIPAL_TAMPER, AWS_KEY_PUBLISHED, SELFTEST)
OPEN_STATUSES = ("open", "acknowledged")
SUMMARY_KEYS = ("source_ips", "user_agents", "event_names", "regions", "error_codes")
MAX_SUMMARY_VALUES = 50
# A self-test window opens when the agent asks; tolerate the use landing a little before the row.
SELFTEST_SKEW = dt.timedelta(seconds=60)


@dataclasses.dataclass(frozen=True, slots=True)
class RecordResult:
    alert_id: str | None
    created: bool
    duplicate: bool


def new_alert_id() -> str:
    return "alr_" + secrets.token_hex(10)


def active_selftest(session: Session, credential_id: str, when: dt.datetime) -> SelfTest | None:
    rows = session.scalars(
        select(SelfTest).where(SelfTest.credential_id == credential_id).order_by(SelfTest.created_at.desc())
    ).all()
    for row in rows:
        if as_utc(row.created_at) - SELFTEST_SKEW <= when <= as_utc(row.expires_at):
            return row
    return None


def _title(kind: str, credential: Credential, event: AwsEvent) -> str:
    placement = credential.placement
    where = f"{placement.device.hostname} / {placement.local_user} / profile {placement.profile}"
    call = f"{event.event_source}:{event.event_name}" if event.event_source else event.event_name or "a call"
    if kind == AWS_KEY_PUBLISHED:
        policy = quarantine_policy(event.event_name, event.raw) or "its quarantine policy"
        return (
            f"AWS found canary credential {credential.access_key_id} published: it attached "
            f"{policy.rsplit('/', 1)[-1]} to {credential.principal_name} ({where})"
        )
    if kind == PRINCIPAL_TAMPER:
        who = event.caller_arn or event.access_key_id or "unknown caller"
        return f"Canary principal {credential.principal_name} tampered with: {call} by {who} ({where})"
    origin = f" from {event.source_ip}" if event.source_ip else ""
    prefix = "Self-test: canary" if kind == SELFTEST else "Canary"
    return f"{prefix} credential {credential.access_key_id} used: {call}{origin} ({where})"


def _merge_summary(summary: dict[str, Any], event: AwsEvent) -> dict[str, Any]:
    # Other keys (what the sinks were told: issuer.alerts.updates) are kept as they are.
    merged = {**summary, **{key: list(summary.get(key) or []) for key in SUMMARY_KEYS}}
    values = {
        "source_ips": event.source_ip,
        "user_agents": event.user_agent,
        "event_names": f"{event.event_source}:{event.event_name}" if event.event_source else event.event_name,
        "regions": event.region,
        "error_codes": event.error_code,
    }
    for key, value in values.items():
        if value and value not in merged[key] and len(merged[key]) < MAX_SUMMARY_VALUES:
            merged[key].append(value)
    sources = list(summary.get("detection_sources") or [])
    if event.source not in sources:
        sources.append(event.source)
    merged["detection_sources"] = sources
    # What the issuer could not take at face value (a time not believed, a malformed record).
    warnings = list(summary.get("warnings") or [])
    for note in event.notes:
        if note not in warnings and len(warnings) < MAX_SUMMARY_VALUES:
            warnings.append(note)
    merged["warnings"] = warnings
    return merged


def record_match(
    session: Session,
    event: AwsEvent,
    match: Match,
    *,
    sink_names: Iterable[str],
    stale_after_seconds: int,
    address_window_days: float = 30.0,
    update_min_interval: float = 300.0,
) -> RecordResult:
    """Record one matched event: a Detection row plus a new or joined Alert. Caller commits."""
    # Serialise concurrent detections of one credential before reading anything we will update: a
    # no-op UPDATE takes the row lock on PostgreSQL and the write lock on SQLite (whose driver runs
    # plain SELECTs outside the transaction, so a read-then-write would lose concurrent updates).
    session.execute(
        update(Credential)
        .where(Credential.id == match.credential.id)
        .values(last_used_seen_at=Credential.last_used_seen_at)
    )
    credential = session.scalars(
        select(Credential)
        .where(Credential.id == match.credential.id)
        .execution_options(populate_existing=True)
    ).one()
    key = match.detection_key(event)
    if session.scalar(select(Detection.id).where(Detection.source_event_id == key).limit(1)) is not None:
        return RecordResult(alert_id=None, created=False, duplicate=True)  # same event via another path

    when = as_utc(event.event_time)
    if match.kind == TAMPER and quarantine_policy(event.event_name, event.raw):
        kind = AWS_KEY_PUBLISHED
    elif match.kind == TAMPER:
        kind = PRINCIPAL_TAMPER
    else:
        selftest = active_selftest(session, credential.id, when)
        kind = SELFTEST if selftest is not None else CANARY_USE
        if selftest is not None and selftest.used_at is None:
            selftest.used_at = when

    # FOR UPDATE: a responder resolving this alert right now holds its row; PostgreSQL then re-checks
    # the status after their commit, so this use opens a new alert instead of joining a resolved one.
    # (SQLite ignores it; its single writer lock, taken above, already serialises the two.)
    alert = session.scalars(
        select(Alert)
        .where(Alert.credential_id == credential.id, Alert.kind == kind, Alert.status.in_(OPEN_STATUSES))
        .order_by(Alert.created_at.desc())
        .limit(1)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    created = alert is None
    if alert is None:
        alert = Alert(
            id=new_alert_id(),
            credential_id=credential.id,
            kind=kind,
            severity=SEVERITY[kind],
            status="open",
            title=_title(kind, credential, event)[:500],
            first_seen=when,
            last_seen=when,
            event_count=0,
            summary={},
            enrichment={},
            verdict={},
            notes=[],
        )
        session.add(alert)
        session.flush()

    try:
        with session.begin_nested():
            session.add(
                Detection(
                    alert_id=alert.id,
                    source=event.source,
                    source_event_id=key,
                    event_time=when,
                    event_name=event.event_name,
                    event_source=event.event_source,
                    region=event.region,
                    source_ip=event.source_ip,
                    user_agent=event.user_agent,
                    error_code=event.error_code,
                    raw={**event.raw, "tripkey_notes": list(event.notes)} if event.notes else event.raw,
                )
            )
    except IntegrityError:
        # Another replica recorded this very event first.
        if created:
            session.delete(alert)
        return RecordResult(alert_id=None, created=False, duplicate=True)

    alert.first_seen = min(as_utc(alert.first_seen), when)
    alert.last_seen = max(as_utc(alert.last_seen), when)
    alert.event_count = (alert.event_count or 0) + 1
    alert.summary = _merge_summary(alert.summary or {}, event)
    alert.updated_at = utcnow()
    session.flush()  # the new Detection is part of the AWS facts refresh_context reads
    refresh_context(
        session,
        alert,
        credential,
        stale_after_seconds=stale_after_seconds,
        address_window_days=address_window_days,
    )

    sinks = list(sink_names)
    if created:
        for sink in sinks:
            session.add(Delivery(alert_id=alert.id, sink=sink, revision=0, status="pending", attempts=0))
        mark_notified(alert, utcnow())
    else:
        consider_update(session, alert, sinks, min_interval=update_min_interval, now=utcnow())
    return RecordResult(alert_id=alert.id, created=created, duplicate=False)


def refresh_context(
    session: Session,
    alert: Alert,
    credential: Credential | None = None,
    *,
    stale_after_seconds: int,
    address_window_days: float = 30.0,
) -> None:
    """Recompute enrichment and verdict (reads uploaded after the alert opened are picked up)."""
    if credential is None:
        if alert.credential_id is None:
            return
        credential = session.get(Credential, alert.credential_id)
        if credential is None:
            return
    enrichment, verdict = build_context(
        session,
        credential,
        as_utc(alert.first_seen),
        stale_after_seconds=stale_after_seconds,
        selftest=alert.kind == SELFTEST,
        alert_id=alert.id,
        address_window_days=address_window_days,
    )
    reasons = [reason.as_dict() for reason in verdict.reasons]
    if alert.kind == AWS_KEY_PUBLISHED:
        reasons.insert(
            0,
            context_reason(
                "alert_kind_aws_key_published",
                "AWS itself found this key published (typically in a public code repository) and "
                "quarantined its principal: treat the key as public, whoever used it",
            ).as_dict(),
        )
    if alert.kind == PRINCIPAL_TAMPER:
        reasons.insert(
            0,
            context_reason(
                "alert_kind_principal_tamper",
                "someone other than the issuer changed the canary principal in IAM: the "
                "credential is known to an attacker who also holds IAM permissions",
            ).as_dict(),
        )
    alert.enrichment = enrichment
    alert.verdict = {"hint": verdict.hint, "reasons": reasons}
