"""FastAPI dependencies for what create_app() puts on app.state: settings, DB sessions, AWS gateway."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from issuer.settings import Settings

if TYPE_CHECKING:
    from issuer.aws.gateway import AwsGateway


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_peer_address(request: Request) -> str | None:
    """The address the request came from: the TCP peer, or behind a configured trusted proxy the
    client it names in X-Forwarded-For (issuer.egress.client_address)."""
    from issuer.egress import client_address

    settings: Settings = request.app.state.settings
    peer = request.client.host if request.client else None
    return client_address(peer, request.headers.get("x-forwarded-for"), settings.trusted_proxies)


def get_gateway(request: Request) -> Any:
    gateway = getattr(request.app.state, "aws_gateway", None)
    if gateway is None:  # only before the lifespan ran, i.e. a misuse in tests
        raise RuntimeError("the AWS gateway is not ready; run the app with its lifespan")
    return gateway


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
PeerAddressDep = Annotated[str | None, Depends(get_peer_address)]
GatewayDep = Annotated["AwsGateway", Depends(get_gateway)]
