"""Configuration pushed by MDM: macOS forced managed preferences and the Windows policy key.

These are pure loaders that return raw, typed `{config key: value}` dicts; agent.config.load merges
them as one layer (above the local file, below environment and flags; see agent.config.load) and
validates the result like any other source.

macOS: only `/Library/Managed Preferences/com.tripkey.agent.plist` is read. macOS writes it from a
profile's forced settings of the domain `com.tripkey.agent`, and only profile installation (MDM)
writes there, so its values are the MDM's. Nothing else is consulted: not
`/Library/Preferences/com.tripkey.agent.plist` (any admin can `defaults write` it), not the
per-user `/Library/Managed Preferences/<user>/` copies. The file must be owned by root and not
writable by group or others, and so must its folder; otherwise it is refused (a preference that
someone other than root could have written is not MDM-forced). The agent cannot remove the
enrollment token from that file (it belongs to the profile), and managed preferences are readable
by local users: push the token in a separate profile and withdraw it once the hosts have enrolled.

Windows: REG_SZ values (REG_DWORD accepted for numbers and booleans) under
`HKLM\\SOFTWARE\\Policies\\Tripkey\\Agent`, named after the config keys, written by the MSI
properties, `tripkey-agent-policy.reg` or Group Policy. `target` and `classification_rules` are
JSON text there, as in the environment. The key is readable by every local user, so the
enrollment token value is deleted once the host has enrolled (`MdmSource.forget_enroll_token`,
called by agent.reporting.enroll).

In both, an empty (or blank) string means "not set", so the layers below apply: the MSI writes
every property whether given or not, and MDM forms send blank fields.

Unknown keys are refused with the key named, as in the TOML file: a typo such as `all_user` must
not silently plant nothing. Metadata that the platform itself puts beside our keys is skipped:
`Payload*` and `mcx_*` keys in a managed-preferences plist, `installed_by` in the policy key.
"""

from __future__ import annotations

import dataclasses
import os
import plistlib
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from agent.config.schema import ALIASES, FILE_KEYS, ConfigError, convert_value, suggest
from agent.osflags import MACOS, WINDOWS

MANAGED_PREFERENCES_PLIST = "/Library/Managed Preferences/com.tripkey.agent.plist"
POLICY_KEY = r"SOFTWARE\Policies\Tripkey\Agent"
POLICY_KEY_DISPLAY = "HKLM\\" + POLICY_KEY
ENROLL_TOKEN_VALUE = "enroll_token"
_PLIST_METADATA_PREFIXES = ("Payload", "mcx_")
_POLICY_METADATA = frozenset({"installed_by"})  # the MSI's KeyPath value, not a setting


def _nothing_to_forget() -> bool:
    return False


@dataclasses.dataclass(frozen=True, slots=True)
class MdmSource:
    """One MDM-controlled configuration source of this OS.

    `load()` returns typed config values (raises ConfigError naming the source when they are
    unusable); `forget_enroll_token()` removes the enrollment token from the source when the
    agent may do so (Windows) and returns whether a value was removed; elsewhere it does nothing.
    """

    description: str
    load: Callable[[], dict[str, Any]]
    forget_enroll_token: Callable[[], bool] = _nothing_to_forget


class PolicyKey(Protocol):
    """The Windows policy key as the agent uses it (tests inject a dict-backed one)."""

    def read(self) -> Mapping[str, object]: ...

    def delete_value(self, name: str) -> bool: ...


# ----- macOS ------------------------------------------------------------------------------------


