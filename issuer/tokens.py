"""Bearer tokens: enroll / device / responder roles, stored as SHA-256 hashes only.

A token is a short role prefix plus `secrets.token_urlsafe(32)`; the plaintext exists only in the
response (or CLI output) that creates it. Lookup is by hash, then a constant-time comparison.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import string

from sqlalchemy import select
from sqlalchemy.orm import Session

from issuer.errors import Unauthenticated
from issuer.models import ApiToken, utcnow

ROLES = ("enroll", "device", "responder")
OPERATOR_ROLES = ("enroll", "responder")  # the ones `tripkey-issuer token create` makes
TOKEN_PREFIX = {"enroll": "tke_", "device": "tkd_", "responder": "tkr_"}
_ID_ALPHABET = string.ascii_lowercase + string.digits


class UnknownRole(ValueError):
    """A role name that is not one of ROLES."""


def new_id(prefix: str, length: int = 16) -> str:
    """An opaque random id such as `dev_k3j9...`; never derived from host data."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def hash_secret(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the token's id and role, and its device for device tokens."""

    token_id: str
    role: str
    device_id: str | None = None


def create_token(
    session: Session,
    role: str,
    *,
    label: str | None = None,
    device_id: str | None = None,
    commit: bool = True,
) -> tuple[ApiToken, str]:
    """Store a new token's hash; return the row and the plaintext (shown once, never stored)."""
    if role not in ROLES:
        raise UnknownRole(f"unknown role {role!r}; expected one of: {', '.join(ROLES)}")
    if (role == "device") != (device_id is not None):
        raise ValueError("device tokens, and only they, are bound to a device_id")
    raw = TOKEN_PREFIX[role] + secrets.token_urlsafe(32)
    row = ApiToken(
        id=new_id("tok_"), role=role, token_hash=hash_secret(raw), label=label, device_id=device_id
    )
    session.add(row)
    if commit:
        session.commit()
    else:
        session.flush()
    return row, raw


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)))


def revoke_token(session: Session, token_id: str) -> ApiToken | None:
    row = session.get(ApiToken, token_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row


def authenticate(session: Session, raw_token: str) -> Principal:
    digest = hash_secret(raw_token)
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        raise Unauthenticated("invalid token")
    if row.revoked_at is not None:
        raise Unauthenticated("this token has been revoked")
    return Principal(token_id=row.id, role=row.role, device_id=row.device_id)
