"""Typed results of the issuer API (docs/api.md), parsed leniently but safely.

Every ``from_json`` ignores keys it does not know (the issuer may add fields) and raises
:class:`~server_api_client.errors.ProtocolError` when a required key is missing or has the wrong type,
so a contract mismatch is loud instead of a ``KeyError`` deep in the agent. Times are parsed into
timezone-aware UTC :class:`datetime.datetime`. Records a responder may want to print in full keep
the issuer's dict as ``raw`` (not part of equality or repr).

Secrets (secret access key, session token, device token) are ``repr=False`` so that logging a
result never prints them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from server_api_client.errors import ProtocolError

# ---------------------------------------------------------------------------------------------- parsing


def parse_time(value: str, *, what: str = "time") -> dt.datetime:
    """Parse an ISO 8601 time (``Z`` or offset; naive means UTC) into an aware UTC datetime."""
    try:
        # fromisoformat accepts "Z" since 3.11; replace it anyway so the meaning is explicit.
        parsed = dt.datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"{what}: not an ISO 8601 time: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


class _Reader:
    """Typed access to one JSON object; every failure names the model and the key."""

    def __init__(self, data: Any, model: str) -> None:
        if not isinstance(data, dict):
            raise ProtocolError(f"{model}: expected a JSON object, got {type(data).__name__}")
        self.data: dict[str, Any] = data
        self.model = model

    def _get(self, key: str, types: tuple[type, ...], required: bool, default: Any = None) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise ProtocolError(f"{self.model}: missing required field {key!r}")
            return default
        value = self.data[key]
        # bool is an int subclass: never accept True as a count or a pid.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ProtocolError(f"{self.model}: field {key!r} has type {type(value).__name__}")
        return value

    def get_str(self, key: str) -> str:
        return self._get(key, (str,), True)

    def opt_str(self, key: str) -> str | None:
        return self._get(key, (str,), False)

    def get_int(self, key: str, default: int | None = None) -> int:
        if default is not None:
            return self._get(key, (int,), False, default)
        return self._get(key, (int,), True)

    def opt_int(self, key: str) -> int | None:
        return self._get(key, (int,), False)

    def get_bool(self, key: str, default: bool | None = None) -> bool:
        return self._get(key, (bool,), default is None, default)

    def get_time(self, key: str) -> dt.datetime:
        return parse_time(self.get_str(key), what=f"{self.model}.{key}")

    def opt_time(self, key: str) -> dt.datetime | None:
        value = self.opt_str(key)
        return None if value is None else parse_time(value, what=f"{self.model}.{key}")

    def get_dict(self, key: str) -> dict[str, Any]:
        return self._get(key, (dict,), False, {})

    def get_list(self, key: str) -> list[Any]:
        return self._get(key, (list,), False, [])

    def str_tuple(self, key: str) -> tuple[str, ...]:
        items = self.get_list(key)
        if not all(isinstance(item, str) for item in items):
            raise ProtocolError(f"{self.model}: field {key!r} must be a list of strings")
        return tuple(items)


def parse_list(data: Any, key: str, model: str) -> list[Any]:
    """The list under ``key`` of a ``{"<key>": [...]}`` envelope."""
    items = _Reader(data, f"{model} list")._get(key, (list,), True)
    return list(items)


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Enrollment:
    device_id: str
    device_token: str = field(repr=False)
    created: bool

    @classmethod
    def from_json(cls, data: Any) -> Enrollment:
        r = _Reader(data, "Enrollment")
        return cls(
            device_id=r.get_str("device_id"),
            device_token=r.get_str("device_token"),
            created=r.get_bool("created"),
        )


@dataclass(frozen=True)
class IssuedCredential:
    """A freshly minted credential; the only time the issuer hands out the secret."""

    credential_id: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(repr=False)
    expires_at: dt.datetime | None
    backend: str
    account: str | None
    principal_name: str
    placement_id: str
    retired: tuple[str, ...]

    @classmethod
    def from_json(cls, data: Any) -> IssuedCredential:
        r = _Reader(data, "IssuedCredential")
        return cls(
            credential_id=r.get_str("credential_id"),
            access_key_id=r.get_str("access_key_id"),
            secret_access_key=r.get_str("secret_access_key"),
            session_token=r.opt_str("session_token"),
            expires_at=r.opt_time("expires_at"),
            backend=r.get_str("backend"),
            account=r.opt_str("account"),
            principal_name=r.get_str("principal_name"),
            placement_id=r.get_str("placement_id"),
            retired=r.str_tuple("retired"),
        )


@dataclass(frozen=True)
class Device:
    device_id: str
    hostname: str
    os: str | None
    os_version: str | None
    serial: str | None
    users: tuple[str, ...]
    agent_version: str | None
    enrolled_at: dt.datetime | None
    last_heartbeat_at: dt.datetime | None
    health: dict[str, Any]
    stale: bool
    raw: dict[str, Any] = field(repr=False, compare=False)
    retired_at: dt.datetime | None = None

    @classmethod
    def from_json(cls, data: Any) -> Device:
        r = _Reader(data, "Device")
        return cls(
            device_id=r.get_str("device_id"),
            hostname=r.get_str("hostname"),
            os=r.opt_str("os"),
            os_version=r.opt_str("os_version"),
            serial=r.opt_str("serial"),
            users=r.str_tuple("users"),
            agent_version=r.opt_str("agent_version"),
            enrolled_at=r.opt_time("enrolled_at"),
            last_heartbeat_at=r.opt_time("last_heartbeat_at"),
            health=r.get_dict("health"),
            stale=r.get_bool("stale", default=False),
            raw=r.data,
            retired_at=r.opt_time("retired_at"),
        )


@dataclass(frozen=True)
class CredentialInfo:
    """What the issuer knows about a credential (never the secret). ``device`` only from lookup."""

    credential_id: str
    access_key_id: str
    backend: str | None
    account: str | None
    principal_name: str | None
    principal_arn: str | None
    placement_id: str | None
    local_user: str | None
    path: str | None
    profile: str | None
    device_id: str | None
    created_at: dt.datetime | None
    expires_at: dt.datetime | None
    retired_at: dt.datetime | None
    revoked_at: dt.datetime | None
    status: str
    device: Device | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> CredentialInfo:
        r = _Reader(data, "CredentialInfo")
        device_data = r.data.get("device")
        return cls(
            credential_id=r.get_str("credential_id"),
            access_key_id=r.get_str("access_key_id"),
            backend=r.opt_str("backend"),
            account=r.opt_str("account"),
            principal_name=r.opt_str("principal_name"),
            principal_arn=r.opt_str("principal_arn"),
            placement_id=r.opt_str("placement_id"),
            local_user=r.opt_str("local_user"),
            path=r.opt_str("path"),
            profile=r.opt_str("profile"),
            device_id=r.opt_str("device_id"),
            created_at=r.opt_time("created_at"),
            expires_at=r.opt_time("expires_at"),
            retired_at=r.opt_time("retired_at"),
            revoked_at=r.opt_time("revoked_at"),
            status=r.get_str("status"),
            device=None if device_data is None else Device.from_json(device_data),
            raw=r.data,
        )


@dataclass(frozen=True)
class RetiredDevice:
    """The answer of ``retire_device``: the device (with ``retired_at``) and the keys this call revoked."""

    device: Device
    revoked: tuple[CredentialInfo, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> RetiredDevice:
        r = _Reader(data, "RetiredDevice")
        return cls(
            device=Device.from_json(r.get_dict("device")),
            revoked=tuple(
                CredentialInfo.from_json(c) for c in parse_list(r.data, "revoked", "RetiredDevice")
            ),
            raw=r.data,
        )


@dataclass(frozen=True)
class ReadRecord:
    """One read of a planted file as the issuer stores it (the agent's ``read`` fields + ids)."""

    event_id: str
    time: dt.datetime
    path: str
    device_id: str | None
    pid: int | None
    ppid: int | None
    exe: str | None
    cmdline: tuple[str, ...]
    uid: int | None
    user: str | None
    start_time: str | None
    cwd: str | None
    access: str | None
    sensor: str | None
    classification: str | None
    ancestors: tuple[dict[str, Any], ...]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> ReadRecord:
        r = _Reader(data, "ReadRecord")
        ancestors = r.get_list("ancestors")
        if not all(isinstance(item, dict) for item in ancestors):
            raise ProtocolError("ReadRecord: field 'ancestors' must be a list of objects")
        return cls(
            event_id=r.get_str("event_id"),
            time=r.get_time("time"),
            path=r.get_str("path"),
            device_id=r.opt_str("device_id"),
            pid=r.opt_int("pid"),
            ppid=r.opt_int("ppid"),
            exe=r.opt_str("exe"),
            cmdline=r.str_tuple("cmdline"),
            uid=r.opt_int("uid"),
            user=r.opt_str("user"),
            start_time=r.opt_str("start_time"),
            cwd=r.opt_str("cwd"),
            access=r.opt_str("access"),
            sensor=r.opt_str("sensor"),
            classification=r.opt_str("classification"),
            ancestors=tuple(ancestors),
            raw=r.data,
        )


@dataclass(frozen=True)
class AlertSummary:
    alert_id: str
    kind: str | None
    severity: str | None
    status: str
    title: str
    first_seen: dt.datetime | None
    last_seen: dt.datetime | None
    event_count: int
    selftest: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> AlertSummary:
        r = _Reader(data, "AlertSummary")
        return cls(
            alert_id=r.get_str("alert_id"),
            kind=r.opt_str("kind"),
            severity=r.opt_str("severity"),
            status=r.get_str("status"),
            title=r.opt_str("title") or "",
            first_seen=r.opt_time("first_seen"),
            last_seen=r.opt_time("last_seen"),
            event_count=r.get_int("event_count", default=0),
            selftest=r.get_bool("selftest", default=False),
            raw=r.data,
        )


@dataclass(frozen=True)
class Alert(AlertSummary):
    """The full alert: AWS activity summary, host enrichment, verdict hint, deliveries, notes."""

    summary: dict[str, Any] = field(default_factory=dict)
    enrichment: dict[str, Any] = field(default_factory=dict)
    verdict: dict[str, Any] = field(default_factory=dict)
    deliveries: tuple[dict[str, Any], ...] = ()
    notes: tuple[Any, ...] = ()

    @classmethod
    def from_json(cls, data: Any) -> Alert:
        head = AlertSummary.from_json(data)
        r = _Reader(data, "Alert")
        return cls(
            alert_id=head.alert_id,
            kind=head.kind,
            severity=head.severity,
            status=head.status,
            title=head.title,
            first_seen=head.first_seen,
            last_seen=head.last_seen,
            event_count=head.event_count,
            selftest=head.selftest,
            raw=head.raw,
            summary=r.get_dict("summary"),
            enrichment=r.get_dict("enrichment"),
            verdict=r.get_dict("verdict"),
            deliveries=tuple(r.get_list("deliveries")),
            notes=tuple(r.get_list("notes")),
        )


@dataclass(frozen=True)
class EventBatchResult:
    accepted: int
    duplicates: int
    # Events the issuer refused one by one (invalid or unstorable): (index in the batch, message).
    errors: tuple[tuple[int, str], ...] = ()
    # Their event ids, filled in by IssuerClient.upload_events from the batch it sent.
    rejected_ids: tuple[str, ...] = ()

    @property
    def rejected(self) -> int:
        return len(self.errors)

    @classmethod
    def from_json(cls, data: Any) -> EventBatchResult:
        r = _Reader(data, "EventBatchResult")
        errors = []
        for item in r.get_list("errors") if "errors" in r.data else []:
            e = _Reader(item, "EventError")
            errors.append((e.get_int("index"), e.opt_str("message") or ""))
        accepted, duplicates = r.get_int("accepted"), r.get_int("duplicates", default=0)
        return cls(accepted=accepted, duplicates=duplicates, errors=tuple(errors))


@dataclass(frozen=True)
class HeartbeatResult:
    ok: bool
    server_time: dt.datetime | None

    @classmethod
    def from_json(cls, data: Any) -> HeartbeatResult:
        r = _Reader(data, "HeartbeatResult")
        return cls(ok=r.get_bool("ok"), server_time=r.opt_time("server_time"))


@dataclass(frozen=True)
class SelftestInfo:
    selftest_id: str
    expires_at: dt.datetime

    @classmethod
    def from_json(cls, data: Any) -> SelftestInfo:
        r = _Reader(data, "SelftestInfo")
        return cls(selftest_id=r.get_str("selftest_id"), expires_at=r.get_time("expires_at"))


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    skipped: int

    @classmethod
    def from_json(cls, data: Any) -> IngestResult:
        r = _Reader(data, "IngestResult")
        return cls(accepted=r.get_int("accepted"), skipped=r.get_int("skipped", default=0))


@dataclass(frozen=True)
class DeadLetters:
    """``GET /v1/dead-letters``: the skipped-input counters and the newest dead letters (raw dicts)."""

    counters: dict[str, int]
    entries: list[dict[str, Any]]
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Any) -> DeadLetters:
        r = _Reader(data, "DeadLetters")
        counters = r.get_dict("counters")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counters.values()):
            raise ProtocolError("DeadLetters: counters must be integers")
        entries = [_Reader(item, "DeadLetter").data for item in r.get_list("dead_letters")]
        return cls(counters=dict(counters), entries=entries, raw=dict(r.data))


@dataclass(frozen=True)
class Health:
    ok: bool
    version: str | None

    @classmethod
    def from_json(cls, data: Any) -> Health:
        r = _Reader(data, "Health")
        return cls(ok=r.get_bool("ok"), version=r.opt_str("version"))


__all__ = [
    "Alert",
    "AlertSummary",
    "CredentialInfo",
    "DeadLetters",
    "Device",
    "Enrollment",
    "EventBatchResult",
    "Health",
    "HeartbeatResult",
    "IngestResult",
    "IssuedCredential",
    "ReadRecord",
    "SelftestInfo",
    "parse_list",
    "parse_time",
]
