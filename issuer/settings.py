"""Issuer settings: defaults < TOML file (`--config`) < `TRIPKEY_*` environment < command-line flags.

One pydantic model validates every source the same way; unknown keys in the file are an error,
because a typo in a security tool's config must never be silently ignored.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from issuer.aws.config import MintingConfig
    from issuer.minting import MintLimits

ENV_PREFIX = "TRIPKEY_"
# The command-line flag of each key `tripkey-issuer` takes as a flag (for "which database, and why").
_FLAG_NAMES = {
    "db_url": "--db",
    "listen": "--listen",
    "aws_endpoint": "--aws-endpoint",
    "sqs_queue_url": "--sqs-queue-url",
    "poll_interval": "--poll-interval",
    "log_level": "--log-level",
}
SINK_TYPES = ("webhook", "slack", "pagerduty", "smtp", "jsonl")


class SettingsError(Exception):
    """The configuration is invalid; the message says which key and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccountSettings(_Strict):
    """One AWS account of the minting pool. No profile and no role = ambient credentials."""

    name: str = Field(min_length=1, max_length=100)
    profile: str | None = None
    role_arn: str | None = None
    region: str = "us-east-1"
    external_id: str | None = None


class MintingSettings(_Strict):
    backend: Literal["iam-user", "sts-federation"] = "iam-user"
    # Looks like an ordinary service account; never carries host information.
    name_prefix: str = Field(default="svc-backup-", pattern=r"^[\w+=,.@-]{1,40}$")
    permissions_boundary_arn: str | None = None
    iam_path: str = Field(default="/", pattern=r"^/([\x21-\x7e]*/)?$")
    federation_duration_seconds: int = Field(default=129600, ge=900, le=129600)


