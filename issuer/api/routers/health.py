"""Health for load balancers and orchestrators, and Prometheus metrics. No token, no secrets.

* `/livez`: the process answers (restart it if not). Never touches the database, so a database
  outage does not make an orchestrator kill every replica at once.
* `/readyz`: send traffic here? The database answers and its schema is at this build's head
  revision (a replica of a newer build waits for the migration; one of an older build is taken out).
* `/healthz`: the historical check (the database answers); kept for existing monitors.
* `/metrics`: Prometheus text format (issuer/metrics.py).
"""

from __future__ import annotations

import functools
from typing import Literal

from alembic.runtime.migration import MigrationContext
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from issuer import __version__
from issuer.api.deps import SessionDep
from issuer.api.schemas import Health, Readiness
from issuer.db import head_revision
from issuer.errors import ApiError

router = APIRouter(tags=["health"])


class DatabaseUnavailable(ApiError):
    status_code = 503
    code = "unavailable"


@functools.cache
def _head() -> str:
    return head_revision()


@router.get("/healthz", response_model=Health)
def healthz(session: SessionDep) -> Health:
    try:
        session.execute(text("SELECT 1"))
    except Exception as exc:
        raise DatabaseUnavailable("the database is not reachable") from exc
    return Health(ok=True, version=__version__)


@router.get("/livez", response_model=Health)
async def livez() -> Health:
    return Health(ok=True, version=__version__)


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready: database or schema"}},
)
def readyz(session: SessionDep) -> JSONResponse:
    revision: str | None = None
    database: Literal["ok", "unreachable"] = "ok"
    try:
        revision = MigrationContext.configure(session.connection()).get_current_revision()
    except Exception:
        database = "unreachable"
    ready = database == "ok" and revision == _head()
    body = Readiness(
        ready=ready, version=__version__, database=database, schema_revision=revision, schema_head=_head()
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    """Prometheus exposition of this replica's counters and the fleet's gauges."""
    payload, content_type = request.app.state.metrics.exposition(request.headers.get("accept"))
    return Response(content=payload, media_type=content_type)