def managed_preferences(path: str | os.PathLike[str] = MANAGED_PREFERENCES_PLIST) -> dict[str, Any]:
    """Config values from a forced managed-preferences plist; {} when the file does not exist.

    Refuses (ConfigError) a file or folder not owned by root or writable by group/others, a
    symlink, a file that is not a plist dict, an unknown key, or a value of the wrong type.
    """
    path = Path(path)
    where = f"managed preferences {path}"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return {}  # no profile for our domain: MDM configures nothing
    except OSError as exc:  # ELOOP: a symlink, which root-written managed preferences never are
        raise ConfigError(f"cannot read {where}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        # The file we opened (fstat, not a second lookup) and the folder that names it.
        _check_root_only(os.fstat(fh.fileno()), where, "file")
        try:
            _check_root_only(os.stat(path.parent), where, "folder")
        except OSError as exc:
            raise ConfigError(f"cannot inspect the folder of {where}: {exc.strerror}") from None
        try:
            data = plistlib.load(fh)
        except (plistlib.InvalidFileException, ValueError) as exc:
            raise ConfigError(f"{where} is not a valid property list: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a dictionary of settings, not {type(data).__name__}")
    settings = {k: v for k, v in data.items() if not k.startswith(_PLIST_METADATA_PREFIXES)}
    return _convert_all(settings, where)


def _check_root_only(st: os.stat_result, where: str, what: str) -> None:
    if st.st_uid != 0:
        raise ConfigError(
            f"refusing {where}: its {what} is owned by uid {st.st_uid}, not root, "
            "so its values are not MDM-forced"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"refusing {where}: its {what} is writable by group or others "
            f"(mode {stat.filemode(st.st_mode)}), so its values are not MDM-forced"
        )


# ----- Windows ----------------------------------------------------------------------------------


class RegistryPolicyKey:
    """HKLM\\SOFTWARE\\Policies\\Tripkey\\Agent through winreg (imported only when used: Windows).

    Always the 64-bit view, where the MSI (Win64="yes") writes, even from a 32-bit interpreter.
    """

    def read(self) -> dict[str, object]:
        if not WINDOWS:
            raise OSError(f"{POLICY_KEY_DISPLAY} exists only on Windows")
        import winreg

        values: dict[str, object] = {}
        access = winreg.KEY_READ | winreg.KEY_WOW64_64KEY
        try:
            key = winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, POLICY_KEY, 0, access)
        except FileNotFoundError:
            return values
        with key:
            index = 0
            while True:
                try:
                    name, value, _kind = winreg.EnumValue(key, index)
                except OSError:  # ERROR_NO_MORE_ITEMS
                    return values
                values[name] = value
                index += 1

    def delete_value(self, name: str) -> bool:
        if not WINDOWS:
            raise OSError(f"{POLICY_KEY_DISPLAY} exists only on Windows")
        import winreg

        access = winreg.KEY_SET_VALUE | winreg.KEY_WOW64_64KEY
        try:
            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, POLICY_KEY, 0, access) as key:
                winreg.DeleteValue(key, name)
        except FileNotFoundError:
            return False
        return True


def windows_policy(reader: Callable[[], Mapping[str, object]]) -> dict[str, Any]:
    """Config values from the policy key's values as `reader()` returns them (name -> value).

    Empty strings are "not set"; `installed_by` is the MSI's marker, not a setting.
    """
    where = f"policy key {POLICY_KEY_DISPLAY}"
    try:
        values = reader()
    except OSError as exc:  # e.g. access denied: configured, but we cannot know how
        raise ConfigError(f"cannot read {where}: {exc}") from None
    settings = {name: value for name, value in values.items() if name not in _POLICY_METADATA}
    return _convert_all(settings, where)


def _forget_policy_enroll_token(key: PolicyKey) -> bool:
    return key.delete_value(ENROLL_TOKEN_VALUE)


def policy_source(key: PolicyKey) -> MdmSource:
    """The Windows source over `key` (RegistryPolicyKey() on a real host)."""
    return MdmSource(
        description=f"policy key {POLICY_KEY_DISPLAY}",
        load=lambda: windows_policy(key.read),
        forget_enroll_token=lambda: _forget_policy_enroll_token(key),
    )


def managed_preferences_source(path: str | os.PathLike[str] = MANAGED_PREFERENCES_PLIST) -> MdmSource:
    """The macOS source. The agent cannot remove the token: the plist belongs to the profile."""
    return MdmSource(description=f"managed preferences {path}", load=lambda: managed_preferences(path))


def default_sources() -> tuple[MdmSource, ...]:
    """The MDM source of this OS: macOS managed preferences, the Windows policy key, or none
    (Linux: MDM tools write the root-only /etc/tripkey/agent.toml, which is the file layer)."""
    if MACOS:
        return (managed_preferences_source(),)
    if WINDOWS:
        return (policy_source(RegistryPolicyKey()),)
    return ()


# ----- conversion -------------------------------------------------------------------------------


def _convert_all(settings: Mapping[Any, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if isinstance(value, str) and not value.strip():
            continue  # "not set": the MSI writes every property, MDM forms send blank fields
        key = ALIASES.get(name, name)
        if key not in FILE_KEYS:
            raise ConfigError(f"unknown configuration key {name!r} in {where}{suggest(str(name))}")
        if key in out:
            raise ConfigError(f"{where}: {key!r} is set twice (use one spelling)")
        out[key] = convert_value(key, value, where, text=True)
    return out


__all__ = [
    "ENROLL_TOKEN_VALUE",
    "MANAGED_PREFERENCES_PLIST",
    "POLICY_KEY",
    "MdmSource",
    "PolicyKey",
    "RegistryPolicyKey",
    "default_sources",
    "managed_preferences",
    "managed_preferences_source",
    "policy_source",
    "windows_policy",
]
