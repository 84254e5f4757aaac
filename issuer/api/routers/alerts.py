"""Alerts: list, show (enrichment refreshed with reads uploaded since), acknowledge, resolve.

Every route needs a responder token. Notes are appended, never rewritten.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from issuer.agent_events import parse_since
from issuer.alerts.serialize import alert_summary, alert_to_dict
from issuer.alerts.service import refresh_context
from issuer.api.auth import ResponderAuth
from issuer.api.deps import SessionDep, SettingsDep
from issuer.api.schemas import QueryText, RequestBody
from issuer.errors import Conflict, InvalidRequest, NotFound
from issuer.listing import AlertFilter, list_alerts_page
from issuer.models import Alert
from issuer.pagination import MAX_CURSOR_LENGTH
from issuer.registry import is_plain_id
from issuer.timefmt import iso

router = APIRouter(tags=["alerts"])

AlertStatus = Literal["open", "acknowledged", "resolved"]
AlertSeverity = Literal["low", "medium", "high", "critical"]


class AlertNoteIn(RequestBody):
    note: Annotated[str | None, Field(default=None, max_length=4096)] = None


class _AlertHead(BaseModel):
    alert_id: str
    kind: str
    severity: str
    status: str
    title: str
    selftest: bool
    first_seen: str | None
    last_seen: str | None
    event_count: int


class AlertSummaryOut(_AlertHead):
    hostname: str | None = None
    device_id: str | None = None
    access_key_id: str | None = None
    verdict_hint: str | None = None


class AlertList(BaseModel):
    alerts: list[AlertSummaryOut]
    next_cursor: str | None = Field(default=None, description="pass as `cursor` for the next page")


class SummaryOut(BaseModel):
    source_ips: list[str]
    user_agents: list[str]
    event_names: list[str]
    regions: list[str]
    error_codes: list[str]
    detection_sources: list[str] = []
    warnings: list[str] = Field(
        default=[], description="what the issuer could not take at face value (a time, a malformed record)"
    )


class ReasonOut(BaseModel):
    rule: str = Field(description="the rule that fired (docs/schema.md lists them)")
    hint: str | None = Field(description="the hint this reason points to; null: context only")
    text: str = Field(description="the sentence, quoting the evidence")
    evidence: dict[str, Any] = Field(description="the same evidence as data: read, aws, counts")
    read_event_id: str | None = Field(description="the read (enrichment.reads[].event_id) it is about")
    aws_event_ids: list[str] = Field(description="the AWS events (enrichment.aws.calls[].event_id) it quotes")


class VerdictOut(BaseModel):
    hint: str | None
    reasons: list[ReasonOut]


class DeliveryOut(BaseModel):
    sink: str
    revision: int = Field(default=0, description="0: the alert; n > 0: its n-th update (`updates`)")
    status: str
    attempts: int
    last_error: str | None
    delivered_at: str | None


class AlertOut(_AlertHead):
    schema_version: str = Field(description="version of the alert JSON (docs/schema.md)")
    summary: SummaryOut
    enrichment: dict[str, Any] = Field(
        description="device, placement, credential, reads_window, reads[] (each with its reader's "
        "provenance), self_reports[], agent_health, aws (calls, user-agent families, source addresses "
        "against the device's own, regions, error codes)"
    )
    verdict: VerdictOut
    updates: list[dict[str, Any]] = Field(
        default=[], description="updates sent to the sinks: revision, time, what changed (docs/detection.md)"
    )
    deliveries: list[DeliveryOut]
    notes: list[dict[str, Any]]
    created_at: str | None
    updated_at: str | None
    siem: dict[str, Any] = Field(
        description="flat block of the fields a SOC queries: host, device, local user, key, principal, "
        "first/last source address and user agent, the decisive reader, verdict hint, ATT&CK techniques "
        "(docs/schema.md, docs/schemas/alert.json)"
    )


def _get_alert(session: Session, alert_id: str, *, for_update: bool = False) -> Alert:
    if len(alert_id) > 40 or not is_plain_id(alert_id):
        raise NotFound(f"no alert {alert_id!r}")
    if for_update:
        # Lock first (no-op UPDATE: row lock on PostgreSQL, write lock on SQLite), then read, so two
        # concurrent notes never overwrite each other.
        session.execute(update(Alert).where(Alert.id == alert_id).values(status=Alert.status))
    alert = session.scalars(
        select(Alert).where(Alert.id == alert_id).execution_options(populate_existing=True)
    ).first()
    if alert is None:
        raise NotFound(f"no alert {alert_id!r}")
    return alert


def _time(name: str, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        raise InvalidRequest(f"query.{name}: {exc}") from exc


@router.get("/v1/alerts", response_model=AlertList)
def list_alerts(
    _auth: ResponderAuth,
    session: SessionDep,
    status: Annotated[AlertStatus | None, Query(description="only alerts with this status")] = None,
    severity: Annotated[AlertSeverity | None, Query(description="only alerts of this severity")] = None,
    kind: Annotated[
        QueryText, Query(max_length=32, description="canary_use, principal_tamper, selftest")
    ] = None,
    since: Annotated[
        QueryText, Query(max_length=64, description="active since: 24h, 7d or an ISO 8601 time")
    ] = None,
    until: Annotated[
        QueryText, Query(max_length=64, description="first seen before: 1h or an ISO 8601 time")
    ] = None,
    device_id: Annotated[QueryText, Query(max_length=40, description="only this device's alerts")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    cursor: Annotated[QueryText, Query(max_length=MAX_CURSOR_LENGTH, description="`next_cursor`")] = None,
) -> dict[str, Any]:
    """Alerts, newest first, one page at a time: follow `next_cursor` until it is null."""
    flt = AlertFilter(
        status=status,
        severity=severity,
        kind=kind,
        since=_time("since", since),
        until=_time("until", until),
        device_id=device_id,
    )
    page = list_alerts_page(session, flt, limit=limit, cursor=cursor)
    return {"alerts": [alert_summary(alert) for alert in page.items], "next_cursor": page.next_cursor}


@router.get("/v1/alerts/{alert_id}", response_model=AlertOut)
def show_alert(
    alert_id: str, _auth: ResponderAuth, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """The whole alert. While it is not resolved, host context is recomputed: agents upload reads in
    batches, so reads that arrived after the alert opened are shown too."""
    alert = _get_alert(session, alert_id)
    if alert.status != "resolved":
        refresh_context(
            session,
            alert,
            stale_after_seconds=settings.stale_after_seconds,
            address_window_days=settings.device_address_window_days,
        )
        session.commit()
    return alert_to_dict(session, alert)


def _transition(session: Session, alert: Alert, action: str, note: str | None, token_id: str) -> None:
    now = dt.datetime.now(dt.UTC)
    alert.notes = [
        *(alert.notes or []),
        {"time": iso(now), "action": action, "note": note, "by": token_id},
    ]
    alert.updated_at = now
    session.commit()


@router.post("/v1/alerts/{alert_id}/ack", response_model=AlertOut)
def acknowledge_alert(
    alert_id: str,
    auth: ResponderAuth,
    session: SessionDep,
    body: Annotated[AlertNoteIn | None, Body()] = None,
) -> dict[str, Any]:
    """Someone is on it. Later uses of the credential keep joining this alert."""
    alert = _get_alert(session, alert_id, for_update=True)
    if alert.status == "resolved":
        raise Conflict(f"alert {alert_id} is resolved; a new use of the credential opens a new alert")
    alert.status = "acknowledged"
    _transition(session, alert, "ack", body.note if body else None, auth.token_id)
    return alert_to_dict(session, alert)


@router.post("/v1/alerts/{alert_id}/resolve", response_model=AlertOut)
def resolve_alert(
    alert_id: str,
    auth: ResponderAuth,
    session: SessionDep,
    body: Annotated[AlertNoteIn | None, Body()] = None,
) -> dict[str, Any]:
    """Close the incident; a later use of the credential opens a new alert. Idempotent."""
    alert = _get_alert(session, alert_id, for_update=True)
    if alert.status != "resolved":
        alert.status = "resolved"
        _transition(session, alert, "resolve", body.note if body else None, auth.token_id)
    elif body is not None and body.note:
        _transition(session, alert, "note", body.note, auth.token_id)
    return alert_to_dict(session, alert)
