"""Canary credentials: mint, rotate, list, revoke (device routes) and lookup by key id (responder)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from issuer import registry
from issuer.api.auth import DeviceAuth, DeviceOrResponderAuth, ResponderAuth
from issuer.api.deps import GatewayDep, SessionDep, SettingsDep
from issuer.api.schemas import (
    CredentialInfo,
    CredentialList,
    CredentialLookup,
    CredentialRequest,
    IssuedCredential,
)
from issuer.aws.config import AwsError
from issuer.errors import AwsUpstreamError, NotFound

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


@router.get("/v1/devices/{device_id}/credentials", response_model=CredentialList)
def list_credentials(device_id: str, _auth: DeviceOrResponderAuth, session: SessionDep) -> dict[str, Any]:
    creds = registry.list_credentials(session, device_id)
    return {"credentials": [registry.credential_info(c) for c in creds]}


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
