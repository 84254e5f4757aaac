"""The registry: devices, placements and credentials (agent events: issuer/agent_events.py).

Routers and the detection side call these functions with a Session; write functions commit.
Credential secrets pass through `issue_credential` to the caller and are never written anywhere.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from issuer.coverage import coverage_info
from issuer.device_health import health_columns
from issuer.errors import AwsUpstreamError, Conflict, NotFound
from issuer.minting import MintLimits, minting_info, reserve_mint
from issuer.models import ApiToken, Credential, Device, Placement, utcnow
from issuer.timefmt import iso
from issuer.tokens import create_token, hash_secret, new_id

if TYPE_CHECKING:
    from issuer.aws.config import MintedCredential

log = logging.getLogger(__name__)

# Ids and key ids are short ASCII; anything else cannot exist, so it is not even looked up.
_PLAIN_ID = re.compile(r"^[A-Za-z0-9_.:+=,@-]{1,128}$")


def is_plain_id(value: str) -> bool:
    """Could this be an id or key id at all? (No NUL, which PostgreSQL would refuse with an error.)"""
    return bool(_PLAIN_ID.match(value))


# ----- devices ----------------------------------------------------------------------------------


def enroll_device(
    session: Session,
    *,
    device_key: str,
    hostname: str,
    os: str,
    os_version: str | None = None,
    serial: str | None = None,
    users: Iterable[str] = (),
    agent_version: str | None = None,
) -> tuple[Device, str, bool]:
    """Return (device, fresh device token, created). Same key = same device; old tokens revoked."""
    key_hash = hash_secret(device_key)
    facts: dict[str, Any] = {
        "hostname": hostname,
        "os": os,
        "os_version": os_version,
        "serial": serial,
        "users": list(users),
        "agent_version": agent_version,
    }
    device = session.scalars(select(Device).where(Device.device_key_hash == key_hash)).first()
    if device is not None and device.retired_at is not None:
        # Retired means offboarded for good: its keys are revoked and must not come back to life
        # because an agent was left behind with a valid enroll token.
        raise Conflict(
            f"device {device.id} ({device.hostname}) was retired at {iso(device.retired_at)}; "
            "to enroll this host again, remove the agent's state directory on it (it then enrolls as "
            "a new device)"
        )
    created = device is None
    if device is None:
        device = Device(id=new_id("dev_"), device_key_hash=key_hash, health={}, **facts)
        session.add(device)
        try:
            session.flush()
        except IntegrityError:  # the same key enrolled concurrently: use that device
            session.rollback()
            return enroll_device(session, device_key=device_key, **facts)
    else:
        for name, value in facts.items():
            setattr(device, name, value)
        now = utcnow()
        for token in session.scalars(
            select(ApiToken).where(ApiToken.device_id == device.id, ApiToken.revoked_at.is_(None))
        ):
            token.revoked_at = now
    _, raw_token = create_token(
        session, "device", device_id=device.id, label=f"device {hostname}", commit=False
    )
    session.commit()
    return device, raw_token, created


def get_device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id) if is_plain_id(device_id) else None
    if device is None:
        raise NotFound(f"no device {device_id!r}")
    return device


def list_devices(session: Session) -> list[Device]:
    return list(session.scalars(select(Device).order_by(Device.enrolled_at, Device.id)))


def is_stale(device: Device, stale_after_seconds: float, now: dt.datetime | None = None) -> bool:
    if device.retired_at is not None:
        return False  # offboarded: its silence is expected, not a coverage gap
    seen = device.last_heartbeat_at or device.enrolled_at
    return ((now or utcnow()) - seen).total_seconds() > stale_after_seconds


def device_facts(device: Device) -> dict[str, Any]:
    """What identifies a device: the API's Device and an alert's enrichment both start from this."""
    return {
        "device_id": device.id,
        "hostname": device.hostname,
        "os": device.os,
        "os_version": device.os_version,
        "serial": device.serial,
        "users": list(device.users or []),
        "agent_version": device.agent_version,
        "enrolled_at": device.enrolled_at,
    }


def device_info(device: Device, stale_after_seconds: float, now: dt.datetime | None = None) -> dict[str, Any]:
    stale = is_stale(device, stale_after_seconds, now)
    return {
        **device_facts(device),
        "last_heartbeat_at": device.last_heartbeat_at,
        "health": dict(device.health or {}),
        "stale": stale,
        "retired_at": device.retired_at,
        "coverage": coverage_info(device, stale),
        "minting": minting_info(device, now),
    }


# An unchanged heartbeat moves last_heartbeat_at at most this often: staleness is judged in minutes
# to hours, so a fleet of agents heartbeating costs reads, not writes.
HEARTBEAT_WRITE_GRANULARITY = dt.timedelta(seconds=30)


def record_heartbeat(session: Session, device_id: str, health: Mapping[str, Any]) -> dt.datetime:
    """Store a heartbeat. The health document (and its derived columns) is rewritten only when it
    changed; otherwise only the time moves, and not even that within HEARTBEAT_WRITE_GRANULARITY."""
    now = utcnow()
    row = (
        session.execute(
            select(Device.health_hash, Device.last_heartbeat_at, Device.agent_version).where(
                Device.id == device_id
            )
        ).first()
        if is_plain_id(device_id)
        else None
    )
    if row is None:
        raise NotFound(f"no device {device_id!r}")
    columns = health_columns(health)
    version = health.get("agent_version") or None
    changed = row.health_hash != columns["health_hash"] or (
        version is not None and version != row.agent_version
    )
    if (
        not changed
        and row.last_heartbeat_at is not None
        and now - row.last_heartbeat_at < HEARTBEAT_WRITE_GRANULARITY
    ):
        return now
    values: dict[str, Any] = {"last_heartbeat_at": now}
    if changed:
        values.update(health=dict(health), **columns)
        if version is not None:
            values["agent_version"] = version
    session.execute(
        update(Device)
        .where(Device.id == device_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return now


# ----- placements and credentials ---------------------------------------------------------------


def credential_status(cred: Credential, now: dt.datetime | None = None) -> str:
    if cred.revoked_at is not None:
        return "revoked"
    if cred.retired_at is not None:
        return "retired"
    if cred.expires_at is not None and cred.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


def credential_facts(cred: Credential) -> dict[str, Any]:
    """The credential row itself (never a secret): the one projection that the API's credential
    objects and an alert's `credential` block are both built from."""
    return {
        "credential_id": cred.id,
        "access_key_id": cred.access_key_id,
        "principal_name": cred.principal_name,
        "principal_arn": cred.principal_arn,
        "backend": cred.backend,
        "account": cred.account,
        "account_id": cred.account_id,
        "created_at": cred.created_at,
        "expires_at": cred.expires_at,
        "retired_at": cred.retired_at,
        "revoked_at": cred.revoked_at,
    }


