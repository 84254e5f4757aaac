"""Agent configuration: TOML file, MDM, `TRIPKEY_*` environment variables, command-line flags.

Precedence: flags > environment > MDM > file > defaults. MDM is macOS forced managed preferences
or the Windows policy key (agent/mdm_config.py; nothing on Linux, where MDM writes the file).
Every key of the file is known here; an unknown key is an error that names it (a typo such as
`all_user = true` must not silently plant nothing).
Environment variables are the upper-cased key with a `TRIPKEY_` prefix (`TRIPKEY_ISSUER_URL`);
unknown `TRIPKEY_*` variables are ignored because the issuer and the tray share the prefix.
List/table keys (`target`, `classification_rules`) take JSON in the environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .mdm_config import MdmSource

DEFAULT_CONFIG_FILE = "/etc/tripkey/agent.toml"
SENSORS = ("auto", "fanotify", "fanotify-notify", "audit", "eslogger", "eventlog")
ENV_PREFIX = "TRIPKEY_"
# The AWS CLI refuses brackets in profile names, and a space would be parsed as "profile x".
_PROFILE_RE = re.compile(r"^[A-Za-z0-9_.+=@,-]{1,64}$")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and says what is wrong."""


@dataclasses.dataclass(frozen=True, slots=True)
class TargetSpec:
    """An explicit placement: a credentials file path and the local user who owns it."""

    path: str
    owner: str


def default_state_dir() -> str:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/var/lib/tripkey"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "tripkey")


@dataclasses.dataclass(frozen=True, slots=True)
class AgentConfig:
    issuer_url: str | None = None
    enroll_token: str | None = None
    profile: str = "prod-backup"
    force_default_profile: bool = False
    state_dir: str = dataclasses.field(default_factory=default_state_dir)
    sensor: str = "auto"
    all_users: bool = True
    targets: tuple[TargetSpec, ...] = ()
    ca_bundle: str | None = None
    region: str | None = None
    aws_endpoint_url: str | None = None  # tests and the demo: the moto server the trigger talks to
    refresh_before_seconds: int = 6 * 3600  # short-term (<= 36 h) credentials renewed this early
    rotate_days: int = 90  # long-term keys rotated on this schedule
    heartbeat_interval: float = 300.0
    upload_interval: float = 30.0
    check_interval: float = 300.0  # safety-net inspection of every target + new-user rescan
    readlog_retention_days: int = 90
    readlog_max_mb: int = 100
    spool_max_events: int = 100_000
    classification_rules: tuple[dict[str, Any], ...] = ()
    fail_open_ms: int = 100  # fanotify permission events: a reader is never held longer
    issuer_timeout: float = 15.0
    passwd_file: str | None = None  # tests: a passwd-format file instead of the system database
    login_defs: str = "/etc/login.defs"
    log_level: str = "INFO"
    selfreport: bool = True  # accept "I opened it by mistake" from the tray over a local socket
    selfreport_socket: str = "/run/tripkey/selfreport.sock"

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    def require_issuer(self) -> str:
        if not self.issuer_url:
            raise ConfigError("issuer_url is not set (config file, TRIPKEY_ISSUER_URL or --issuer-url)")
        return self.issuer_url


