"""CloudTrail LookupEvents pull, per account and region, with a cursor kept in the database.

LookupEvents returns management events of the last 90 days, newest first, 50 a page. CloudTrail
delivers events up to ~15 minutes late, so each poll re-reads an overlap window before the cursor;
detections are idempotent by event id, so the overlap costs nothing but a few reads.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from issuer.detection.events import AwsEvent, MalformedEvent, parse_lookup_event, parse_time
from issuer.detection.locks import Lease

log = logging.getLogger(__name__)
OVERLAP = dt.timedelta(minutes=20)
INITIAL_LOOKBACK = dt.timedelta(hours=1)
MAX_PAGES = 200  # 10,000 events per poll and region; the rest waits for the next poll

EventHandler = Callable[[list[AwsEvent], int], None]


def fetch_events(client: Any, start: dt.datetime, end: dt.datetime) -> tuple[list[AwsEvent], int]:
    """All events between start and end (every page); returns (events, malformed_count)."""
    events: list[AwsEvent] = []
    malformed = 0
    token: str | None = None
    for _page in range(MAX_PAGES):
        params: dict[str, Any] = {"StartTime": start, "EndTime": end, "MaxResults": 50}
        if token:
            params["NextToken"] = token
        response = client.lookup_events(**params)
        for item in response.get("Events") or []:
            try:
                events.append(parse_lookup_event(item))
            except MalformedEvent:
                malformed += 1
        token = response.get("NextToken")
        if not token:
            break
    else:
        log.warning("LookupEvents: stopped after %d pages; the rest is read next poll", MAX_PAGES)
    return events, malformed


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
        events, malformed = fetch_events(self.client, since - OVERLAP, now)
        self.handler(events, malformed)
        self.lease.write_cursor({"until": now.isoformat(), "last_count": len(events)})
        return len(events)
