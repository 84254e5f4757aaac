"""Request and response bodies of the v1 API (docs/api.md). Requests reject unknown fields."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, model_validator

from issuer.timefmt import iso

MAX_EVENTS_PER_BATCH = 1000
INT32_MAX = 2**31 - 1


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; no legitimate field needs it.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _to_utc(value: dt.datetime) -> dt.datetime:
    try:
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    except OverflowError as exc:
        raise ValueError("time is out of range") from exc


# Text fields: bounded, and never NUL (PostgreSQL text cannot hold it).
Text128 = Annotated[str, Field(max_length=128), AfterValidator(_no_nul)]
Word16 = Annotated[str, Field(min_length=1, max_length=16), AfterValidator(_no_nul)]
Text200 = Annotated[str, Field(max_length=200), AfterValidator(_no_nul)]
Name = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_no_nul)]
Text40 = Annotated[str, Field(max_length=40), AfterValidator(_no_nul)]
Word40 = Annotated[str, Field(min_length=1, max_length=40), AfterValidator(_no_nul)]
Text4096 = Annotated[str, Field(max_length=4096), AfterValidator(_no_nul)]
Path4096 = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_no_nul)]
LongText = Annotated[str, Field(max_length=8192), AfterValidator(_no_nul)]
OptName = Annotated[
    str | None, Field(default=None, max_length=255), AfterValidator(lambda v: v and _no_nul(v))
]
# Every time the API reads or writes: naive (SQLite) or offset times become UTC, and JSON carries the
# one format of docs/schema.md (RFC 3339, UTC, `Z`).
UtcTime = Annotated[
    dt.datetime, AfterValidator(_to_utc), PlainSerializer(iso, return_type=str, when_used="json")
]
Pid = Annotated[int, Field(ge=0, le=INT32_MAX)]
# Events and heartbeats say which version of docs/schema.md they follow; this issuer reads 1.x (and
# events of agents from before versions, which sent none).
SchemaVersion = Annotated[
    str | None,
    Field(default=None, pattern=r"^1\.[0-9]{1,4}$", description="1.x (docs/schema.md); absent: 1.0"),
]
Uid = Annotated[int, Field(ge=-1, le=2**32)]


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----- enrollment -------------------------------------------------------------------------------


class EnrollRequest(RequestBody):
    device_key: Annotated[str, Field(min_length=32, max_length=256), AfterValidator(_no_nul)]
    hostname: Name
    os: Word40
    os_version: Text200 | None = None
    serial: Text200 | None = None
    users: Annotated[list[Name], Field(max_length=1000)] = []
    agent_version: Text40 | None = None


class EnrollResponse(BaseModel):
    device_id: str
    device_token: str
    created: bool


# ----- credentials ------------------------------------------------------------------------------


class CredentialRequest(RequestBody):
    local_user: Name
    path: Path4096
    # An INI section name: brackets or line breaks would corrupt the credentials file.
    profile: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\[\]\r\n\x00]+$")]


class IssuedCredential(BaseModel):
    credential_id: str
    access_key_id: str
    secret_access_key: str
    session_token: str | None
    expires_at: UtcTime | None
    backend: str
    account: str
    principal_name: str
    placement_id: str
    retired: list[str]


class DeviceOut(BaseModel):
    device_id: str
    hostname: str
    os: str
    os_version: str | None
    serial: str | None
    users: list[str]
    agent_version: str | None
    enrolled_at: UtcTime
    last_heartbeat_at: UtcTime | None
    health: dict[str, Any]
    stale: bool
    retired_at: UtcTime | None = None
    coverage: dict[str, Any] = Field(
        default={},
        description="state (ok | degraded | sensor_unhealthy | not_planted | stale), planted, targets, "
        "reasons[] (issuer/coverage.py)",
    )
    minting: dict[str, Any] = Field(
        default={},
        description="the device's minting budget: window_ends_at, minted_in_window, window_limit, "
        "refused, last_refused_at",
    )


class CredentialInfo(BaseModel):
    credential_id: str
    access_key_id: str
    backend: str
    account: str
    account_id: str | None = None
    principal_name: str
    principal_arn: str | None
    placement_id: str
    local_user: str
    path: str
    profile: str
    device_id: str
    created_at: UtcTime
    expires_at: UtcTime | None
    retired_at: UtcTime | None
    revoked_at: UtcTime | None
    status: Literal["active", "retired", "revoked", "expired"]


class CredentialList(BaseModel):
    credentials: list[CredentialInfo]
    next_cursor: str | None = Field(default=None, description="pass as `cursor` for the next page")


class RetiredDeviceOut(BaseModel):
    device: DeviceOut
    revoked: list[CredentialInfo]  # credentials this call revoked (none when it was already retired)


class CredentialLookup(CredentialInfo):
    device: DeviceOut


class DeviceList(BaseModel):
    devices: list[DeviceOut]
    next_cursor: str | None = Field(default=None, description="pass as `cursor` for the next page")


# ----- agent events -----------------------------------------------------------------------------


class Ancestor(RequestBody):
    pid: Pid
    exe: LongText | None = None
    cmdline: Annotated[list[LongText], Field(max_length=256)] = []
    uid: Uid | None = None
    user: OptName = None  # its account name (schema 1.0)


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class FileProvenanceIn(RequestBody):
    """One file (executable or script) as the agent examined it (agent/events/provenance.py)."""

    path: LongText
    error: LongText | None = None
    uid: Uid | None = None
    owner: OptName = None
    gid: Uid | None = None
    mode: Text40 | None = None
    size: Annotated[int, Field(ge=0)] | None = None
    user_writable: bool | None = None
    writable_via: LongText | None = None
    user_place: Text40 | None = None
    package: OptName = None
    package_db: Text40 | None = None
    package_verified: bool | None = None
    sha256: Sha256 | None = None
    hash_error: LongText | None = None
    replaced: bool = False


class CodeSigningIn(RequestBody):
    signing_id: OptName = None
    team_id: OptName = None
    platform_binary: bool | None = None
    valid: bool | None = None
    adhoc: bool | None = None
    signer: OptName = None
    source: Text40 = "eslogger"


class ProvenanceIn(RequestBody):
    """Where the reader's code came from: executable, the script an interpreter ran, signature."""

    exe: FileProvenanceIn | None = None
    script: FileProvenanceIn | None = None
    script_kind: Literal["file", "module", "inline"] | None = None
    script_name: LongText | None = None
    signing: CodeSigningIn | None = None
    argv0_is_exe: bool | None = None
    error: LongText | None = None


