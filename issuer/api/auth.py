"""Who may call a route: FastAPI dependencies over issuer.tokens (bearer token -> Principal -> role)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from issuer.api.deps import SessionDep
from issuer.errors import Forbidden, Unauthenticated
from issuer.tokens import Principal, authenticate

_bearer = HTTPBearer(auto_error=False, description="A Tripkey token (enroll, device or responder role)")


def current_principal(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    session: SessionDep,
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("missing bearer token (Authorization: Bearer <token>)")
    return authenticate(session, credentials.credentials)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require_enroll(principal: PrincipalDep) -> Principal:
    if principal.role != "enroll":
        raise Forbidden(f"this route needs an enroll token, not a token with the {principal.role} role")
    return principal


def require_responder(principal: PrincipalDep) -> Principal:
    if principal.role != "responder":
        raise Forbidden(f"this route needs a responder token, not a token with the {principal.role} role")
    return principal


def _check_device(principal: Principal, request: Request, *, allow_responder: bool) -> Principal:
    device_id = request.path_params.get("device_id")
    if principal.role == "device":
        if (
            principal.device_id is None
            or device_id is None
            or not hmac.compare_digest(principal.device_id.encode(), str(device_id).encode())
        ):
            raise Forbidden("a device token may only be used on its own device's routes")
        return principal
    if principal.role == "responder" and allow_responder:
        return principal
    allowed = "that device's token or a responder token" if allow_responder else "that device's token"
    raise Forbidden(f"this route needs {allowed}, not a token with the {principal.role} role")


def require_own_device(principal: PrincipalDep, request: Request) -> Principal:
    return _check_device(principal, request, allow_responder=False)


def require_own_device_or_responder(principal: PrincipalDep, request: Request) -> Principal:
    return _check_device(principal, request, allow_responder=True)


EnrollAuth = Annotated[Principal, Depends(require_enroll)]
ResponderAuth = Annotated[Principal, Depends(require_responder)]
DeviceAuth = Annotated[Principal, Depends(require_own_device)]
DeviceOrResponderAuth = Annotated[Principal, Depends(require_own_device_or_responder)]