def credential_info(cred: Credential, now: dt.datetime | None = None) -> dict[str, Any]:
    """A credential as the API shows it: its facts, where it is planted, and its status."""
    placement = cred.placement
    return {
        **credential_facts(cred),
        "placement_id": placement.id,
        "local_user": placement.local_user,
        "path": placement.path,
        "profile": placement.profile,
        "device_id": placement.device_id,
        "status": credential_status(cred, now),
    }


@dataclasses.dataclass(frozen=True)
class IssuedCredential:
    """A credential just minted: the stored row plus the secret (only here, only once)."""

    credential: Credential
    minted: MintedCredential
    retired: tuple[str, ...]


def _placement(session: Session, device: Device, local_user: str, path: str, profile: str) -> Placement:
    query = select(Placement).where(
        Placement.device_id == device.id, Placement.path == path, Placement.profile == profile
    )
    placement = session.scalars(query).first()
    if placement is None:
        placement = Placement(
            id=new_id("plc_"), device_id=device.id, local_user=local_user, path=path, profile=profile
        )
        session.add(placement)
        try:
            session.commit()
        except IntegrityError:  # created concurrently by the same agent
            session.rollback()
            placement = session.scalars(query).one()
    elif placement.local_user != local_user:
        placement.local_user = local_user
        session.commit()
    return placement


def active_counts(session: Session) -> dict[str, int]:
    """Live canary principals per account of the pool: what the per-account cap is about.

    A retired iam-user credential keeps its IAM user until revoked (it is still matched if used), so
    it still counts toward the account's user quota; a retired federation token holds nothing in IAM.
    """
    rows = session.execute(
        select(Credential.account, func.count())
        .where(
            Credential.revoked_at.is_(None),
            Credential.retired_at.is_(None) | (Credential.backend == "iam-user"),
        )
        .group_by(Credential.account)
    )
    return {account: count for account, count in rows}


def _mint_for_placement(session: Session, gateway: Any, placement: Placement) -> IssuedCredential:
    account = gateway.pick_account(active_counts(session))
    minted = gateway.mint(account)  # AwsError propagates: nothing was stored
    try:
        now = utcnow()
        previous = list(
            session.scalars(
                select(Credential).where(
                    Credential.placement_id == placement.id,
                    Credential.retired_at.is_(None),
                    Credential.revoked_at.is_(None),
                )
            )
        )
        for old in previous:
            old.retired_at = now  # still matched if used later
        cred = Credential(
            id=new_id("cred_"),
            placement_id=placement.id,
            backend=minted.backend,
            account=minted.account,
            account_id=minted.account_id,
            principal_name=minted.principal_name,
            principal_arn=minted.principal_arn,
            access_key_id=minted.access_key_id,
            created_at=now,
            expires_at=minted.expires_at,
        )
        session.add(cred)
        session.commit()
    except Exception as exc:
        # A canary AWS knows about but the registry does not could never be attributed: undo it.
        session.rollback()
        duplicate_key = isinstance(exc, IntegrityError) and find_credential(
            session, access_key_id=minted.access_key_id
        )
        try:
            gateway.revoke(
                backend=minted.backend,
                account=minted.account,
                principal_name=minted.principal_name,
                access_key_id=minted.access_key_id,
            )
        except Exception as revoke_exc:
            log.error("could not revoke unrecorded credential %s: %s", minted.access_key_id, revoke_exc)
        if duplicate_key:
            # Real AWS never reuses an access key id; an emulator can (moto's GetFederationToken).
            raise AwsUpstreamError(
                f"AWS returned access key id {minted.access_key_id}, which is already registered to "
                "another credential; it was not issued twice"
            ) from exc
        raise
    log.info(
        "issued credential %s (%s, account %s, principal %s) for placement %s",
        cred.id,
        minted.access_key_id,
        minted.account,
        minted.principal_name,
        placement.id,
    )
    return IssuedCredential(credential=cred, minted=minted, retired=tuple(old.id for old in previous))