_FIELDS = {f.name: f for f in dataclasses.fields(AgentConfig)}
# The file spells the explicit placements `[[target]]` (one table per placement).
_FILE_KEYS = {name for name in _FIELDS if name != "targets"} | {"target"}
# agent/classify.py documents its rule tables as `[[classify_rule]]`; accept that spelling too.
_ALIASES = {"classify_rule": "classification_rules"}
_INT_KEYS = {
    "refresh_before_seconds",
    "rotate_days",
    "readlog_retention_days",
    "readlog_max_mb",
    "spool_max_events",
    "fail_open_ms",
}
_FLOAT_KEYS = {"heartbeat_interval", "upload_interval", "check_interval", "issuer_timeout"}
_BOOL_KEYS = {"force_default_profile", "all_users", "selfreport"}
_OPTIONAL_STR_KEYS = {
    "issuer_url",
    "enroll_token",
    "ca_bundle",
    "region",
    "aws_endpoint_url",
    "passwd_file",
}


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    mdm: Sequence[MdmSource] | None = None,
) -> AgentConfig:
    """Build the configuration from a TOML file, MDM, the environment and flags, then validate.

    `path=None` reads TRIPKEY_CONFIG or /etc/tripkey/agent.toml when that file exists.
    `overrides` are already-typed values from command-line flags (None values are ignored).
    `mdm=None` reads this OS's MDM source (mdm_config.default_sources()); tests pass their own.

    Why MDM sits above the file: on macOS and Windows the MDM is the fleet's source of truth and
    only its forced values are trusted, while a local file may be a stale leftover of a manual
    install; a key MDM sets is therefore not overridable by the file. Environment and flags stay
    above MDM because only root sets them (the launchd plist, the service definition, an admin's
    command line) and they are how one run is pointed elsewhere (`--state-dir`, a test issuer);
    neither persists.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is None:
        path = env.get("TRIPKEY_CONFIG") or (
            DEFAULT_CONFIG_FILE if os.path.exists(DEFAULT_CONFIG_FILE) else None
        )
    if path is not None:
        raw.update(_read_file(Path(path)))
    if mdm is None:
        from .mdm_config import default_sources  # imported here: mdm_config imports this module

        mdm = default_sources()
    for source in mdm:
        raw.update(source.load())
    raw.update(_from_env(env))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in _FILE_KEYS:
            raise ConfigError(f"unknown configuration key {key!r} (from a command-line flag)")
        raw[key] = value
    return _build(raw)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for alias, key in _ALIASES.items():
        if alias in data:
            if key in data:
                raise ConfigError(f"{path}: use either {alias!r} or {key!r}, not both")
            data[key] = data.pop(alias)
    for key in data:
        if key not in _FILE_KEYS:
            hint = _suggest(key)
            raise ConfigError(f"unknown configuration key {key!r} in {path}{hint}")
    return data


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(_FILE_KEYS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _FILE_KEYS:
        name = ENV_PREFIX + key.upper()
        if name not in env:
            continue
        value = env[name]
        if key in ("target", "classification_rules"):
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{name} must be JSON (a list of tables): {exc}") from None
        elif key in _BOOL_KEYS:
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                out[key] = True
            elif lowered in ("0", "false", "no", "off"):
                out[key] = False
            else:
                raise ConfigError(f"{name} must be true or false, not {value!r}")
        else:
            out[key] = value  # converted and checked by _build
    return out


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` from `--set`; the value is TOML (`true`, `30`, `"x"`), bare words are strings."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key, parsed


def _build(raw: dict[str, Any]) -> AgentConfig:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "target":
            values["targets"] = _targets(value)
        elif key == "classification_rules":
            values[key] = _rules(value)
        elif key in _INT_KEYS:
            values[key] = _number(key, value, int)
        elif key in _FLOAT_KEYS:
            values[key] = _number(key, value, float)
        elif key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise ConfigError(f"{key} must be true or false, not {value!r}")
            values[key] = value
        else:
            if not isinstance(value, str):
                raise ConfigError(f"{key} must be a string, not {type(value).__name__}")
            values[key] = (value or None) if key in _OPTIONAL_STR_KEYS else value
    config = AgentConfig(**values)
    _validate(config)
    return config


def _number(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a number, not {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, not {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{key} must be greater than zero, not {value!r}")
    return number


def _targets(value: Any) -> tuple[TargetSpec, ...]:
    if not isinstance(value, list):
        raise ConfigError("target must be a list of tables ([[target]] with path and owner)")
    specs = []
    for index, item in enumerate(value):
        where = f"target #{index + 1}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be a table with path and owner")
        unknown = set(item) - {"path", "owner"}
        if unknown:
            raise ConfigError(f"unknown key {sorted(unknown)[0]!r} in {where} (expected path and owner)")
        path, owner = item.get("path"), item.get("owner")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ConfigError(f"{where}: path must be an absolute file path, not {path!r}")
        if not isinstance(owner, str) or not owner:
            raise ConfigError(f"{where} ({path}): owner must name a local user")
        specs.append(TargetSpec(path=os.path.normpath(path), owner=owner))
    paths = [s.path for s in specs]
    dupes = {p for p in paths if paths.count(p) > 1}
    if dupes:
        raise ConfigError(f"target path {sorted(dupes)[0]} is listed more than once")
    return tuple(specs)


def _rules(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError("classification_rules must be a list of tables")
    return tuple(dict(v) for v in value)


def _validate(config: AgentConfig) -> None:
    if config.issuer_url and not re.match(r"^https?://[^/\s]+", config.issuer_url):
        raise ConfigError(f"issuer_url must be an http(s) URL, not {config.issuer_url!r}")
    if config.aws_endpoint_url and not re.match(r"^https?://[^/\s]+", config.aws_endpoint_url):
        raise ConfigError(f"aws_endpoint_url must be an http(s) URL, not {config.aws_endpoint_url!r}")
    if not _PROFILE_RE.match(config.profile):
        raise ConfigError(
            f"profile {config.profile!r} is not a usable AWS CLI profile name "
            "(1-64 letters, digits or _.+=@,- ; no spaces or brackets)"
        )
    if config.profile == "default" and not config.force_default_profile:
        raise ConfigError(
            'profile "default" would make every AWS tool on the host use the canary key and break the '
            "users' own work; pick a plausible named profile, or set force_default_profile = true"
        )
    if config.sensor not in SENSORS:
        raise ConfigError(f"sensor must be one of {', '.join(SENSORS)}, not {config.sensor!r}")
    if not os.path.isabs(config.state_dir):
        raise ConfigError(f"state_dir must be an absolute path, not {config.state_dir!r}")
    if config.ca_bundle and not os.path.exists(config.ca_bundle):
        raise ConfigError(f"ca_bundle {config.ca_bundle} does not exist")
    if config.rotate_days * 86400 <= config.refresh_before_seconds:
        raise ConfigError("rotate_days must be longer than refresh_before_seconds")
    if config.region is not None and not re.match(r"^[a-z]{2}(-[a-z]+)+-\d+$", config.region):
        raise ConfigError(f"region {config.region!r} does not look like an AWS region (e.g. us-east-1)")
    if config.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR, not {config.log_level!r}")
    if not config.all_users and not config.targets:
        raise ConfigError("nothing to plant: all_users is false and no [[target]] is configured")


__all__ = [
    "DEFAULT_CONFIG_FILE",
    "SENSORS",
    "AgentConfig",
    "ConfigError",
    "TargetSpec",
    "default_state_dir",
    "load_config",
    "parse_assignment",
]
