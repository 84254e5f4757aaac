"""The agent's configuration schema: the AgentConfig dataclass, its keys and their validation.

Every source (TOML file, MDM, environment, flags; agent.config.load and agent.config.mdm) produces
raw `{key: value}` dicts, converts values with agent.config.convert, and ends in `build()` here, so a
key means the same thing and is checked the same way whatever set it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from agent.osflags import WINDOWS
from agent.sensors.names import SENSOR_NAMES

DEFAULT_CONFIG_FILE = "/etc/tripkey/agent.toml"
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
    if WINDOWS:  # the service runs as LocalSystem; ProgramData is where machine-wide state lives
        return os.path.join(os.environ.get("PROGRAMDATA", "C:\\ProgramData"), "Tripkey")
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
    provenance: bool = True  # record each reader's owner, package/signer and SHA-256 (consumer side)
    provenance_timeout: float = 5.0  # a probe slower than this (a hung file system) is given up
    provenance_hash_max_mb: int = 256  # larger executables are not hashed (said in the read)
    provenance_hash_seconds: float = 2.0  # a hash taking longer is abandoned (and not retried)
    fail_open_ms: int = 100  # fanotify permission events: a reader is never held longer
    deadman_seconds: float = 1.5  # a stopped/wedged agent is killed (its readers released) after this
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
FILE_KEYS = {name for name in _FIELDS if name != "targets"} | {"target"}
# agent/events/classify.py documents its rule tables as `[[classify_rule]]`; accept that spelling too.
ALIASES = {"classify_rule": "classification_rules"}
INT_KEYS = {
    "refresh_before_seconds",
    "rotate_days",
    "readlog_retention_days",
    "readlog_max_mb",
    "spool_max_events",
    "fail_open_ms",
    "provenance_hash_max_mb",
}
FLOAT_KEYS = {
    "heartbeat_interval",
    "upload_interval",
    "check_interval",
    "issuer_timeout",
    "deadman_seconds",
    "provenance_timeout",
    "provenance_hash_seconds",
}
BOOL_KEYS = {"force_default_profile", "all_users", "selfreport", "provenance"}
OPTIONAL_STR_KEYS = {
    "issuer_url",
    "enroll_token",
    "ca_bundle",
    "region",
    "aws_endpoint_url",
    "passwd_file",
}


#: Keys whose value is a list of tables (JSON text where the source is text: environment, registry).
LIST_KEYS = frozenset({"target", "classification_rules"})
#: Never echoed in an error message.
SECRET_KEYS = frozenset({"enroll_token"})


def build(raw: dict[str, Any]) -> AgentConfig:
    """AgentConfig from merged raw values (already converted by their source, or typed TOML)."""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        value = convert_value(key, value)
        if key == "target":
            values["targets"] = _targets(value)
        elif key == "classification_rules":
            values[key] = _rules(value)
        else:
            values[key] = value
    config = AgentConfig(**values)
    validate(config)
    return config


# ----- the one set of value converters ----------------------------------------------------------

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def convert_value(key: str, value: Any, where: str | None = None, *, text: bool = False) -> Any:
    """`value` as AgentConfig's field `key` expects it, or ConfigError naming `where` and the key.

    `text=True` for sources whose values may be text (environment, registry, MDM forms): booleans
    may be spelled true/false/yes/no/on/off/1/0 and lists are JSON. A TOML file is typed, so there
    `all_users = 1` is refused rather than guessed at. Converting a converted value changes nothing.
    """
    prefix = f"{where}: " if where else ""
    shown = "(hidden)" if key in SECRET_KEYS else repr(value)
    what = f"{type(value).__name__} {shown}"
    if key in LIST_KEYS:
        if isinstance(value, str) and text:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{prefix}{key} must be JSON (a list of tables): {exc}") from None
        if not isinstance(value, list):
            raise ConfigError(f"{prefix}{key} must be a list of tables, not {type(value).__name__}")
        return value
    if key in BOOL_KEYS:
        if isinstance(value, bool):
            return value
        if text and isinstance(value, int) and value in (0, 1):  # REG_DWORD from Group Policy
            return bool(value)
        if text and isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{prefix}{key} must be true or false, not {what}")
    if key in INT_KEYS or key in FLOAT_KEYS:
        number = _to_number(key, value, prefix, what)
        if number <= 0:
            raise ConfigError(f"{prefix}{key} must be greater than zero, not {value!r}")
        return number
    if not isinstance(value, str):
        raise ConfigError(f"{prefix}{key} must be a string, not {what}")
    return (value or None) if key in OPTIONAL_STR_KEYS else value


def _to_number(key: str, value: Any, prefix: str, what: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{prefix}{key} must be a number, not {what}")
    if isinstance(value, int):  # exact, however large
        return value if key in INT_KEYS else float(value)
    if isinstance(value, str) and key in INT_KEYS:
        with contextlib.suppress(ValueError):
            return int(value.strip())
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{prefix}{key} must be a number, not {what}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{prefix}{key} must be a finite number, not {value!r}")
    if key in FLOAT_KEYS:
        return number
    if not number.is_integer():
        raise ConfigError(f"{prefix}{key} must be a whole number, not {value!r}")
    return int(number)


def suggest(key: str) -> str:
    """` (did you mean 'x'?)` for a mistyped key, else ""."""
    import difflib

    close = difflib.get_close_matches(key, sorted(FILE_KEYS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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


def validate(config: AgentConfig) -> None:
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
    if config.sensor not in SENSOR_NAMES:
        raise ConfigError(f"sensor must be one of {', '.join(SENSOR_NAMES)}, not {config.sensor!r}")
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
    if config.deadman_seconds != 0 and not 0.3 <= config.deadman_seconds <= 60:
        raise ConfigError(
            f"deadman_seconds must be 0 (off) or between 0.3 and 60, not {config.deadman_seconds}"
        )
    if not config.all_users and not config.targets:
        raise ConfigError("nothing to plant: all_users is false and no [[target]] is configured")


__all__ = [
    "ALIASES",
    "BOOL_KEYS",
    "DEFAULT_CONFIG_FILE",
    "ENV_PREFIX",
    "FILE_KEYS",
    "FLOAT_KEYS",
    "INT_KEYS",
    "LIST_KEYS",
    "SECRET_KEYS",
    "AgentConfig",
    "ConfigError",
    "TargetSpec",
    "build",
    "convert_value",
    "default_state_dir",
    "suggest",
    "validate",
]
