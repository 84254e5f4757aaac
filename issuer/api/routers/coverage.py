"""The fleet at a glance (responder): GET /v1/coverage."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from issuer import fleet
from issuer.api.auth import ResponderAuth
from issuer.api.deps import SessionDep, SettingsDep
from issuer.api.schemas import UtcTime

router = APIRouter(tags=["coverage"])


class DeviceCounts(BaseModel):
    total: int
    stale: int
    never_reported: int
    by_os: dict[str, int]
    by_agent_version: dict[str, int]


class TargetCounts(BaseModel):
    expected: int
    planted: int
    devices_fully_planted: int
    devices_not_planted: int
    devices_without_targets: int


class SensorCounts(BaseModel):
    by_name: dict[str, dict[str, int]]
    unhealthy_devices: int


class LostEvents(BaseModel):
    sensor_lost: int
    spool_dropped: int
    refused_by_issuer: int
    devices_with_losses: int


class StatusCounts(BaseModel):
    by_status: dict[str, int]


class CredentialCounts(StatusCounts):
    by_backend: dict[str, int]


class Coverage(BaseModel):
    generated_at: UtcTime
    stale_after_seconds: float
    devices: DeviceCounts
    targets: TargetCounts
    sensors: SensorCounts
    lost_events: LostEvents
    credentials: CredentialCounts
    alerts: StatusCounts
    skipped_aws_events: dict[str, int]


@router.get("/v1/coverage", response_model=Coverage)
def coverage(_auth: ResponderAuth, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Devices by OS and agent version, planted vs expected targets, sensors and their health, stale
    agents, events lost on the way, credentials and alerts by status, skipped AWS events."""
    return fleet.coverage(session, stale_after_seconds=settings.stale_after_seconds)
