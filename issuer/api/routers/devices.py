"""Devices: list (paged, filtered) and show (responder, or a device itself), a device's read log, and
retirement (responder)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from issuer import agent_events, fleet, registry
from issuer.api.auth import DeviceOrResponderAuth, ResponderAuth
from issuer.api.deps import GatewayDep, SessionDep, SettingsDep
from issuer.api.schemas import DeviceList, DeviceOut, QueryText, ReadList, RetiredDeviceOut
from issuer.aws.config import AwsError
from issuer.errors import AwsUpstreamError, InvalidRequest
from issuer.pagination import MAX_CURSOR_LENGTH

router = APIRouter(tags=["devices"])

Cursor = Annotated[
    QueryText, Query(max_length=MAX_CURSOR_LENGTH, description="`next_cursor` of the previous page")
]


@router.get("/v1/devices", response_model=DeviceList)
def list_devices(
    _auth: ResponderAuth,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=5000, description="devices per page")] = 500,
    cursor: Cursor = None,
    stale: Annotated[bool | None, Query(description="only devices whose agent stopped reporting")] = None,
    sensor_healthy: Annotated[
        bool | None, Query(description="false: sensor unhealthy or never reported")
    ] = None,
    planted: Annotated[
        bool | None, Query(description="false: some expected target is not planted, or none reported")
    ] = None,
    os: Annotated[QueryText, Query(max_length=40, description="linux, darwin, windows")] = None,
    agent_version: Annotated[QueryText, Query(max_length=40)] = None,
    sensor: Annotated[QueryText, Query(max_length=40, description="sensor name, e.g. fanotify")] = None,
    q: Annotated[QueryText, Query(max_length=200, description="part of the hostname or serial")] = None,
) -> dict[str, Any]:
    """Devices in enrollment order, one page at a time: follow `next_cursor` until it is null."""
    flt = fleet.DeviceFilter(
        stale=stale,
        sensor_healthy=sensor_healthy,
        planted=planted,
        os=os,
        agent_version=agent_version,
        sensor=sensor,
        q=q,
    )
    page = fleet.list_devices_page(
        session, flt, stale_after_seconds=settings.stale_after_seconds, limit=limit, cursor=cursor
    )
    return {
        "devices": [registry.device_info(d, settings.stale_after_seconds) for d in page.items],
        "next_cursor": page.next_cursor,
    }


@router.get("/v1/devices/{device_id}", response_model=DeviceOut)
def show_device(
    device_id: str, _auth: DeviceOrResponderAuth, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    return registry.device_info(registry.get_device(session, device_id), settings.stale_after_seconds)


@router.get("/v1/devices/{device_id}/reads", response_model=ReadList)
def list_reads(
    device_id: str,
    _auth: ResponderAuth,
    session: SessionDep,
    since: Annotated[str, Query(max_length=64, description="24h, 30m, 7d or an ISO 8601 time")] = "24h",
    path: Annotated[str | None, Query(max_length=4096, description="only reads of this file")] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Reads of the device's planted files since `since`, newest first, one page at a time."""
    try:
        since_time = agent_events.parse_since(since)
    except ValueError as exc:
        raise InvalidRequest(f"query.since: {exc}") from exc
    if path is not None and "\x00" in path:
        raise InvalidRequest("query.path: must not contain NUL characters")
    page = agent_events.reads_page(
        session, device_id, since=since_time, path=path, since_text=since, limit=limit, cursor=cursor
    )
    return {"reads": [agent_events.read_record(e) for e in page.items], "next_cursor": page.next_cursor}


@router.post("/v1/devices/{device_id}/retire", response_model=RetiredDeviceOut)
def retire_device(
    device_id: str, _auth: ResponderAuth, session: SessionDep, settings: SettingsDep, gateway: GatewayDep
) -> dict[str, Any]:
    """Offboard a device: revoke all its credentials in AWS and its device tokens, mark it retired.

    Idempotent; after a 502 (AWS failed part-way) call it again to finish. The device's agent can no
    longer enroll with the same device key (409).
    """
    try:
        retired = registry.retire_device(session, gateway, device_id)
    except AwsError as exc:
        raise AwsUpstreamError(f"AWS call failed while revoking the device's keys: {exc}") from exc
    return {
        "device": registry.device_info(retired.device, settings.stale_after_seconds),
        "revoked": [registry.credential_info(c) for c in retired.revoked],
    }
