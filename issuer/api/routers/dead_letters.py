"""Dead letters: the events the issuer could not parse or record, and the counters of skipped input."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from issuer import dead_letters
from issuer.api.auth import ResponderAuth
from issuer.api.deps import SessionDep
from issuer.api.schemas import DeadLetterList

router = APIRouter(tags=["dead letters"])


@router.get("/v1/dead-letters", response_model=DeadLetterList)
def list_dead_letters(
    _auth: ResponderAuth,
    session: SessionDep,
    source: Annotated[
        str | None,
        Query(max_length=32, pattern=r"^[a-z_]+$", description="sqs, ingest, lookup_events, agent_events"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """What was skipped and why, newest first, with every skipped-input counter."""
    rows = dead_letters.list_dead_letters(session, source=source, limit=limit)
    return {
        "counters": dead_letters.all_counters(session),
        "dead_letters": [dead_letters.dead_letter_info(row) for row in rows],
    }
