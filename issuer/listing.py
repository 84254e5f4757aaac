"""Paged, filtered lists of alerts and credentials for responders (devices: issuer/fleet.py; reads:
issuer/agent_events.py). Orders are on immutable columns so that cursors stay valid while rows are
added: alerts newest first by creation, credentials oldest first by creation."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session, joinedload

from issuer.models import Alert, Credential, Placement, utcnow
from issuer.pagination import Page, SortKey, paginate

ALERT_ORDER = (SortKey(Alert.created_at, descending=True), SortKey(Alert.id, descending=True))
CREDENTIAL_ORDER = (SortKey(Credential.created_at), SortKey(Credential.id))
CREDENTIAL_STATUSES = ("active", "retired", "revoked", "expired")


@dataclasses.dataclass(frozen=True)
class AlertFilter:
    """`since`/`until`: alerts active in that window (last seen at or after `since`, first seen at or
    before `until`)."""

    status: str | None = None
    severity: str | None = None
    kind: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    device_id: str | None = None


def list_alerts_page(
    session: Session, flt: AlertFilter, *, limit: int, cursor: str | None = None
) -> Page[Alert]:
    query = select(Alert)
    if flt.status:
        query = query.where(Alert.status == flt.status)
    if flt.severity:
        query = query.where(Alert.severity == flt.severity)
    if flt.kind:
        query = query.where(Alert.kind == flt.kind)
    if flt.since is not None:
        query = query.where(Alert.last_seen >= flt.since)
    if flt.until is not None:
        query = query.where(Alert.first_seen <= flt.until)
    if flt.device_id:
        credentials = (
            select(Credential.id)
            .join(Placement, Placement.id == Credential.placement_id)
            .where(Placement.device_id == flt.device_id)
        )
        query = query.where(Alert.credential_id.in_(credentials))
    return paginate(
        session,
        query,
        kind="alerts",
        keys=ALERT_ORDER,
        key_of=lambda a: (a.created_at, a.id),
        limit=limit,
        cursor=cursor,
        filters=dataclasses.asdict(flt),
    )


@dataclasses.dataclass(frozen=True)
class CredentialFilter:
    device_id: str | None = None
    status: str | None = None  # one of CREDENTIAL_STATUSES
    backend: str | None = None
    account: str | None = None


def _status_condition(status: str, now: dt.datetime) -> Any:
    not_expired = (Credential.expires_at.is_(None)) | (Credential.expires_at > now)
    if status == "revoked":
        return Credential.revoked_at.is_not(None)
    if status == "retired":
        return and_(Credential.revoked_at.is_(None), Credential.retired_at.is_not(None))
    if status == "expired":
        return and_(
            Credential.revoked_at.is_(None),
            Credential.retired_at.is_(None),
            Credential.expires_at.is_not(None),
            Credential.expires_at <= now,
        )
    return and_(Credential.revoked_at.is_(None), Credential.retired_at.is_(None), not_expired)


def list_credentials_page(
    session: Session, flt: CredentialFilter, *, limit: int, cursor: str | None = None
) -> Page[Credential]:
    query = select(Credential).options(joinedload(Credential.placement))
    if flt.device_id:
        query = query.join(Placement, Placement.id == Credential.placement_id).where(
            Placement.device_id == flt.device_id
        )
    if flt.status:
        query = query.where(_status_condition(flt.status, utcnow()))
    if flt.backend:
        query = query.where(Credential.backend == flt.backend)
    if flt.account:
        query = query.where(Credential.account == flt.account)
    return paginate(
        session,
        query,
        kind="credentials",
        keys=CREDENTIAL_ORDER,
        key_of=lambda c: (c.created_at, c.id),
        limit=limit,
        cursor=cursor,
        filters=dataclasses.asdict(flt),
    )
