"""The bounded power of a device token: how many canaries one device may have minted.

Each mint creates an IAM user (or a federation token) in the canary account, and an account holds at
most 5,000 IAM users: a stolen device token minting in a loop (25 users in 0.4 s, measured) could
exhaust it and stop planting fleet-wide. A device legitimately mints once per placement it plants,
again when a key is rotated or a short-term one renewed, and again when a user keeps removing the
profile (re-plants back off: 1, 2, 4... minutes). So:

* a device may have at most `max_placements` placements (a new path beyond that is refused);
* within each window of `window_seconds` it may mint `burst` credentials plus two per placement it
  had when the window opened (a new placement cannot raise the budget of the window it is made in).

A refused mint is 429 `rate_limited` with `Retry-After`, and is counted on the device
(`mints_refused`, `last_mint_refused_at`), which `GET /v1/devices[/{id}]` and `tripkey devices`
show. The window is one row update (compare-and-set), so concurrent mints never overshoot it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from issuer.errors import TooManyRequests
from issuer.models import Device, Placement, utcnow
from issuer.timefmt import iso, iso_or_none


@dataclasses.dataclass(frozen=True, slots=True)
class MintLimits:
    burst: int = 10
    window_seconds: int = 3600
    max_placements: int = 100


def _placements(session: Session, device_id: str) -> int:
    return int(session.scalar(select(func.count()).where(Placement.device_id == device_id)) or 0)


def _refuse(session: Session, device: Device, now: dt.datetime, message: str, retry_after: int) -> None:
    session.execute(
        update(Device)
        .where(Device.id == device.id)
        .values(mints_refused=Device.mints_refused + 1, last_mint_refused_at=now)
    )
    session.commit()
    raise TooManyRequests(message, retry_after=retry_after)


def reserve_mint(
    session: Session,
    device: Device,
    limits: MintLimits,
    *,
    new_placement: bool,
    now: dt.datetime | None = None,
) -> None:
    """Count one mint against the device's budget (commits), or raise TooManyRequests (429)."""
    now = now or utcnow()
    placements = _placements(session, device.id)
    if new_placement and placements >= limits.max_placements:
        _refuse(
            session,
            device,
            now,
            f"device {device.id} already has {placements} placements, the most one device may have "
            f"(device_max_placements = {limits.max_placements})",
            limits.window_seconds,
        )
    # Open a new window if the last one is over (only one of several concurrent callers does).
    session.execute(
        update(Device)
        .where(
            Device.id == device.id,
            (Device.mint_window_until.is_(None)) | (Device.mint_window_until <= now),
        )
        .values(
            mint_window_until=now + dt.timedelta(seconds=limits.window_seconds),
            mint_window_count=0,
            mint_window_limit=limits.burst + 2 * placements,
        )
    )
    taken = session.execute(
        update(Device)
        .where(Device.id == device.id, Device.mint_window_count < Device.mint_window_limit)
        .values(mint_window_count=Device.mint_window_count + 1)
    )
    if taken.rowcount:  # type: ignore[attr-defined]
        session.commit()
        return
    row = session.execute(
        select(Device.mint_window_until, Device.mint_window_limit).where(Device.id == device.id)
    ).one()
    until = row.mint_window_until
    until = until.replace(tzinfo=dt.UTC) if until is not None and until.tzinfo is None else until
    wait = max(1, math.ceil((until - now).total_seconds())) if until is not None else limits.window_seconds
    _refuse(
        session,
        device,
        now,
        f"device {device.id} minted {row.mint_window_limit} credentials in this window, its limit "
        f"({limits.burst} + 2 per placement); try again in {wait} s",
        wait,
    )


def minting_info(device: Device, now: dt.datetime | None = None) -> dict[str, Any]:
    """The device's minting budget as responders see it."""
    now = now or utcnow()
    until = device.mint_window_until
    active = until is not None and until > now
    return {
        "window_ends_at": iso(until) if until is not None and active else None,
        "minted_in_window": int(device.mint_window_count or 0) if active else 0,
        "window_limit": int(device.mint_window_limit or 0) if active else None,
        "refused": int(device.mints_refused or 0),
        "last_refused_at": iso_or_none(device.last_mint_refused_at),
    }


__all__ = ["MintLimits", "minting_info", "reserve_mint"]
