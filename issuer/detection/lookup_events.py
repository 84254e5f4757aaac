"""CloudTrail LookupEvents pull, per account and region, with a cursor kept in the database.

LookupEvents returns management events of the last 90 days, newest first, 50 a page. CloudTrail
delivers events up to ~15 minutes late, so each poll re-reads an overlap window before the cursor;
detections are idempotent by event id, so the overlap costs nothing but a few reads. A poll that
hits the page cap leaves the oldest part of its window unread; the cursor keeps it as `gap`, read by
the next polls after their fresh window.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from issuer.detection.events import AwsEvent, Rejected, parse_items, parse_lookup_event, parse_time
from issuer.detection.locks import Lease

log = logging.getLogger(__name__)
OVERLAP = dt.timedelta(minutes=20)
INITIAL_LOOKBACK = dt.timedelta(hours=1)
MAX_PAGES = 200  # 10,000 events per poll and region; the rest is kept as a `gap` in the cursor

EventHandler = Callable[[list[AwsEvent], list[Rejected]], None]


@dataclasses.dataclass
class Fetched:
    events: list[AwsEvent]
    rejected: list[Rejected]
    pages: int
    # LookupEvents pages newest first: if the page cap stopped the read, everything in the window
    # older than this is still unread.
    unread_before: dt.datetime | None


def fetch_events(client: Any, start: dt.datetime, end: dt.datetime, max_pages: int | None = None) -> Fetched:
    """Events between start and end, page after page up to `max_pages` (default MAX_PAGES)."""
    limit = MAX_PAGES if max_pages is None else max_pages
    fetched = Fetched(events=[], rejected=[], pages=0, unread_before=None)
    token: str | None = None
    oldest: dt.datetime | None = None
    while fetched.pages < limit:
        params: dict[str, Any] = {"StartTime": start, "EndTime": end, "MaxResults": 50}
        if token:
            params["NextToken"] = token
        response = client.lookup_events(**params)
        fetched.pages += 1
        items = list(response.get("Events") or [])
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("EventTime"), dt.datetime):
                when = item["EventTime"].astimezone(dt.UTC)
                oldest = when if oldest is None else min(oldest, when)
        events, rejected = parse_items(items, parse_lookup_event, source="lookup_events")
        fetched.events += events
        fetched.rejected += rejected
        token = response.get("NextToken")
        if not token:
            return fetched
    fetched.unread_before = oldest or start
    log.warning(
        "LookupEvents: stopped after %d pages; events before %s are read next poll",
        fetched.pages,
        fetched.unread_before.isoformat(),
    )
    return fetched


class LookupEventsPoller:
    """One (account, region) pair; several replicas share the work through the lease."""

    source = "lookup_events"

    def __init__(
        self,
        aws_gateway: Any,
        lease: Lease,
        handler: EventHandler,
        *,
        account: str | None,
        region: str,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.gateway = aws_gateway
        self.lease = lease
        self.handler = handler
        self.account = account
        self.region = region
        self.clock = clock
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.gateway.client("cloudtrail", account=self.account, region=self.region)
        return self._client

    def poll_once(self) -> int | None:
        """Poll if we hold the lease; return the number of events read (None if another replica has it)."""
        if not self.lease.acquire():
            return None
        now = self.clock()
        cursor = self.lease.read_cursor()
        since = parse_time(cursor["until"]) if cursor.get("until") else now - INITIAL_LOOKBACK
        gap = [parse_time(t) for t in cursor["gap"]] if cursor.get("gap") else None
        # The fresh window first (detection latency), then what earlier polls left unread.
        fresh = fetch_events(self.client, since - OVERLAP, now)
        events, rejected = list(fresh.events), list(fresh.rejected)
        if fresh.unread_before is not None:
            unread = [since - OVERLAP, fresh.unread_before]
            gap = [min(gap[0], unread[0]), max(gap[1], unread[1])] if gap else unread
        elif gap is not None and fresh.pages < MAX_PAGES:
            older = fetch_events(self.client, gap[0], gap[1], MAX_PAGES - fresh.pages)
            events += older.events
            rejected += older.rejected
            gap = None if older.unread_before is None else [gap[0], older.unread_before]
        self.handler(events, rejected)
        new_cursor: dict[str, Any] = {"until": now.isoformat(), "last_count": len(events)}
        if gap is not None:
            new_cursor["gap"] = [gap[0].isoformat(), gap[1].isoformat()]
        self.lease.write_cursor(new_cursor)
        return len(events)
