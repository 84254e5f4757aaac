"""macOS packaging: launchd plists, pkg scripts, the managed-preferences and PPPC profiles.

No macOS here: plists are parsed with plistlib (the same format launchd and MDM read) and the
pkg scripts with `sh -n`; the checks tie the files together (same binary path everywhere,
profile keys that the agent's config knows).
"""

from __future__ import annotations

import dataclasses
import plistlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from tests.support.packaging import AGENT_BINARY_MACOS, MACOS, shell_syntax_ok

DAEMON = MACOS / "com.tripkey.agent.plist"
TRAY = MACOS / "com.tripkey.tray.plist"
CONFIG_PROFILE = MACOS / "com.tripkey.agent.example.mobileconfig"
PPPC = MACOS / "tripkey-agent-pppc.mobileconfig"


def load(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        data = plistlib.load(handle)
    assert isinstance(data, dict)
    return data


def test_launch_daemon_runs_the_agent_service() -> None:
    plist = load(DAEMON)
    assert plist["Label"] == "com.tripkey.agent" == DAEMON.stem
    assert plist["ProgramArguments"] == [AGENT_BINARY_MACOS, "run"]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True
    assert "UserName" not in plist  # a LaunchDaemon without UserName runs as root: ES needs it
    assert plist["Umask"] == 0o077
    env = plist["EnvironmentVariables"]
    assert env["TRIPKEY_STATE_DIR"] == "/Library/Application Support/Tripkey"
    assert env["TRIPKEY_SELFREPORT_SOCKET"].startswith("/var/run/")  # macOS has no /run


def test_launch_agent_runs_the_tray_in_each_gui_session() -> None:
    plist = load(TRAY)
    assert plist["Label"] == "com.tripkey.tray" == TRAY.stem
    assert plist["ProgramArguments"] == [AGENT_BINARY_MACOS, "tray"]
    assert plist["LimitLoadToSessionType"] == "Aqua"
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # quitting the tray is respected
    # The tray must talk to the socket the daemon listens on.
    assert (
        plist["EnvironmentVariables"]["TRIPKEY_SELFREPORT_SOCKET"]
        == load(DAEMON)["EnvironmentVariables"]["TRIPKEY_SELFREPORT_SOCKET"]
    )


@pytest.mark.parametrize("script", ["preinstall", "postinstall"])
def test_pkg_scripts_parse_and_are_executable(script: str) -> None:
    path = MACOS / "scripts" / script
    assert path.stat().st_mode & 0o111
    assert path.read_text().startswith("#!/bin/sh\n")
    result = shell_syntax_ok(path)
    assert result.returncode == 0, result.stderr


def test_postinstall_bootstraps_the_installed_plists() -> None:
    text = (MACOS / "scripts" / "postinstall").read_text()
    assert "Library/LaunchDaemons/com.tripkey.agent.plist" in text
    assert "Library/LaunchAgents/com.tripkey.tray.plist" in text
    assert '/bin/launchctl bootstrap system "$DAEMON"' in text
    assert "chmod 0700" in text and "Application Support/Tripkey" in text
    assert "bootout system/com.tripkey.agent" in (MACOS / "scripts" / "preinstall").read_text()


def _payloads(profile: dict[str, Any]) -> list[dict[str, Any]]:
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadScope"] == "System"
    return profile["PayloadContent"]


def test_profiles_have_unique_valid_uuids_and_identifiers() -> None:
    seen: set[str] = set()
    for path in (CONFIG_PROFILE, PPPC):
        profile = load(path)
        for payload in [profile, *_payloads(profile)]:
            value = payload["PayloadUUID"]
            assert str(uuid.UUID(value)).upper() == value
            assert value not in seen
            seen.add(value)
            assert payload["PayloadIdentifier"].startswith("com.tripkey.agent")
            assert payload["PayloadVersion"] == 1


def test_managed_preferences_use_the_agent_config_keys() -> None:
    [settings] = _payloads(load(CONFIG_PROFILE))
    assert settings["PayloadType"] == "com.tripkey.agent"  # the preference domain
    keys = {k for k in settings if not k.startswith("Payload")}
    known = {f.name for f in dataclasses.fields(AgentConfig)}
    assert keys <= known, keys - known
    assert {"issuer_url", "enroll_token", "profile"} <= keys
    assert settings["sensor"] == "eslogger"
    assert settings["issuer_url"].startswith("https://")


def test_pppc_grants_full_disk_access_to_the_agent_binary() -> None:
    [tcc] = _payloads(load(PPPC))
    assert tcc["PayloadType"] == "com.apple.TCC.configuration-profile-policy"
    [grant] = tcc["Services"]["SystemPolicyAllFiles"]
    assert grant["Identifier"] == AGENT_BINARY_MACOS
    assert grant["IdentifierType"] == "path"
    assert grant["Authorization"] == "Allow"
    assert grant["CodeRequirement"].startswith('identifier "com.tripkey.agent" and anchor apple generic')
    assert grant["StaticCode"] is False