class ReadInfo(RequestBody):
    pid: Pid
    ppid: Pid | None = None
    exe: LongText | None = None
    cmdline: Annotated[list[LongText], Field(max_length=256)] = []
    uid: Uid | None = None
    user: OptName = None
    start_time: UtcTime | None = None
    cwd: LongText | None = None
    access: Word16 = "open"
    sensor: Word40
    classification: Text40 | None = None
    # When the reader's provenance did not support the label its name claims: that label, and why.
    claimed_label: Text40 | None = None
    trust_reason: LongText | None = None
    ancestors: Annotated[list[Ancestor], Field(max_length=64)] = []
    partial: bool = False  # part of the context was filled after the fact or is missing
    provenance: ProvenanceIn | None = None
    # ReadEvent.to_dict() also carries these; accepted so the agent can send it as is.
    time: UtcTime | None = None
    path: Text4096 | None = None


class FoundInfo(RequestBody):
    """What stands where the credentials file should be (a replaced file, a symlinked ~/.aws)."""

    type: Text40  # symlink | fifo | directory | socket | device | file | unknown
    path: Text4096
    uid: Uid | None = None
    user: OptName = None
    size: Annotated[int, Field(ge=0)] | None = None
    nlink: Annotated[int, Field(ge=0)] | None = None
    link_target: Text4096 | None = None


class TamperInfo(RequestBody):
    action: Literal[
        "section_removed",
        "section_altered",
        "file_deleted",
        "file_moved",
        "conflict",
        "file_replaced",  # by a symlink, FIFO, directory, socket or device
        "file_too_large",
        "directory_replaced",  # ~/.aws (or a directory above it) is a symlink or not a directory
        "hard_link",  # the file has a second name
        "unsafe_path",  # owner or permissions the agent refuses
    ]
    detail: LongText | None = None
    replanted: bool = False
    found: FoundInfo | None = None


class SelfReportInfo(RequestBody):
    user: OptName = None
    note: LongText = ""


class AgentEventIn(RequestBody):
    schema_version: SchemaVersion = None
    event_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    kind: Literal["read", "tamper", "self_report"]
    time: UtcTime
    path: Path4096
    read: ReadInfo | None = None
    tamper: TamperInfo | None = None
    self_report: SelfReportInfo | None = None

    @model_validator(mode="after")
    def _payload_matches_kind(self) -> AgentEventIn:
        for kind in ("read", "tamper", "self_report"):
            present = getattr(self, kind) is not None
            if kind == self.kind and not present:
                raise ValueError(f"a {kind} event needs a {kind!r} object")
            if kind != self.kind and present:
                raise ValueError(f"a {self.kind} event must not carry a {kind!r} object")
        return self

    def payload(self) -> dict[str, Any]:
        body = getattr(self, self.kind)
        return body.model_dump(mode="json") if body is not None else {}


