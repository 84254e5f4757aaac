"""Context for an alert: device, placement, credential, reads (with each reader's provenance),
self-reports, agent health, and the AWS side (issuer.alerts.awsfacts): user-agent families, the
kinds of calls, regions, errors, and each source address against the device's own egress.

The reads that matter are those of the planted file between the credential's planting and its first
use: one of them is how the key left the host (unless it travelled without being read, which is a
finding too). Reads shortly after the first use are shown as context but cannot explain the leak.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from issuer import egress, registry
from issuer.alerts.awsfacts import AwsFacts, Call, make_call
from issuer.alerts.verdict import ReadFact, SelfReportFact, Verdict, VerdictInput, decide
from issuer.models import AgentEvent, Credential, Detection, Device, Placement
from issuer.timefmt import as_utc, iso, iso_or_none

AFTER_USE_WINDOW = dt.timedelta(minutes=10)
# Agent clocks drift; a read a little "before" the issuer minted the key is still of this key.
CLOCK_SKEW = dt.timedelta(minutes=2)
# CloudTrail's eventTime has whole seconds, and a scanner verifies its find within the same second it
# read the file: a read up to this long "after" the recorded first use can still be how the key left.
USE_TIME_SLACK = dt.timedelta(seconds=3)
MAX_READS = 200


_iso = iso_or_none


def _time_text(value: Any) -> str | None:
    """A time the agent sent (stored as text): in the one format, or None when it is not a time."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return iso(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _ancestor(item: Any) -> dict[str, Any] | None:
    """One process of the reader's parent chain; `user` is its account name (agents send it since
    schema 1.0; older ones sent only the uid)."""
    if not isinstance(item, dict):
        return None
    raw_cmdline = item.get("cmdline")
    cmdline: list[Any] = raw_cmdline if isinstance(raw_cmdline, list) else []
    return {
        "pid": _int_or_none(item.get("pid")),
        "exe": _text_or_none(item.get("exe")),
        "cmdline": [str(part) for part in cmdline],
        "uid": _int_or_none(item.get("uid")),
        "user": _text_or_none(item.get("user")),
    }


def device_facts(device: Device) -> dict[str, Any]:
    """The device as an alert stores it (JSON: times as ISO strings)."""
    return {**registry.device_facts(device), "enrolled_at": _iso(device.enrolled_at)}


def credential_facts(credential: Credential) -> dict[str, Any]:
    """The credential as an alert stores it (JSON: times as ISO strings)."""
    facts = registry.credential_facts(credential)
    return {k: _iso(v) if isinstance(v, dt.datetime) else v for k, v in facts.items()}


def _read_record(event: AgentEvent, first_use: dt.datetime) -> dict[str, Any]:
    detail = event.detail or {}
    read = detail.get("read", detail) if isinstance(detail, dict) else {}
    cmdline = read.get("cmdline") if isinstance(read.get("cmdline"), list) else []
    return {
        "event_id": event.event_id,
        "time": _iso(event.time),
        "pid": event.pid if event.pid is not None else read.get("pid"),
        "ppid": read.get("ppid"),
        "start_time": _time_text(read.get("start_time")),
        "exe": event.exe or read.get("exe"),
        "cmdline": [str(part) for part in cmdline],
        "cwd": _text_or_none(read.get("cwd")),
        "uid": read.get("uid"),
        "user": event.user or read.get("user"),
        "access": _text_or_none(read.get("access")),
        "classification": event.classification or read.get("classification"),
        "sensor": read.get("sensor"),
        "ancestors": [a for a in map(_ancestor, read.get("ancestors") or []) if a is not None],
        "partial": bool(read.get("partial")),
        "provenance": read.get("provenance") if isinstance(read.get("provenance"), dict) else None,
        "claimed_label": read.get("claimed_label"),
        "trust_reason": read.get("trust_reason"),
        "after_first_use": as_utc(event.time) > first_use + USE_TIME_SLACK,
    }


