"""What agents report about their device: read/tamper/self-report events, heartbeats, self-tests."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_json

from issuer import agent_events, dead_letters, egress, registry
from issuer.api.auth import DeviceAuth
from issuer.api.deps import PeerAddressDep, SessionDep, SettingsDep
from issuer.api.errors import describe_validation_errors
from issuer.api.schemas import (
    AgentEventIn,
    EventBatch,
    EventError,
    EventsAccepted,
    Heartbeat,
    HeartbeatAck,
    SelftestCreated,
    SelftestRequest,
)
from issuer.detection.counters import bump_counter
from issuer.textsafe import storable_json

router = APIRouter(tags=["agent events"])


def _storable(item: Any) -> Any:
    """The item with NUL and unpaired surrogates spelled out (\\x00, \\ud800), or the item itself.

    The check is one pass of pydantic's JSON encoder (Rust): it refuses unpaired surrogates, as the
    database would, and spells NUL as \\u0000. Only an item that fails it is copied."""
    try:
        text = to_json(item)
    except (PydanticSerializationError, ValueError, RecursionError):
        return storable_json(item)
    return storable_json(item) if b"\\u0000" in text else item


def _validate(items: list[Any]) -> tuple[list[tuple[int, dict[str, Any]]], list[EventError], list[Any]]:
    """Each item on its own: (index, event) for the valid ones, an error and the item for the others.

    Text no database can hold (NUL, unpaired surrogates) is spelled out first, so such characters in
    a command line cost nothing but their spelling; the common case pays one C-speed scan."""
    valid: list[tuple[int, dict[str, Any]]] = []
    errors: list[EventError] = []
    refused: list[Any] = []
    for index, item in enumerate(items):
        clean = _storable(item)
        try:
            event = AgentEventIn.model_validate(clean)
        except ValidationError as exc:
            event_id = clean.get("event_id") if isinstance(clean, dict) else None
            if not isinstance(event_id, str):
                event_id = None
            located = [{**error, "loc": ("events", index, *error["loc"])} for error in exc.errors()]
            errors.append(
                EventError(index=index, event_id=event_id, message=describe_validation_errors(located))
            )
            refused.append(clean)
            continue
        stored = {"event_id": event.event_id, "kind": event.kind, "time": event.time, "path": event.path}
        valid.append((index, {**stored, "detail": event.payload()}))
    return valid, errors, refused


@router.post("/v1/devices/{device_id}/events", response_model=EventsAccepted)
def upload_events(
    device_id: str,
    body: EventBatch,
    _auth: DeviceAuth,
    session: SessionDep,
    peer: PeerAddressDep,
    request: Request,
) -> EventsAccepted:
    """Store a batch (≤ 1000) of events, each on its own: an event_id seen before counts as a duplicate;
    an invalid or unstorable event is refused, listed in `errors`, counted and kept as a dead letter.
    The address the upload came from is noted as one of the device's egress addresses."""
    valid, errors, refused = _validate(body.events)
    if errors:
        for error, item in zip(errors, refused, strict=True):
            dead_letters.keep(
                session, "agent_events", f"event {error.index}: {error.message}", item, device_id=device_id
            )
        bump_counter(session, "agent_events.rejected", len(errors))
        session.commit()
    result = agent_events.store_events(session, device_id, [event for _, event in valid])
    for position, reason in result.failed:
        index = valid[position][0]
        errors.append(EventError(index=index, event_id=valid[position][1]["event_id"], message=reason))
    errors.sort(key=lambda e: e.index)
    egress.record_address(session, device_id, peer)
    request.app.state.metrics.observe_agent_events(result.accepted, result.duplicates)
    return EventsAccepted(
        accepted=result.accepted, duplicates=result.duplicates, rejected=len(errors), errors=errors
    )


@router.post("/v1/devices/{device_id}/heartbeat", response_model=HeartbeatAck)
def heartbeat(
    device_id: str, body: Heartbeat, _auth: DeviceAuth, session: SessionDep, peer: PeerAddressDep
) -> HeartbeatAck:
    """Record the agent's health (sensor state, planted targets, spool) and its egress address."""
    # The stored health is what the agent reported; which schema version it wrote in is not health.
    health = body.model_dump(mode="json", exclude={"schema_version"})
    now = registry.record_heartbeat(session, device_id, health)
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
