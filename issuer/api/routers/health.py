"""Liveness: no token needed, no secrets, no database details."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from issuer import __version__
from issuer.api.deps import SessionDep
from issuer.api.schemas import Health
from issuer.errors import ApiError

router = APIRouter(tags=["health"])


class DatabaseUnavailable(ApiError):
    status_code = 503
    code = "unavailable"


@router.get("/healthz", response_model=Health)
def healthz(session: SessionDep) -> Health:
    try:
        session.execute(text("SELECT 1"))
    except Exception as exc:
        raise DatabaseUnavailable("the database is not reachable") from exc
    return Health(ok=True, version=__version__)
