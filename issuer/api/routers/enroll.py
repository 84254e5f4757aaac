"""Enrollment: an agent with an enroll token becomes a device with its own device token."""

from __future__ import annotations

from fastapi import APIRouter

from issuer import registry
from issuer.api.auth import EnrollAuth
from issuer.api.deps import SessionDep
from issuer.api.schemas import EnrollRequest, EnrollResponse

router = APIRouter(tags=["enrollment"])


@router.post("/v1/enroll", response_model=EnrollResponse)
def enroll(body: EnrollRequest, _auth: EnrollAuth, session: SessionDep) -> EnrollResponse:
    """Register a device (or re-enroll the device holding this `device_key`) and return its token."""
    device, token, created = registry.enroll_device(
        session,
        device_key=body.device_key,
        hostname=body.hostname,
        os=body.os,
        os_version=body.os_version,
        serial=body.serial,
        users=body.users,
        agent_version=body.agent_version,
    )
    return EnrollResponse(device_id=device.id, device_token=token, created=created)
