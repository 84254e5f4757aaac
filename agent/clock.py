"""Time, defined once for the agent: UTC now, and the RFC 3339 text every payload and file uses."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def to_iso(value: dt.datetime | None) -> str | None:
    """RFC 3339 in UTC with `Z` (`2026-11-30T01:02:03.123456Z`); None stays None."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def from_iso(value: str | None) -> dt.datetime | None:
    """The inverse of to_iso; a time without a zone is taken as UTC."""
    if not value:
        return None
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


__all__ = ["from_iso", "to_iso", "utcnow"]
