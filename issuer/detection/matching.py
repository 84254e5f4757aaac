"""Match an AWS event to canary credentials: by access key id, by principal, or as tampering.

Retired and revoked credentials match too (registry.find_credential covers them): a key that was
rotated away but copied earlier is exactly what an attacker would use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from sqlalchemy.orm import Session

from issuer import registry
from issuer.detection.events import AwsEvent
from issuer.models import Credential

# IAM management calls on a user that change what the principal is or can do. Made by anyone but
# the issuer itself on a canary principal, they are tampering (an attacker probing or disarming).
TAMPER_EVENT_NAMES = frozenset(
    {
        "AttachUserPolicy",
        "DetachUserPolicy",
        "PutUserPolicy",
        "DeleteUserPolicy",
        "PutUserPermissionsBoundary",
        "DeleteUserPermissionsBoundary",
        "CreateAccessKey",
        "UpdateAccessKey",
        "DeleteAccessKey",
        "CreateLoginProfile",
        "UpdateLoginProfile",
        "DeleteLoginProfile",
        "AddUserToGroup",
        "RemoveUserFromGroup",
        "UpdateUser",
        "DeleteUser",
        "TagUser",
        "UntagUser",
        "EnableMFADevice",
        "DeactivateMFADevice",
        "UploadSSHPublicKey",
        "UploadSigningCertificate",
        "CreateServiceSpecificCredential",
    }
)

USE = "use"
TAMPER = "tamper"


@dataclasses.dataclass(frozen=True, slots=True)
class Match:
    credential: Credential
    kind: str  # use | tamper

    def detection_key(self, event: AwsEvent) -> str:
        """The id that makes one (event, kind) idempotent across replicas and sources."""
        return f"tamper:{event.event_id}" if self.kind == TAMPER else event.event_id


def match_event(session: Session, event: AwsEvent, *, own_arns: Collection[str] = ()) -> list[Match]:
    """Every canary this event concerns: the caller's credential and/or a tampered principal."""
    matches: list[Match] = []
    used: Credential | None = None
    if event.access_key_id:
        used = registry.find_credential(session, access_key_id=event.access_key_id)
    if used is None and event.caller_principal:
        used = _same_account(registry.find_credential(session, principal_name=event.caller_principal), event)
    if used is not None:
        matches.append(Match(used, USE))

    if (
        event.event_name in TAMPER_EVENT_NAMES
        and event.target_user_name
        and not (event.caller_arn and event.caller_arn in own_arns)
    ):
        target = _same_account(
            registry.find_credential(session, principal_name=event.target_user_name), event
        )
        if target is not None:
            matches.append(Match(target, TAMPER))
    return matches


def _same_account(credential: Credential | None, event: AwsEvent) -> Credential | None:
    """A name is only unique within an account: a same-named user elsewhere is not our canary."""
    if credential is None or not event.account_id or not credential.account_id:
        return credential
    return credential if credential.account_id == event.account_id else None
