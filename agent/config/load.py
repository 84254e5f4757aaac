"""Load the agent's configuration: TOML file, MDM, `TRIPKEY_*` environment variables, flags.

Precedence: flags > environment > MDM > file > defaults. MDM is macOS forced managed preferences
or the Windows policy key (agent.config.mdm; nothing on Linux, where MDM writes the file).
Every key of the file is known (agent.config.schema); an unknown key is an error that names it (a
typo such as `all_user = true` must not silently plant nothing).
Environment variables are the upper-cased key with a `TRIPKEY_` prefix (`TRIPKEY_ISSUER_URL`);
unknown `TRIPKEY_*` variables are ignored because the issuer and the tray share the prefix.
List/table keys (`target`, `classification_rules`) take JSON in the environment.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.config import mdm as mdm_sources
from agent.config.mdm import MdmSource
from agent.config.schema import (
    ALIASES,
    DEFAULT_CONFIG_FILE,
    ENV_PREFIX,
    FILE_KEYS,
    AgentConfig,
    ConfigError,
    build,
    convert_value,
    suggest,
)

log = logging.getLogger(__name__)


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
    `mdm=None` reads this OS's MDM source (agent.config.mdm.default_sources()); tests pass their own.

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
        mdm = mdm_sources.default_sources()  # looked up at call time: tests replace it
    for source in mdm:
        raw.update(source.load())
    raw.update(_from_env(env))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in FILE_KEYS:
            raise ConfigError(f"unknown configuration key {key!r} (from a command-line flag)")
        raw[key] = value
    return build(raw)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        hint = ""
        if exc.errno in (errno.EACCES, errno.EPERM) and getattr(os, "geteuid", lambda: 0)() != 0:
            hint = " (it holds the enrollment token, so it is root-only: run as root)"
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}{hint}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    if data.get("enroll_token"):
        _warn_if_others_can_read(path)
    for alias, key in ALIASES.items():
        if alias in data:
            if key in data:
                raise ConfigError(f"{path}: use either {alias!r} or {key!r}, not both")
            data[key] = data.pop(alias)
    for key in data:
        if key not in FILE_KEYS:
            hint = suggest(key)
            raise ConfigError(f"unknown configuration key {key!r} in {path}{hint}")
    return data


def _warn_if_others_can_read(path: Path) -> None:
    """Anyone who can read the enrollment token can enroll fake devices and learn which profile is
    the canary: say so every time the file is read (POSIX modes only; Windows has ACLs)."""
    if os.name != "posix":
        return
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & stat.S_IROTH:
        log.warning(
            "config file %s holds the enrollment token and every local user can read it "
            "(mode %s): chmod 600 %s",
            path,
            stat.filemode(mode),
            path,
        )


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in FILE_KEYS:
        name = ENV_PREFIX + key.upper()
        if name in env:
            out[key] = convert_value(key, env[name], f"environment {name}", text=True)
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


__all__ = ["load_config", "parse_assignment"]