def _self_report_record(row: AgentEvent) -> dict[str, Any]:
    detail = row.detail if isinstance(row.detail, dict) else {}
    report = detail.get("self_report", detail)
    return {
        "event_id": row.event_id,
        "time": _iso(row.time),
        "path": row.path,
        "user": report.get("user") or row.user,
        "note": report.get("note"),
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def agent_health(device: Device, at: dt.datetime, stale_after_seconds: int) -> dict[str, Any]:
    """The agent's health around `at`: heartbeat freshness and what its sensor said last."""
    last = as_utc(device.last_heartbeat_at) if device.last_heartbeat_at else None
    stale_after = dt.timedelta(seconds=stale_after_seconds)
    # Only the latest heartbeat is kept: a heartbeat older than stale_after before the use means the
    # agent was not reporting then. A newer one cannot prove it was up at the time, but it is the
    # best evidence the registry holds.
    stale = last is None or last < at - stale_after
    health = dict(device.health or {})
    sensor = health.get("sensor") if isinstance(health.get("sensor"), dict) else {}
    return {
        "last_heartbeat_at": _iso(last),
        "stale_at_use": stale,
        "stale_now": last is None or last < dt.datetime.now(dt.UTC) - stale_after,
        "sensor": sensor,
        "sensor_healthy": bool(sensor.get("healthy", False)) if sensor else False,
        # Reads the agent never delivered: lost by the sensor, dropped by a full spool, refused here,
        # or never queued at all (the spool could not be written: a full disk).
        "lost_events": (int(sensor.get("lost_events") or 0) if sensor else 0)
        + _count(health.get("spool_dropped"))
        + _count(health.get("spool_rejected"))
        + _count(health.get("spool_failed")),
        # Reads the agent saw but could not write to its own read log (it may still have sent them).
        "readlog_failed": _count(health.get("readlog_failed")),
        "health": health,
    }


MAX_DETECTIONS = 500


def aws_facts(
    session: Session, alert_id: str | None, device: Device, first_use: dt.datetime, window: dt.timedelta
) -> AwsFacts:
    """The AWS side of an alert: its detections, each source address against the addresses the
    device reached the issuer from in `window` before the first use (and since)."""
    seen = egress.addresses(egress.seen_addresses(session, device.id, first_use - window))
    if alert_id is None:
        return AwsFacts(calls=(), device_addresses=tuple(seen))
    rows = session.scalars(
        select(Detection)
        .where(Detection.alert_id == alert_id)
        .order_by(Detection.event_time, Detection.id)
        .limit(MAX_DETECTIONS)
    ).all()
    calls = tuple(_call(row, seen) for row in rows)
    latest = None
    if len(rows) == MAX_DETECTIONS:  # more than are loaded: the newest one names the last address
        newest = session.scalars(
            select(Detection)
            .where(Detection.alert_id == alert_id)
            .order_by(Detection.event_time.desc(), Detection.id.desc())
            .limit(1)
        ).first()
        latest = _call(newest, seen) if newest is not None else None
    return AwsFacts(calls=calls, device_addresses=tuple(seen), latest=latest)


def _call(row: Detection, seen: list[str]) -> Call:
    return make_call(
        time=as_utc(row.event_time),
        event_id=row.source_event_id.removeprefix("tamper:"),
        event_name=row.event_name,
        event_source=row.event_source,
        region=row.region,
        source_ip=row.source_ip,
        user_agent=row.user_agent,
        error_code=row.error_code,
        detection_source=row.source,
        raw=row.raw if isinstance(row.raw, dict) else None,
        device_addresses=seen,
    )


def build_context(
    session: Session,
    credential: Credential,
    first_use: dt.datetime,
    *,
    stale_after_seconds: int,
    selftest: bool = False,
    alert_id: str | None = None,
    address_window_days: float = 30.0,
) -> tuple[dict[str, Any], Verdict]:
    """Return (enrichment, verdict) for an alert about `credential` first used at `first_use`."""
    first_use = as_utc(first_use)
    placement: Placement = credential.placement
    device: Device = placement.device
    planted = as_utc(credential.created_at)
    leak_end = first_use + USE_TIME_SLACK
    if credential.retired_at is not None:
        # After rotation the file holds another key: later reads cannot have leaked this one.
        leak_end = min(leak_end, as_utc(credential.retired_at) + CLOCK_SKEW)

    # Newest first under the cap, then back to time order: a key planted long ago collects routine
    # reads, and the ones that matter are those just before the first use.
    rows = session.scalars(
        select(AgentEvent)
        .where(
            AgentEvent.device_id == device.id,
            AgentEvent.path == placement.path,
            AgentEvent.kind == "read",
            AgentEvent.time >= planted - CLOCK_SKEW,
            AgentEvent.time <= first_use + AFTER_USE_WINDOW,
        )
        .order_by(AgentEvent.time.desc(), AgentEvent.event_id.desc())
        .limit(MAX_READS)
    ).all()[::-1]
    reads = [_read_record(row, first_use) for row in rows]
    leak_reads = [
        ReadFact(
            time=as_utc(row.time),
            classification=record["classification"],
            user=record["user"],
            exe=record["exe"],
            cmdline=tuple(record["cmdline"]),
            pid=record["pid"],
            partial=record["partial"],
            provenance=record["provenance"],
            claimed=record["claimed_label"] if isinstance(record["claimed_label"], str) else None,
            trust_reason=record["trust_reason"] if isinstance(record["trust_reason"], str) else None,
            event_id=record["event_id"],
        )
        for row, record in zip(rows, reads, strict=True)
        if as_utc(row.time) <= leak_end
    ]

    reports = session.scalars(
        select(AgentEvent)
        .where(
            AgentEvent.device_id == device.id,
            AgentEvent.kind == "self_report",
            AgentEvent.time >= planted - CLOCK_SKEW,
            AgentEvent.time <= first_use + AFTER_USE_WINDOW,
        )
        .order_by(AgentEvent.time)
    ).all()
    relevant_reports = [row for row in reports if row.path == placement.path or not row.path]
    self_reports = [_self_report_record(row) for row in relevant_reports]

    health = agent_health(device, first_use, stale_after_seconds)
    aws = aws_facts(session, alert_id, device, first_use, dt.timedelta(days=address_window_days))
    enrichment = {
        "device": device_facts(device),
        "placement": {
            "placement_id": placement.id,
            "local_user": placement.local_user,
            "path": placement.path,
            "profile": placement.profile,
            "created_at": _iso(placement.created_at),
        },
        "credential": credential_facts(credential),
        "reads_window": {
            "from": _iso(planted),
            "first_use": _iso(first_use),
            "to": _iso(first_use + AFTER_USE_WINDOW),
        },
        "reads": reads,
        "self_reports": self_reports,
        "agent_health": health,
        "aws": aws.to_dict(),
    }
    verdict = decide(
        VerdictInput(
            first_use=first_use,
            placement_user=placement.local_user,
            reads=tuple(leak_reads),
            self_reports=tuple(
                SelfReportFact(time=as_utc(row.time), user=record["user"], event_id=row.event_id)
                for row, record in zip(relevant_reports, self_reports, strict=True)
            ),
            agent_stale=health["stale_at_use"],
            sensor_healthy=health["sensor_healthy"] if health["sensor"] else not health["stale_at_use"],
            lost_events=health["lost_events"],
            readlog_failed=health["readlog_failed"],
            selftest=selftest,
            aws=aws,
        )
    )
    return enrichment, verdict
