"""EventBridge API-destination ingest: POST /v1/ingest/eventbridge/{destination}.

Authenticated by the destination's own secret in `X-Tripkey-Ingest-Key` (only its SHA-256 is in the
configuration; compared in constant time). Missing header, wrong secret and unknown destination all
get the same 401, so the route reveals nothing about which destinations exist. The body is one
EventBridge event or an array of them (at most 256 KiB, EventBridge's own event size limit). Each
event is parsed and recorded on its own: one that cannot be parsed or recorded is counted
(`ingest.malformed`, `ingest.failed`), kept as a dead letter and skipped, and the others alert.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from issuer.api.deps import SettingsDep
from issuer.api.errors import error_response
from issuer.detection.events import AwsEvent, MalformedEvent, Rejected, parse_json_events
from issuer.detection.ingest_secret import INGEST_KEY_HEADER
from issuer.detection.pipeline import ProcessStats, count_malformed, process_events
from issuer.errors import InvalidRequest, Unauthenticated
from issuer.settings import Settings

router = APIRouter(tags=["detection ingest"])

INGEST_MAX_BODY = 256 * 1024
_DUMMY_HASH = "0" * 64


def check_ingest_key(settings: Settings, destination: str, key: str | None) -> None:
    """Raise Unauthenticated unless `key` is the secret of `destination` (constant time)."""
    expected = _DUMMY_HASH
    known = False
    for item in settings.ingest_destinations:
        if hmac.compare_digest(item.name.encode(), destination.encode()):
            expected = item.secret_sha256.lower()
            known = True
    offered = hashlib.sha256((key or "").encode()).hexdigest()
    matches = hmac.compare_digest(offered, expected)
    if not (known and key and matches):
        raise Unauthenticated(f"missing or invalid {INGEST_KEY_HEADER} for this ingest destination")


async def _read_limited(request: Request, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _process(
    request: Request, settings: Settings, events: list[AwsEvent], rejected: list[Rejected]
) -> ProcessStats:
    runner = getattr(request.app.state, "detection_runner", None)
    if runner is not None:
        stats: ProcessStats = runner.handle_events(events, rejected, source="ingest")
        return stats
    # No runner (detection not started): record now; deliveries wait for a runner to pick them up.
    sessionmaker = request.app.state.sessionmaker
    count_malformed(sessionmaker, "ingest", rejected)
    stats = process_events(
        sessionmaker,
        events,
        sink_names=[str(s.get("name") or s.get("type")) for s in settings.sinks],
        stale_after_seconds=settings.stale_after_seconds,
        address_window_days=settings.device_address_window_days,
        update_min_interval=settings.alert_update_min_interval,
    )
    stats.malformed += len(rejected)
    return stats


@router.post(
    "/v1/ingest/eventbridge/{destination}",
    status_code=202,
    responses={
        401: {"description": "missing or wrong ingest key, or unknown destination"},
        413: {"description": "body over 256 KiB"},
    },
)
async def ingest_eventbridge(
    destination: str,
    request: Request,
    settings: SettingsDep,
    x_tripkey_ingest_key: Annotated[str | None, Header(alias=INGEST_KEY_HEADER)] = None,
) -> Any:
    """Accept one EventBridge "AWS API Call via CloudTrail" event or an array of them."""
    check_ingest_key(settings, destination, x_tripkey_ingest_key)
    limit = min(INGEST_MAX_BODY, settings.max_body_bytes)
    body = await _read_limited(request, limit)
    if body is None:
        return error_response(
            413, "body_too_large", f"request body is larger than the limit of {limit} bytes"
        )
    try:
        events, rejected = parse_json_events(body, source="ingest")
    except MalformedEvent as exc:
        await run_in_threadpool(_count_whole_body, request, body)
        raise InvalidRequest("body must be an EventBridge event or a JSON array of them") from exc
    stats = await run_in_threadpool(_process, request, settings, events, rejected)
    # accepted: events recorded (or matching no canary); skipped: events that could not be read or
    # recorded, counted and kept as dead letters. A malformed event naming a canary's key alerts.
    return JSONResponse(
        {"accepted": stats.events - stats.dead_lettered, "skipped": len(rejected) + stats.dead_lettered},
        status_code=202,
    )


def _count_whole_body(request: Request, body: bytes) -> None:
    text = body.decode("utf-8", "backslashreplace")
    count_malformed(request.app.state.sessionmaker, "ingest", [Rejected("body is not JSON", text)])
