"""Time, written once for the issuer: every time in Tripkey is UTC, and every time in a JSON output or
payload is RFC 3339 with `Z` (`2026-11-30T03:23:23.783898Z`; the fraction is left out when it is zero).
docs/schema.md states the rule; tests/schema checks every output against it.
"""

from __future__ import annotations

import datetime as dt


def as_utc(value: dt.datetime) -> dt.datetime:
    """Datetimes read back from SQLite are naive; every time in Tripkey is UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def iso(value: dt.datetime) -> str:
    """The one text form of a time: RFC 3339, UTC, `Z`."""
    return as_utc(value).isoformat().replace("+00:00", "Z")


def iso_or_none(value: dt.datetime | None) -> str | None:
    return None if value is None else iso(value)


__all__ = ["as_utc", "iso", "iso_or_none"]
