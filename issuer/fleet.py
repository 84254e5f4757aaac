"""The fleet: device lists with the filters a responder needs, and the coverage report.

Both run on the columns a heartbeat derives from the health document (issuer/device_health.py), so
they are SQL aggregates and indexed range scans, not JSON parsing of every device.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.orm import Session

from issuer.models import Alert, Credential, Device, IngestCounter, utcnow
from issuer.pagination import Page, SortKey, paginate

DEVICE_ORDER = (SortKey(Device.enrolled_at), SortKey(Device.id))


@dataclasses.dataclass(frozen=True)
class DeviceFilter:
    """Every field None = no filter. `planted=False`: some expected target is not planted (or the agent
    reported none); `q`: a case-insensitive part of the hostname or the serial number."""

    stale: bool | None = None
    sensor_healthy: bool | None = None
    planted: bool | None = None
    os: str | None = None
    agent_version: str | None = None
    sensor: str | None = None
    q: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _like_pattern(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def stale_condition(cutoff: dt.datetime, stale: bool = True) -> ColumnElement[bool]:
    """Devices last seen (heartbeat, or enrollment if none) before `cutoff`; or the others."""
    if stale:
        return or_(
            Device.last_heartbeat_at < cutoff,
            and_(Device.last_heartbeat_at.is_(None), Device.enrolled_at < cutoff),
        )
    return or_(
        Device.last_heartbeat_at >= cutoff,
        and_(Device.last_heartbeat_at.is_(None), Device.enrolled_at >= cutoff),
    )


def _not_planted() -> ColumnElement[bool]:
    return or_(Device.targets_expected == 0, Device.targets_planted < Device.targets_expected)


def device_conditions(
    flt: DeviceFilter, stale_after_seconds: float, now: dt.datetime | None = None
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if flt.stale is not None:
        cutoff = (now or utcnow()) - dt.timedelta(seconds=stale_after_seconds)
        conditions.append(stale_condition(cutoff, flt.stale))
    if flt.sensor_healthy is True:
        conditions.append(Device.sensor_healthy.is_(True))
    elif flt.sensor_healthy is False:
        # No sensor report at all is not healthy either: the responder wants to see those devices.
        conditions.append(or_(Device.sensor_healthy.is_(False), Device.sensor_healthy.is_(None)))
    if flt.planted is True:
        conditions.append(
            and_(Device.targets_expected > 0, Device.targets_planted >= Device.targets_expected)
        )
    elif flt.planted is False:
        conditions.append(_not_planted())
    if flt.os:
        conditions.append(func.lower(Device.os) == flt.os.lower())
    if flt.agent_version:
        conditions.append(Device.agent_version == flt.agent_version)
    if flt.sensor:
        conditions.append(Device.sensor_name == flt.sensor)
    if flt.q:
        pattern = _like_pattern(flt.q)
        conditions.append(
            or_(
                func.lower(Device.hostname).like(pattern, escape="\\"),
                func.lower(func.coalesce(Device.serial, "")).like(pattern, escape="\\"),
            )
        )
    return conditions


def list_devices_page(
    session: Session,
    flt: DeviceFilter,
    *,
    stale_after_seconds: float,
    limit: int,
    cursor: str | None = None,
) -> Page[Device]:
    """Devices in enrollment order (oldest first), one page at a time."""
    query = select(Device).where(*device_conditions(flt, stale_after_seconds))
    return paginate(
        session,
        query,
        kind="devices",
        keys=DEVICE_ORDER,
        key_of=lambda d: (d.enrolled_at, d.id),
        limit=limit,
        cursor=cursor,
        filters=flt.as_dict(),
    )


# ----- coverage ---------------------------------------------------------------------------------


def _grouped(session: Session, column: Any) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).group_by(column))
    return {("unknown" if key is None else str(key)): int(count) for key, count in rows}


def _credential_status() -> Any:
    now = utcnow()
    return case(
        (Credential.revoked_at.is_not(None), "revoked"),
        (Credential.retired_at.is_not(None), "retired"),
        (and_(Credential.expires_at.is_not(None), Credential.expires_at <= now), "expired"),
        else_="active",
    )


def coverage(session: Session, *, stale_after_seconds: float) -> dict[str, Any]:
    """The fleet at a glance: devices by OS and agent version, planted vs expected targets, sensors
    and their health, stale agents, events lost on the way, credentials and alerts by status."""
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=stale_after_seconds)

    def count_if(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    totals = session.execute(
        select(
            func.count(),
            count_if(stale_condition(cutoff)),
            count_if(Device.last_heartbeat_at.is_(None)),
            func.coalesce(func.sum(Device.targets_expected), 0),
            func.coalesce(func.sum(Device.targets_planted), 0),
            count_if(and_(Device.targets_expected > 0, Device.targets_planted >= Device.targets_expected)),
            count_if(_not_planted()),
            count_if(Device.targets_expected == 0),
            func.coalesce(func.sum(Device.sensor_lost_events), 0),
            func.coalesce(func.sum(Device.spool_dropped), 0),
            func.coalesce(func.sum(Device.spool_rejected), 0),
            count_if(or_(Device.sensor_lost_events > 0, Device.spool_dropped > 0, Device.spool_rejected > 0)),
        )
    ).one()
    (
        total,
        stale,
        never,
        expected,
        planted,
        fully,
        not_planted,
        no_targets,
        lost,
        dropped,
        rejected,
        lossy,
    ) = (int(v) for v in totals)
    sensors: dict[str, dict[str, int]] = {}
    rows = session.execute(
        select(Device.sensor_name, Device.sensor_healthy, func.count()).group_by(
            Device.sensor_name, Device.sensor_healthy
        )
    )
    for name, healthy, count in rows:
        entry = sensors.setdefault(name or "none reported", {"healthy": 0, "unhealthy": 0, "unknown": 0})
        entry["healthy" if healthy is True else "unhealthy" if healthy is False else "unknown"] += int(count)
    status = _credential_status()
    credentials = {str(k): int(v) for k, v in session.execute(select(status, func.count()).group_by(status))}
    return {
        "generated_at": now,
        "stale_after_seconds": stale_after_seconds,
        "devices": {
            "total": total,
            "stale": stale,
            "never_reported": never,
            "by_os": _grouped(session, Device.os),
            "by_agent_version": _grouped(session, Device.agent_version),
        },
        "targets": {
            "expected": expected,
            "planted": planted,
            "devices_fully_planted": fully,
            "devices_not_planted": not_planted,
            "devices_without_targets": no_targets,
        },
        "sensors": {
            "by_name": sensors,
            "unhealthy_devices": sum(s["unhealthy"] for s in sensors.values()),
        },
        "lost_events": {
            "sensor_lost": lost,
            "spool_dropped": dropped,
            "refused_by_issuer": rejected,
            "devices_with_losses": lossy,
        },
        "credentials": {"by_status": credentials, "by_backend": _grouped(session, Credential.backend)},
        "alerts": {"by_status": _grouped(session, Alert.status)},
        "skipped_aws_events": {
            name: int(value)
            for name, value in session.execute(select(IngestCounter.name, IngestCounter.value))
        },
    }
