"""What agents report about their device: read/tamper/self-report events, heartbeats, self-tests."""

from __future__ import annotations

from fastapi import APIRouter, Request

from issuer import agent_events, egress, registry
from issuer.api.auth import DeviceAuth
from issuer.api.deps import PeerAddressDep, SessionDep, SettingsDep
from issuer.api.schemas import (
    EventBatch,
    EventsAccepted,
    Heartbeat,
    HeartbeatAck,
    SelftestCreated,
    SelftestRequest,
)

router = APIRouter(tags=["agent events"])


@router.post("/v1/devices/{device_id}/events", response_model=EventsAccepted)
def upload_events(
    device_id: str,
    body: EventBatch,
    _auth: DeviceAuth,
    session: SessionDep,
    peer: PeerAddressDep,
    request: Request,
) -> EventsAccepted:
    """Store a batch (≤ 1000) of events; an event_id seen before counts as a duplicate, not an error.
    The address the upload came from is noted as one of the device's egress addresses."""
    events = [
        {"event_id": e.event_id, "kind": e.kind, "time": e.time, "path": e.path, "detail": e.payload()}
        for e in body.events
    ]
    accepted, duplicates = agent_events.store_events(session, device_id, events)
    egress.record_address(session, device_id, peer)
    request.app.state.metrics.observe_agent_events(accepted, duplicates)
    return EventsAccepted(accepted=accepted, duplicates=duplicates)


@router.post("/v1/devices/{device_id}/heartbeat", response_model=HeartbeatAck)
def heartbeat(
    device_id: str, body: Heartbeat, _auth: DeviceAuth, session: SessionDep, peer: PeerAddressDep
) -> HeartbeatAck:
    """Record the agent's health (sensor state, planted targets, spool) and its egress address."""
    now = registry.record_heartbeat(session, device_id, body.model_dump(mode="json"))
    egress.record_address(session, device_id, peer, now)
    return HeartbeatAck(ok=True, server_time=now)


@router.post("/v1/devices/{device_id}/selftest", response_model=SelftestCreated)
def selftest(
    device_id: str, body: SelftestRequest, _auth: DeviceAuth, session: SessionDep, settings: SettingsDep
) -> SelftestCreated:
    """The next use of this credential within the window opens a `selftest` alert, not an incident."""
    test = agent_events.create_selftest(
        session, device_id, body.credential_id, settings.selftest_window_seconds
    )
    return SelftestCreated(selftest_id=test.id, expires_at=test.expires_at)
