"""Canary credentials: mint, rotate, list, revoke (device routes); fleet list and lookup by key id
(responder)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, status
from sqlalchemy.orm import Session

from issuer import listing, registry
from issuer.api.auth import DeviceAuth, DeviceOrResponderAuth, ResponderAuth
from issuer.api.deps import GatewayDep, SessionDep, SettingsDep
from issuer.api.schemas import (
    CredentialInfo,
    CredentialList,
    CredentialLookup,
    CredentialRequest,
    IssuedCredential,
    QueryText,
)
from issuer.aws.config import AwsError
from issuer.errors import AwsUpstreamError, NotFound
from issuer.pagination import MAX_CURSOR_LENGTH

router = APIRouter(tags=["credentials"])


def _issued(issued: registry.IssuedCredential) -> IssuedCredential:
    minted = issued.minted
    return IssuedCredential(
        credential_id=issued.credential.id,
        access_key_id=minted.access_key_id,
        secret_access_key=minted.secret_access_key,
        session_token=minted.session_token,
        expires_at=minted.expires_at,
        backend=minted.backend,
        account=minted.account,
        principal_name=minted.principal_name,
        placement_id=issued.credential.placement_id,
        retired=list(issued.retired),
    )


def _aws(exc: AwsError) -> AwsUpstreamError:
    return AwsUpstreamError(f"AWS call failed: {exc}")


@router.post(
    "/v1/devices/{device_id}/credentials",
    status_code=status.HTTP_201_CREATED,
    response_model=IssuedCredential,
)
def issue(
    device_id: str,
    body: CredentialRequest,
    _auth: DeviceAuth,
    session: SessionDep,
    gateway: GatewayDep,
    settings: SettingsDep,
) -> IssuedCredential:
    """Mint a credential for a placement; earlier active ones of that placement are retired.

    The secret is in this response only; the issuer never stores it. 429 when the device's minting
    budget is spent (docs/api.md).
    """
    try:
        issued = registry.issue_credential(
            session,
            gateway,
            device_id,
            local_user=body.local_user,
            path=body.path,
            profile=body.profile,
            limits=settings.mint_limits(),
        )
    except AwsError as exc:
        raise _aws(exc) from exc
    return _issued(issued)


@router.post(
    "/v1/devices/{device_id}/credentials/{credential_id}/rotate",
    status_code=status.HTTP_201_CREATED,
    response_model=IssuedCredential,
)
def rotate(
    device_id: str,
    credential_id: str,
    _auth: DeviceAuth,
    session: SessionDep,
    gateway: GatewayDep,
    settings: SettingsDep,
) -> IssuedCredential:
    """Mint a new credential for the same placement and retire this one (429 as for minting)."""
    try:
        issued = registry.rotate_credential(
            session, gateway, device_id, credential_id, limits=settings.mint_limits()
        )
    except AwsError as exc:
        raise _aws(exc) from exc
    return _issued(issued)


CredentialStatus = Literal["active", "retired", "revoked", "expired"]
Cursor = Annotated[
    QueryText, Query(max_length=MAX_CURSOR_LENGTH, description="`next_cursor` of the previous page")
]
PageSize = Annotated[int, Query(ge=1, le=5000, description="credentials per page")]


def _credential_page(
    session: Session, flt: listing.CredentialFilter, limit: int, cursor: str | None
) -> dict[str, Any]:
    page = listing.list_credentials_page(session, flt, limit=limit, cursor=cursor)
    return {"credentials": [registry.credential_info(c) for c in page.items], "next_cursor": page.next_cursor}


@router.get("/v1/devices/{device_id}/credentials", response_model=CredentialList)
def list_credentials(
    device_id: str,
    _auth: DeviceOrResponderAuth,
    session: SessionDep,
    status: Annotated[CredentialStatus | None, Query(description="only credentials in this state")] = None,
    limit: PageSize = 500,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """The device's credentials, oldest first, one page at a time."""
    registry.get_device(session, device_id)
    flt = listing.CredentialFilter(device_id=device_id, status=status)
    return _credential_page(session, flt, limit, cursor)


@router.get("/v1/credentials", response_model=CredentialList)
def list_all_credentials(
    _auth: ResponderAuth,
    session: SessionDep,
    device_id: Annotated[QueryText, Query(max_length=40, description="only this device's")] = None,
    status: Annotated[CredentialStatus | None, Query(description="only credentials in this state")] = None,
    backend: Annotated[QueryText, Query(max_length=32, description="iam-user or sts-federation")] = None,
    account: Annotated[QueryText, Query(max_length=100, description="account name of the pool")] = None,
    limit: PageSize = 500,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Every canary credential of the fleet, oldest first, one page at a time."""
    flt = listing.CredentialFilter(device_id=device_id, status=status, backend=backend, account=account)
    return _credential_page(session, flt, limit, cursor)


@router.delete("/v1/devices/{device_id}/credentials/{credential_id}", response_model=CredentialInfo)
def revoke(
    device_id: str, credential_id: str, _auth: DeviceOrResponderAuth, session: SessionDep, gateway: GatewayDep
) -> dict[str, Any]:
    """Delete the key (and its IAM user) in AWS; the record stays with `revoked_at` set."""
    try:
        cred = registry.revoke_credential(session, gateway, device_id, credential_id)
    except AwsError as exc:
        raise _aws(exc) from exc
    return registry.credential_info(cred)


@router.get("/v1/credentials/lookup/{access_key_id}", response_model=CredentialLookup)
def lookup(
    access_key_id: str, _auth: ResponderAuth, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """Which device, user and file hold this access key id (also for retired and revoked keys)."""
    cred = registry.find_credential(session, access_key_id=access_key_id)
    if cred is None:
        raise NotFound(f"no credential with access key id {access_key_id!r}")
    info = registry.credential_info(cred)
    info["device"] = registry.device_info(cred.placement.device, settings.stale_after_seconds)
    return info
