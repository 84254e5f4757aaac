"""IAM GetAccessKeyLastUsed safety net for long-term (iam-user) canary keys.

If the CloudTrail path is broken (rule deleted, queue misconfigured), a key's LastUsedDate still
moves when it is used. Each poll compares it with the last value we saw; a newer date is a
detection (source `last_used`, event name = the ServiceName AWS reports). Revoked keys no longer
exist in IAM and are skipped; retired keys are still checked.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import select
from sqlalchemy.orm import Session

from issuer.detection.events import AwsEvent, Rejected, as_utc
from issuer.detection.locks import Lease
from issuer.models import Credential
from issuer.timefmt import iso

log = logging.getLogger(__name__)

EventHandler = Callable[[list[AwsEvent], list[Rejected]], None]


def last_used_event(credential: Credential, last_used: dict[str, Any]) -> AwsEvent | None:
    """An AwsEvent if `last_used` (AccessKeyLastUsed) is newer than what we saw; else None."""
    when = last_used.get("LastUsedDate")
    if not isinstance(when, dt.datetime):
        return None  # never used
    when = as_utc(when)
    seen = as_utc(credential.last_used_seen_at) if credential.last_used_seen_at else None
    if seen is not None and when <= seen:
        return None
    service = last_used.get("ServiceName")
    region = last_used.get("Region")
    return AwsEvent(
        source="last_used",
        event_id=f"last_used:{credential.access_key_id}:{iso(when)}",
        event_time=when,
        event_name=service if service and service != "N/A" else "unknown",
        region=region if region and region != "N/A" else None,
        access_key_id=credential.access_key_id,
        raw={
            "AccessKeyLastUsed": {
                k: (iso(v) if isinstance(v, dt.datetime) else v) for k, v in last_used.items()
            }
        },
    )


class LastUsedPoller:
    source = "last_used"

    def __init__(
        self,
        aws_gateway: Any,
        sessionmaker: Callable[[], Session],
        lease: Lease,
        handler: EventHandler,
    ) -> None:
        self.gateway = aws_gateway
        self.sessionmaker = sessionmaker
        self.lease = lease
        self.handler = handler

    def poll_once(self) -> int | None:
        """Check every non-revoked iam-user key; return the number of new uses (None without lease)."""
        if not self.lease.acquire():
            return None
        with self.sessionmaker() as session:
            credentials = session.scalars(
                select(Credential).where(Credential.backend == "iam-user", Credential.revoked_at.is_(None))
            ).all()
            session.expunge_all()
        clients: dict[str, Any] = {}
        found = 0
        for credential in credentials:
            try:
                if credential.account not in clients:
                    clients[credential.account] = self.gateway.client("iam", account=credential.account)
                response = clients[credential.account].get_access_key_last_used(
                    AccessKeyId=credential.access_key_id
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                log.warning("GetAccessKeyLastUsed %s failed: %s", credential.access_key_id, code)
                continue
            except (BotoCoreError, Exception) as exc:
                log.warning(
                    "GetAccessKeyLastUsed %s failed: %s", credential.access_key_id, type(exc).__name__
                )
                continue
            event = last_used_event(credential, response.get("AccessKeyLastUsed") or {})
            if event is None:
                continue
            self.handler([event], [])  # raises if it could not be recorded: then we retry next poll
            with self.sessionmaker() as session:
                row = session.get(Credential, credential.id)
                if row is not None:
                    row.last_used_seen_at = event.event_time
                    session.commit()
            found += 1
        return found
