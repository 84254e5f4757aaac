"""When the planter acts again: renewal of a credential, re-plant backoff, and tamper events.

Pure functions and constants, shared by agent.planting.planter (which acts on them) and agent.status (which
shows when the next renewal is due).

* Short-term credentials (with an expiry) are renewed `refresh_before_seconds` before they expire;
  long-term keys are rotated `rotate_days` after they were planted (the issuer retires the old one).
* A planted section the user removes is re-planted at once the first time, then after 1 min,
  2 min, ... capped at 24 h while they keep removing it; a quiet day starts the count again.
* Errors back off from 1 min to 1 h; a conflict (a file we must not touch) from 1 h to 24 h.
"""

from __future__ import annotations

import datetime as dt

from agent.clock import from_iso
from agent.config import AgentConfig
from agent.state import TargetState

TAMPER_FIRST_DELAY = 60.0
TAMPER_MAX_DELAY = 24 * 3600.0
TAMPER_RESET_AFTER = 24 * 3600.0  # a quiet day forgets earlier removals
ERROR_FIRST_DELAY = 60.0
ERROR_MAX_DELAY = 3600.0
CONFLICT_FIRST_DELAY = 3600.0
CONFLICT_MAX_DELAY = 24 * 3600.0


def tamper_delay(count: int) -> float:
    """Seconds to wait before re-planting after the `count`-th removal in a row (1 → at once)."""
    if count <= 1:
        return 0.0
    return min(TAMPER_FIRST_DELAY * (2 ** (count - 2)), TAMPER_MAX_DELAY)


def backoff(first: float, cap: float, failures: int) -> float:
    """`first` after the first failure, doubling with each further one, at most `cap`."""
    return min(first * (2 ** max(failures - 1, 0)), cap)


def renews_at(ts: TargetState, config: AgentConfig) -> tuple[dt.datetime, str] | None:
    """When the credential of `ts` is due for renewal and why ("expiring"/"rotation"); None if
    nothing is planted yet."""
    expires = from_iso(ts.expires_at)
    if expires is not None:
        return expires - dt.timedelta(seconds=config.refresh_before_seconds), "expiring"
    created = from_iso(ts.created_at)
    if created is not None:
        return created + dt.timedelta(days=config.rotate_days), "rotation"
    return None


def refresh_due(ts: TargetState, config: AgentConfig, now: dt.datetime) -> str | None:
    """Why the credential of `ts` must be renewed now ("expiring"/"rotation"), or None."""
    due = renews_at(ts, config)
    if due is not None and now >= due[0]:
        return due[1]
    return None


__all__ = [
    "CONFLICT_FIRST_DELAY",
    "CONFLICT_MAX_DELAY",
    "ERROR_FIRST_DELAY",
    "ERROR_MAX_DELAY",
    "TAMPER_FIRST_DELAY",
    "TAMPER_MAX_DELAY",
    "TAMPER_RESET_AFTER",
    "backoff",
    "refresh_due",
    "renews_at",
    "tamper_delay",
]
