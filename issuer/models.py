"""SQLAlchemy 2 models: the registry (devices, placements, credentials), agent events and alerts.

No column ever holds a secret access key or a plaintext token: tokens and keys are stored as hashes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012 (SQLAlchemy API)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no time zone type and hands back naive values; comparing those with aware ones
    raises, so values are normalised to UTC on the way in and made aware on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        # SQLite stores text: keep one naive UTC format so that string order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # enroll | device | responder
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id"), index=True)
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (
        Index("ix_devices_enrolled_id", "enrolled_at", "id"),  # keyset pagination
        Index("ix_devices_last_heartbeat", "last_heartbeat_at"),  # the stale filter
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    device_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hostname: Mapped[str] = mapped_column(String(255), index=True)
    os: Mapped[str] = mapped_column(String(40))
    os_version: Mapped[str | None] = mapped_column(String(200))
    serial: Mapped[str | None] = mapped_column(String(200))
    users: Mapped[list[Any]] = mapped_column(JSON, default=list)
    agent_version: Mapped[str | None] = mapped_column(String(40))
    enrolled_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    health: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    retired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # offboarded: keys and tokens revoked
    # Copied out of `health` at each heartbeat (issuer/device_health.py), so fleet filters and the
    # coverage report are indexed SQL, not JSON parsing of 100,000 rows; the hash lets an unchanged
    # heartbeat skip rewriting the health document.
    health_hash: Mapped[str | None] = mapped_column(String(64))
    sensor_name: Mapped[str | None] = mapped_column(String(40))
    sensor_healthy: Mapped[bool | None] = mapped_column(Boolean)
    targets_expected: Mapped[int] = mapped_column(Integer, default=0)
    targets_planted: Mapped[int] = mapped_column(Integer, default=0)
    sensor_lost_events: Mapped[int] = mapped_column(Integer, default=0)
    spool_dropped: Mapped[int] = mapped_column(Integer, default=0)
    spool_rejected: Mapped[int] = mapped_column(Integer, default=0)
    # Minting budget of the device's token (issuer.minting): a fixed window, its count and limit,
    # and how many mints were refused (shown to responders).
    mint_window_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    mint_window_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    mint_window_limit: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    mints_refused: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_mint_refused_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    placements: Mapped[list[Placement]] = relationship(back_populates="device")


class Placement(Base):
    """Where one canary lives: a device, a local user, a file path and a profile name."""

    __tablename__ = "placements"
    __table_args__ = (UniqueConstraint("device_id", "path", "profile"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    local_user: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(4096))
    profile: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    device: Mapped[Device] = relationship(back_populates="placements")
    credentials: Mapped[list[Credential]] = relationship(back_populates="placement")


class Credential(Base):
    __tablename__ = "credentials"
    __table_args__ = (Index("ix_credentials_created_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    placement_id: Mapped[str] = mapped_column(ForeignKey("placements.id"), index=True)
    backend: Mapped[str] = mapped_column(String(32))  # iam-user | sts-federation
    account: Mapped[str] = mapped_column(String(100))  # name of the account in the pool
    account_id: Mapped[str | None] = mapped_column(String(20))
    principal_name: Mapped[str] = mapped_column(String(128), index=True)
    principal_arn: Mapped[str | None] = mapped_column(String(2048))
    access_key_id: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    retired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_used_seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    placement: Mapped[Placement] = relationship(back_populates="credentials")


class AgentEvent(Base):
    """A read, tamper or self-report event uploaded by an agent (idempotent by device + event_id).

    The event id is the agent's own key: keyed per device, one device can never shadow another's.
    """

    __tablename__ = "agent_events"
    __table_args__ = (Index("ix_agent_events_device_time", "device_id", "time"),)

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # read | tamper | self_report
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    path: Mapped[str] = mapped_column(String(4096))
    pid: Mapped[int | None] = mapped_column(Integer)
    exe: Mapped[str | None] = mapped_column(Text)
    user: Mapped[str | None] = mapped_column(String(255))
    classification: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SelfTest(Base):
    __tablename__ = "selftests"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    credential_id: Mapped[str] = mapped_column(ForeignKey("credentials.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Alert(Base):
    """One alert per incident of a credential; later detections join it."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_created_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    credential_id: Mapped[str | None] = mapped_column(ForeignKey("credentials.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # canary_use | principal_tamper | selftest
    severity: Mapped[str] = mapped_column(String(16))  # low | medium | high | critical
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)  # open|acknowledged|resolved
    title: Mapped[str] = mapped_column(String(500))
    first_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # ips, agents, calls, regions
    enrichment: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    verdict: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    notes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # An update to the sinks is owed but was held back by the rate limit: send it at this time.
    update_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)


class DeviceAddress(Base):
    """An address a device's agent reached the issuer from (heartbeats and uploads): the device's
    egress as the issuer saw it, to tell "used from this device's network" from "from elsewhere"."""

    __tablename__ = "device_addresses"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    seen_count: Mapped[int] = mapped_column(Integer, default=1)


class Detection(Base):
    """One AWS-side event that matched a canary (idempotent by source + source event id)."""

    __tablename__ = "detections"
    __table_args__ = (UniqueConstraint("source", "source_event_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id"), index=True)
    source: Mapped[str] = mapped_column(String(32))  # sqs | ingest | lookup_events | last_used
    source_event_id: Mapped[str] = mapped_column(String(255))
    event_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    event_name: Mapped[str | None] = mapped_column(String(255))
    event_source: Mapped[str | None] = mapped_column(String(255))
    region: Mapped[str | None] = mapped_column(String(40))
    source_ip: Mapped[str | None] = mapped_column(String(100))
    user_agent: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(255))
    raw: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delivery(Base):
    """Delivery status of one alert to one sink."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("alert_id", "sink", "revision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id"), index=True)
    sink: Mapped[str] = mapped_column(String(100))
    revision: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class PollerLock(Base):
    """A lease in the database so that several issuer replicas never run the same poller at once."""

    __tablename__ = "poller_locks"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    cursor: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class DeadLetter(Base):
    """An input that could not be parsed or recorded, kept for a responder to inspect.

    One bad event never hides the others: it is counted, kept here and skipped. `payload` is the item
    as JSON text (ASCII-escaped, cut to a budget, credentials-bearing fields removed)."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(32), index=True)  # sqs|ingest|lookup_events|agent_events..
    device_id: Mapped[str | None] = mapped_column(String(40))  # agent events: the sending device
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class IngestCounter(Base):
    """Counts of malformed / unmatched events per source, so skipped input is never silent."""

    __tablename__ = "ingest_counters"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


__all__ = [
    "AgentEvent",
    "Alert",
    "ApiToken",
    "Base",
    "Boolean",
    "Credential",
    "DeadLetter",
    "Delivery",
    "Detection",
    "Device",
    "DeviceAddress",
    "IngestCounter",
    "Placement",
    "PollerLock",
    "SelfTest",
    "UTCDateTime",
    "utcnow",
]