class IngestDestination(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    secret_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")


def default_data_dir() -> Path:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/tripkey-issuer")
    return Path.home() / ".local" / "share" / "tripkey-issuer"


class Settings(_Strict):
    data_dir: Path = Field(default_factory=default_data_dir)
    db_url: str = ""  # empty = sqlite:///<data_dir>/issuer.db
    listen: str = "127.0.0.1:8700"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    aws_endpoint: str | None = None
    aws_region: str = "us-east-1"
    minting: MintingSettings = Field(default_factory=MintingSettings)
    accounts: list[AccountSettings] = Field(default_factory=lambda: [AccountSettings(name="default")])
    # Detection (read by issuer.detection)
    sqs_queue_url: str | None = None
    poll_interval: float = Field(default=300.0, ge=0)  # GetAccessKeyLastUsed safety net; 0 = off
    lookup_events_regions: list[str] = Field(default_factory=list)
    lookup_interval: float = Field(default=300.0, gt=0)
    ingest_destinations: list[IngestDestination] = Field(default_factory=list)
    sinks: list[dict[str, Any]] = Field(default_factory=list)
    selftest_window_seconds: int = Field(default=900, gt=0)
    # HTTP API
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    stale_after_seconds: int = Field(default=3600, gt=0)
    # Reverse proxies in front of the issuer (addresses or CIDRs): only when a request comes from one
    # of them is its X-Forwarded-For believed for the device's egress address; never otherwise.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Triage
    device_address_window_days: float = Field(default=30.0, gt=0)  # addresses a device was "seen at"
    alert_update_min_interval: float = Field(default=300.0, ge=0)  # at most one update per alert per
    known_canary_accounts_file: Path | None = None  # None = the list shipped in issuer/data/
    # What one device token may mint (issuer.minting): per window, `device_mint_burst` plus two per
    # placement; at most `device_max_placements` placements per device.
    device_mint_burst: int = Field(default=10, ge=1)
    device_mint_window_seconds: int = Field(default=3600, gt=0)
    device_max_placements: int = Field(default=100, ge=1)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_listen(value)
        return value

    # Which layer set each top-level key ("--db", "TRIPKEY_DB_URL", "config file X"); see source_of().
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, proxies: list[str]) -> list[str]:
        import ipaddress

        for index, value in enumerate(proxies):
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies[{index}]: {value!r} is not an address or CIDR") from None
        return proxies

    @field_validator("sinks")
    @classmethod
    def _check_sinks(cls, sinks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Each sink is built here exactly as the detection runner will build it, so a missing
        # required key is found when the settings load (`config show`, `check`, `serve` before it
        # migrates anything), never after the issuer started.
        from issuer.alerts.sinks import SinkConfigError, build_sink

        names: set[str] = set()
        for index, sink in enumerate(sinks):
            kind = sink.get("type")
            if kind not in SINK_TYPES:
                raise ValueError(f"sinks[{index}].type must be one of {', '.join(SINK_TYPES)}, got {kind!r}")
            name = str(sink.get("name") or kind)
            if name in names:
                raise ValueError(f"sinks[{index}]: duplicate sink name {name!r}")
            names.add(name)
            try:
                build_sink(dict(sink))
            except SinkConfigError as exc:
                raise ValueError(f"sinks[{index}] ({kind}): {exc}") from None
            except (TypeError, ValueError) as exc:  # e.g. max_attempts = "often"
                raise ValueError(f"sinks[{index}] ({kind} sink {name!r}): invalid value: {exc}") from None
        return sinks

    @model_validator(mode="after")
    def _fill_db_url(self) -> Settings:
        object.__setattr__(self, "db_url", normalize_db_url(self.db_url, self.data_dir))
        names = [account.name for account in self.accounts]
        if not names:
            raise ValueError("accounts: at least one account is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"accounts: duplicate account names in {names}")
        return self

    @property
    def listen_host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_listen(self.listen)[1]

    def detection_enabled(self) -> bool:
        """True when any detection source or alert sink is configured."""
        return bool(
            self.sqs_queue_url
            or self.poll_interval > 0
            or self.lookup_events_regions
            or self.ingest_destinations
            or self.sinks
        )

    def minting_config(self) -> MintingConfig:
        """The one place Settings become the AWS gateway's configuration."""
        from issuer.aws.config import AccountConfig, MintingConfig

        return MintingConfig(
            backend=self.minting.backend,
            name_prefix=self.minting.name_prefix,
            permissions_boundary_arn=self.minting.permissions_boundary_arn,
            iam_path=self.minting.iam_path,
            federation_duration_seconds=self.minting.federation_duration_seconds,
            accounts=tuple(
                AccountConfig(
                    name=a.name,
                    profile=a.profile,
                    role_arn=a.role_arn,
                    region=a.region,
                    external_id=a.external_id,
                )
                for a in self.accounts
            ),
            endpoint_url=self.aws_endpoint,
            region=self.aws_region,
        )

    def mint_limits(self) -> MintLimits:
        from issuer.minting import MintLimits

        return MintLimits(
            burst=self.device_mint_burst,
            window_seconds=self.device_mint_window_seconds,
            max_placements=self.device_max_placements,
        )

    def redacted(self) -> dict[str, Any]:
        """The effective settings for display: sink secrets and DB passwords hidden."""
        data = self.model_dump(mode="json")
        data["db_url"] = _redact_url(self.db_url)
        data["sinks"] = [
            {k: ("***" if _looks_secret(k) else v) for k, v in sink.items()} for sink in self.sinks
        ]
        return data

    def __eq__(self, other: object) -> bool:
        # Where a value came from is not part of the settings: the same values are the same settings.
        if not isinstance(other, Settings):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  # lists inside: never hashable

    def source_of(self, key: str) -> str:
        """Where a top-level setting came from: `--db`-style flag, environment variable, file, default."""
        return self._sources.get(key, "default")

    def database_origin(self) -> str:
        """The database and why it is that one, for every command that opens it."""
        source = self.source_of("db_url")
        if source == "default":
            where = self.source_of("data_dir")
            if where == "default":
                reason = "the default, as neither --db, a config file's db_url nor TRIPKEY_DB_URL set one"
            else:
                reason = f"issuer.db in the data_dir set by {where}"
            return f"{_redact_url(self.db_url)} ({reason})"
        return f"{_redact_url(self.db_url)} (from {source})"


_SCHEME_TYPO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
DB_URL_HELP = "sqlite:///PATH, a plain file path (an SQLite file), or postgresql://USER@HOST/DB"


def normalize_db_url(value: str, data_dir: Path) -> str:
    """The SQLAlchemy URL for `db_url`: default SQLite in data_dir, a plain path as SQLite, psycopg 3.

    A plain path is what an operator types for "this file" (`--db /var/lib/tripkey-issuer/issuer.db`);
    it is made absolute, so the issuer and a later `token create` run from elsewhere agree on it.
    Anything else that is not an SQLite or PostgreSQL URL is refused here, with the accepted forms.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not value:
        return f"sqlite:///{data_dir / 'issuer.db'}"
    if "://" not in value:
        if _SCHEME_TYPO.match(value):  # `postgres:/db`, `sqlite:x.db`: a URL with a typo, not a path
            raise ValueError(f"db_url {_redact_url(value)!r} is not a database URL; use {DB_URL_HELP}")
        return f"sqlite:///{Path(value).expanduser().absolute()}"
    if value.startswith(("postgresql://", "postgres://")):
        # psycopg 3 is the driver we ship; plain URLs would ask SQLAlchemy for psycopg2.
        value = "postgresql+psycopg://" + value.split("://", 1)[1]
    try:
        parsed = make_url(value)
    except ArgumentError:
        raise ValueError(f"db_url {_redact_url(value)!r} is not a database URL; use {DB_URL_HELP}") from None
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise ValueError(
            f"db_url: unsupported database {parsed.drivername!r}; use {DB_URL_HELP} "
            "(PostgreSQL goes through psycopg 3)"
        )
    if parsed.get_backend_name() == "sqlite" and not parsed.database:
        raise ValueError(f"db_url {value!r} names no file; use {DB_URL_HELP}")
    return value


def split_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"listen must be HOST:PORT (e.g. 127.0.0.1:8700), got {value!r}")
    return host.strip("[]"), int(port)


def _looks_secret(key: str) -> bool:
    return any(word in key.lower() for word in ("secret", "password", "token", "key", "url"))


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        creds, _, host = rest.rpartition("@")
        user, colon, _password = creds.partition(":")
        return f"{scheme}://{user}{':***' if colon else ''}@{host}"
    return url


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    """TRIPKEY_DB_URL=... ; nested keys with `__` (TRIPKEY_MINTING__BACKEND); lists/tables as JSON."""
    layer: dict[str, Any] = {}
    top_keys = set(Settings.model_fields)
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if path[0] not in top_keys:
            continue  # TRIPKEY_* is shared with the agent; only our keys matter here
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise SettingsError(f"environment variable {name}: invalid JSON ({exc})") from exc
        target = layer
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return layer


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown key {loc!r}")
        else:
            lines.append(f"{loc}: {message}" if loc else message)
    return f"invalid configuration ({source}): " + "; ".join(lines)


def load_settings(
    config_file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from the layers; raise SettingsError with a readable message."""
    data: dict[str, Any] = {}
    sources = ["defaults"]
    key_sources: dict[str, str] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SettingsError(f"config file {path} does not exist") from exc
        except OSError as exc:
            raise SettingsError(f"config file {path} cannot be read: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc
        sources.append(f"file {path}")
        key_sources.update(dict.fromkeys(data, f"config file {path}"))
        try:  # unknown keys in the file name the file in the message
            Settings.model_validate(data)
        except ValidationError as exc:
            raise SettingsError(_format_validation_error(exc, f"config file {path}")) from exc
    env_layer = _env_layer(os.environ if env is None else env)
    if env_layer:
        sources.append("TRIPKEY_* environment")
        data = _deep_merge(data, env_layer)
        key_sources.update({key: f"{ENV_PREFIX}{key.upper()}" for key in env_layer})
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    if flags:
        sources.append("command line")
        data = _deep_merge(data, flags)
        key_sources.update({key: _FLAG_NAMES.get(key, "the command line") for key in flags})
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_format_validation_error(exc, " + ".join(sources))) from exc
    try:  # the gateway's own rules (IAM name limits, words that give the canary away, ...)
        settings.minting_config()
    except ValueError as exc:
        raise SettingsError(f"invalid minting configuration ({' + '.join(sources)}): {exc}") from exc
    settings._sources.update(key_sources)
    return settings