def issue_credential(
    session: Session,
    gateway: Any,
    device_id: str,
    *,
    local_user: str,
    path: str,
    profile: str,
    limits: MintLimits | None = None,
) -> IssuedCredential:
    """Mint a credential for (device, path, profile); retire the placement's earlier ones.

    With `limits`, the mint counts against the device's budget first (TooManyRequests if spent)."""
    device = get_device(session, device_id)
    if limits is not None:
        known = session.scalar(
            select(Placement.id).where(
                Placement.device_id == device.id, Placement.path == path, Placement.profile == profile
            )
        )
        reserve_mint(session, device, limits, new_placement=known is None)
    placement = _placement(session, device, local_user, path, profile)
    return _mint_for_placement(session, gateway, placement)


def get_device_credential(session: Session, device_id: str, credential_id: str) -> Credential:
    cred = session.get(Credential, credential_id) if is_plain_id(credential_id) else None
    if cred is None or cred.placement.device_id != device_id:
        raise NotFound(f"no credential {credential_id!r} on device {device_id!r}")
    return cred


def rotate_credential(
    session: Session, gateway: Any, device_id: str, credential_id: str, *, limits: MintLimits | None = None
) -> IssuedCredential:
    cred = get_device_credential(session, device_id, credential_id)
    if limits is not None:
        reserve_mint(session, cred.placement.device, limits, new_placement=False)
    return _mint_for_placement(session, gateway, cred.placement)


def revoke_credential(session: Session, gateway: Any, device_id: str, credential_id: str) -> Credential:
    """Delete the key (and IAM user) in AWS; keep the row with revoked_at set. Idempotent."""
    cred = get_device_credential(session, device_id, credential_id)
    if cred.revoked_at is None:
        gateway.revoke(
            backend=cred.backend,
            account=cred.account,
            principal_name=cred.principal_name,
            access_key_id=cred.access_key_id,
        )
        cred.revoked_at = utcnow()
        session.commit()
        log.info("revoked credential %s (%s)", cred.id, cred.access_key_id)
    return cred


@dataclasses.dataclass(frozen=True)
class RetiredDevice:
    device: Device
    revoked: tuple[Credential, ...]  # revoked by this call (earlier ones were already)


def retire_device(session: Session, gateway: Any, device_id: str) -> RetiredDevice:
    """Offboard a device: revoke every credential it holds in AWS, revoke its tokens, mark it retired.

    Idempotent and resumable: credentials are revoked one by one (each committed), and the device is
    marked retired only when all are, so a call that AWS interrupted (AwsError) is finished by
    calling again. Its records stay: alerts and `credentials lookup` still name it.
    """
    device = get_device(session, device_id)
    revoked = []
    for cred in list_credentials(session, device_id):
        if cred.revoked_at is None:
            revoked.append(revoke_credential(session, gateway, device_id, cred.id))
    now = utcnow()
    for token in session.scalars(
        select(ApiToken).where(ApiToken.device_id == device.id, ApiToken.revoked_at.is_(None))
    ):
        token.revoked_at = now
    if device.retired_at is None:
        device.retired_at = now
        log.info("retired device %s (%s): %d credential(s) revoked", device.id, device.hostname, len(revoked))
    session.commit()
    return RetiredDevice(device=device, revoked=tuple(revoked))


def list_credentials(session: Session, device_id: str) -> list[Credential]:
    get_device(session, device_id)
    return list(
        session.scalars(
            select(Credential)
            .join(Placement)
            .where(Placement.device_id == device_id)
            .options(joinedload(Credential.placement))
            .order_by(Credential.created_at, Credential.id)
        )
    )


def find_credential(
    session: Session, access_key_id: str | None = None, principal_name: str | None = None
) -> Credential | None:
    """The credential with this access key id or principal name, whatever its status."""
    if access_key_id:
        if not is_plain_id(access_key_id):
            return None
        return session.scalars(
            select(Credential)
            .where(Credential.access_key_id == access_key_id)
            .options(joinedload(Credential.placement).joinedload(Placement.device))
        ).first()
    if principal_name:
        if not is_plain_id(principal_name):
            return None
        return session.scalars(
            select(Credential)
            .where(Credential.principal_name == principal_name)
            .options(joinedload(Credential.placement).joinedload(Placement.device))
            .order_by(Credential.created_at.desc())
        ).first()
    return None
