"""Thousands of devices in an issuer's database, fast: rows exactly as enrollment and heartbeats
write them (the derived health columns come from issuer/device_health.py, the code the heartbeat
route runs), inserted in bulk. Used by the fleet list tests and by bench/fleet.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import random
import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from issuer.api.schemas import Heartbeat
from issuer.device_health import health_columns
from issuer.models import Alert, ApiToken, Credential, Device, Placement
from issuer.tokens import TOKEN_PREFIX

OSES = ("linux", "darwin", "windows")
VERSIONS = ("0.1.0", "0.2.0", "0.3.0")
SENSORS = {"linux": "fanotify", "darwin": "eslogger", "windows": "eventlog"}


@dataclasses.dataclass(frozen=True)
class SeededDevice:
    device_id: str
    token: str  # the device token (plaintext; the database holds its hash)
    hostname: str
    serial: str
    os: str
    agent_version: str
    enrolled_at: dt.datetime
    last_heartbeat_at: dt.datetime | None
    sensor_healthy: bool | None  # None: never heartbeated
    targets_expected: int
    targets_planted: int
    lost: int


def health_document(
    os: str, healthy: bool, expected: int, planted: int, lost: int, version: str
) -> dict[str, Any]:
    """A heartbeat body as the agent sends it (docs/api.md Heartbeat)."""
    return {
        "agent_version": version,
        "sensor": {
            "name": SENSORS[os],
            "mode": "permission",
            "healthy": healthy,
            "error": None if healthy else "fanotify_init: operation not permitted",
            "lost_events": lost,
        },
        "targets": [
            {
                "path": f"/home/user{i}/.aws/credentials",
                "local_user": f"user{i}",
                "profile": "prod-backup",
                "planted": i < planted,
                "error": None if i < planted else "home directory missing",
            }
            for i in range(expected)
        ],
        "last_event_at": None,
        "spool_pending": 0,
        "spool_dropped": 0,
        "spool_rejected": 0,
    }


def _chunks(rows: Sequence[dict[str, Any]], size: int = 1000) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def seed_devices(
    session: Session,
    count: int,
    *,
    seed: int = 14,
    now: dt.datetime | None = None,
    stale_after: dt.timedelta = dt.timedelta(hours=1),
    prefix: str = "host",
    with_tokens: bool = True,
    hash_token: Callable[[str], str] = lambda raw: hashlib.sha256(raw.encode()).hexdigest(),
    uniform: bool = False,
) -> list[SeededDevice]:
    """Insert `count` devices (and their device tokens) with a deterministic mix of OS, agent
    version, staleness, sensor health, planting and lost events; commit; return what was made.
    `uniform`: every device healthy, one target planted, heartbeat in the last 5 minutes, its health
    exactly `health_document(os, True, 1, 1, 0, version)` (a fleet in its steady state)."""
    rng = random.Random(seed)
    now = now or dt.datetime.now(dt.UTC)
    devices: list[SeededDevice] = []
    device_rows: list[dict[str, Any]] = []
    token_rows: list[dict[str, Any]] = []
    for index in range(count):
        os = OSES[index % 3]
        version = VERSIONS[rng.randrange(3)]
        # One microsecond apart plus ties every 7th device: keyset order must break ties by id.
        enrolled = now - dt.timedelta(days=30) + dt.timedelta(microseconds=index - index % 7)
        kind = 1.0 if uniform else rng.random()
        heartbeat: dt.datetime | None
        if kind < 0.05:
            heartbeat, healthy = None, None  # enrolled, never reported
        elif kind < 0.2:
            heartbeat, healthy = now - stale_after * 3, True  # stale
        else:
            heartbeat, healthy = now - dt.timedelta(seconds=rng.randrange(1, 600)), rng.random() > 0.1
        expected = rng.choice((0, 1, 1, 2, 3)) if healthy is not None else 0
        planted = expected if rng.random() > 0.15 else max(0, expected - 1)
        lost = rng.choice((0, 0, 0, 0, 2))
        if uniform:
            healthy, expected, planted, lost = True, 1, 1, 0
        device_id = f"dev_{prefix}{index:07d}{secrets.token_hex(2)}"
        hostname = f"{prefix}-{os}-{index:06d}"
        serial = f"SN{index:08d}"
        row: dict[str, Any] = {
            "id": device_id,
            "device_key_hash": hashlib.sha256(f"{device_id}-key".encode()).hexdigest(),
            "hostname": hostname,
            "os": os,
            "os_version": None,
            "serial": serial,
            "users": [f"user{i}" for i in range(expected)],
            "agent_version": version,
            "enrolled_at": enrolled,
            "last_heartbeat_at": heartbeat,
            "health": {},
            "health_hash": None,
            "sensor_name": None,
            "sensor_healthy": None,
            "targets_expected": 0,
            "targets_planted": 0,
            "sensor_lost_events": 0,
            "spool_dropped": 0,
            "spool_rejected": 0,
        }
        if healthy is not None:
            # Stored as the heartbeat route stores it (validated, defaults filled in), so a later
            # identical heartbeat through the API finds nothing changed.
            health = Heartbeat.model_validate(
                health_document(os, healthy, expected, planted, lost, version)
            ).model_dump(mode="json")
            row.update(health=health, **health_columns(health))
        device_rows.append(row)
        token = TOKEN_PREFIX["device"] + secrets.token_urlsafe(32)
        if with_tokens:
            token_rows.append(
                {
                    "id": f"tok_{device_id[4:]}"[:40],
                    "role": "device",
                    "token_hash": hash_token(token),
                    "device_id": device_id,
                    "label": f"device {hostname}",
                    "created_at": enrolled,
                    "revoked_at": None,
                }
            )
        devices.append(
            SeededDevice(
                device_id=device_id,
                token=token,
                hostname=hostname,
                serial=serial,
                os=os,
                agent_version=version,
                enrolled_at=enrolled,
                last_heartbeat_at=heartbeat,
                sensor_healthy=healthy,
                targets_expected=expected,
                targets_planted=planted if healthy is not None else 0,
                lost=lost if healthy is not None else 0,
            )
        )
    for chunk in _chunks(device_rows):
        session.execute(insert(Device), chunk)
    for chunk in _chunks(token_rows):
        session.execute(insert(ApiToken), chunk)
    session.commit()
    return devices


def seed_credentials(
    session: Session, devices: Sequence[SeededDevice], per_device: int = 1, *, now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """One placement per device and `per_device` credentials on it (the last active, the others
    retired; every 10th device's last one revoked). Returns the credential rows."""
    now = now or dt.datetime.now(dt.UTC)
    placements: list[dict[str, Any]] = []
    credentials: list[dict[str, Any]] = []
    for index, device in enumerate(devices):
        placement_id = f"plc_{device.device_id[4:]}"[:40]
        placements.append(
            {
                "id": placement_id,
                "device_id": device.device_id,
                "local_user": "user0",
                "path": "/home/user0/.aws/credentials",
                "profile": "prod-backup",
                "created_at": device.enrolled_at,
            }
        )
        for n in range(per_device):
            last = n == per_device - 1
            created = device.enrolled_at + dt.timedelta(days=n, microseconds=index % 5)
            credentials.append(
                {
                    "id": f"cred_{index:07d}_{n}",
                    "placement_id": placement_id,
                    "backend": "iam-user" if index % 4 else "sts-federation",
                    "account": "default",
                    "account_id": "123456789012",
                    "principal_name": f"svc-backup-{index:07d}{n}",
                    "principal_arn": None,
                    "access_key_id": f"AKIA{index:010d}{n:02d}X",
                    "created_at": created,
                    "expires_at": None,
                    "retired_at": None if last else created + dt.timedelta(days=1),
                    "revoked_at": now if last and index % 10 == 0 else None,
                    "last_used_seen_at": None,
                }
            )
    for chunk in _chunks(placements):
        session.execute(insert(Placement), chunk)
    for chunk in _chunks(credentials):
        session.execute(insert(Credential), chunk)
    session.commit()
    return credentials


def seed_alerts(
    session: Session, count: int, *, now: dt.datetime | None = None, prefix: str = "alr_"
) -> list[dict[str, Any]]:
    """`count` alerts (no credential) with a spread of status, severity, kind and time."""
    now = now or dt.datetime.now(dt.UTC)
    rows = []
    for index in range(count):
        created = now - dt.timedelta(hours=count - index) - dt.timedelta(microseconds=index % 3)
        rows.append(
            {
                "id": f"{prefix}{index:07d}",
                "credential_id": None,
                "kind": ("canary_use", "principal_tamper", "selftest")[index % 3],
                "severity": ("low", "medium", "high", "critical")[index % 4],
                "status": ("open", "acknowledged", "resolved")[index % 5 % 3],
                "title": f"seeded alert {index}",
                "first_seen": created,
                "last_seen": created + dt.timedelta(minutes=30),
                "event_count": 1,
                "summary": {},
                "enrichment": {},
                "verdict": {},
                "notes": [],
                "created_at": created,
                "updated_at": created,
            }
        )
    for chunk in _chunks(rows):
        session.execute(insert(Alert), chunk)
    session.commit()
    return rows