class EventBatch(RequestBody):
    """Each item is validated on its own as an AgentEventIn: one bad event is refused (and listed in
    the answer's `errors`) while the others are stored."""

    events: Annotated[
        list[Any],
        Field(
            max_length=MAX_EVENTS_PER_BATCH,
            description="read, tamper or self_report events (docs/api.md), validated one by one",
        ),
    ]


class EventError(BaseModel):
    index: int  # position in the batch
    event_id: str | None  # the item's event_id, if it had a string one
    message: str


class EventsAccepted(BaseModel):
    accepted: int
    duplicates: int
    rejected: int = 0  # refused one by one (invalid or unstorable), kept as dead letters
    errors: list[EventError] = []


class SensorHealth(RequestBody):
    name: Word40
    mode: Text40 | None = None
    healthy: bool
    error: LongText | None = None
    lost_events: Annotated[int, Field(ge=0)] = 0
    detail: LongText | None = None  # e.g. which kernel hooks are attached
    uncovered: Annotated[list[LongText], Field(max_length=32)] = []  # what the sensor cannot see


class TargetHealth(RequestBody):
    path: Path4096
    local_user: OptName = None
    profile: OptName = None
    access_key_id: Text128 | None = None
    planted: bool
    error: LongText | None = None


class DeadmanHealth(RequestBody):
    """Whether a stopped or wedged agent is killed from outside, releasing the readers it holds."""

    armed: bool
    kind: Text40 | None = None  # systemd | supervisor | off
    timeout_ms: Annotated[int, Field(ge=0)] | None = None
    petted_by: LongText | None = None
    detail: LongText | None = None


class SelfReportHealth(RequestBody):
    """The agent's local self-report socket (the tray's "I opened it by mistake")."""

    enabled: bool
    running: bool
    error: LongText | None = None
    refused: Annotated[int, Field(ge=0)] = 0
    busy: Annotated[int, Field(ge=0)] = 0
    restarts: Annotated[int, Field(ge=0)] = 0  # times the agent found it stopped and restarted it
    last_error: LongText | None = None  # why it stopped the last time


class Heartbeat(RequestBody):
    schema_version: SchemaVersion = None
    agent_version: Text40 | None = None
    sensor: SensorHealth
    selfreport: SelfReportHealth | None = None
    targets: Annotated[list[TargetHealth], Field(max_length=1000)] = []
    last_event_at: UtcTime | None = None
    spool_pending: Annotated[int, Field(ge=0)] = 0
    spool_dropped: Annotated[int, Field(ge=0)] = 0
    spool_rejected: Annotated[int, Field(ge=0)] = 0
    readlog_failed: Annotated[int, Field(ge=0)] = 0  # reads the agent could not write to its read log
    spool_failed: Annotated[int, Field(ge=0)] = 0  # events it could not queue for upload
    deadman: DeadmanHealth | None = None


class HeartbeatAck(BaseModel):
    ok: bool
    server_time: UtcTime


class SelftestRequest(RequestBody):
    credential_id: Word40


class SelftestCreated(BaseModel):
    selftest_id: str
    expires_at: UtcTime


class ReadRecord(BaseModel):
    event_id: str
    device_id: str
    time: UtcTime
    path: str
    pid: int | None = None
    ppid: int | None = None
    exe: str | None = None
    cmdline: list[str] = []
    uid: int | None = None
    user: str | None = None
    start_time: UtcTime | None = None
    cwd: str | None = None
    access: str | None = None
    sensor: str | None = None
    classification: str | None = None
    claimed_label: str | None = None
    trust_reason: str | None = None
    ancestors: list[dict[str, Any]] = []
    partial: bool = False
    provenance: dict[str, Any] | None = None


class ReadList(BaseModel):
    reads: list[ReadRecord]
    next_cursor: str | None = Field(default=None, description="pass as `cursor` for the next page")


class Health(BaseModel):
    ok: bool
    version: str


class Readiness(BaseModel):
    ready: bool
    version: str
    database: Literal["ok", "unreachable"]
    schema_revision: str | None
    schema_head: str


def _query_text(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# Query-string filters: bounded, never NUL (PostgreSQL text cannot hold it).
QueryText = Annotated[str | None, AfterValidator(_query_text)]


# ----- dead letters -----------------------------------------------------------------------------


class DeadLetterOut(BaseModel):
    dead_letter_id: int
    source: str
    device_id: str | None
    reason: str
    received_at: UtcTime
    payload: str  # the refused item as JSON text (bounded; credentials-bearing fields removed)


class DeadLetterList(BaseModel):
    counters: dict[str, int]  # every skipped-input counter, e.g. "sqs.malformed", "ingest.failed"
    dead_letters: list[DeadLetterOut]
