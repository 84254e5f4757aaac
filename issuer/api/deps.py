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


def get_gateway(request: Request) -> Any:
    gateway = getattr(request.app.state, "aws_gateway", None)
    if gateway is None:  # only before the lifespan ran, i.e. a misuse in tests
        raise RuntimeError("the AWS gateway is not ready; run the app with its lifespan")
    return gateway


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
GatewayDep = Annotated["AwsGateway", Depends(get_gateway)]
