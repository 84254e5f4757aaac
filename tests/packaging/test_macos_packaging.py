"""macOS packaging: launchd plists, pkg scripts, the managed-preferences and PPPC profiles, and the
pkg build (pkgbuild/productbuild).

No macOS here: plists are parsed with plistlib (the same format launchd and MDM read), the shell
scripts with `sh -n` and shellcheck, the productbuild distribution as XML, and the build script
lays out its payload for real (STAGE_ONLY) so its tree is checked; pkgbuild, productbuild and
codesign run only on the macOS runner (.github/workflows/ci.yml).
"""

from __future__ import annotations

import dataclasses
import plistlib
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from tests.support.packaging import AGENT_BINARY_MACOS, MACOS, shell_syntax_ok, shellcheck

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


SHELL_SCRIPTS = [MACOS / "scripts" / n for n in ("preinstall", "postinstall", "uninstall")] + [
    MACOS / "build-pkg.sh"
]


def test_every_shell_script_passes_shellcheck() -> None:
    result = shellcheck(*SHELL_SCRIPTS)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", ["preinstall", "postinstall", "uninstall"])
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


def test_distribution_installs_the_component_on_the_boot_volume_of_macos_13_or_later() -> None:
    root = ET.parse(MACOS / "distribution.xml").getroot()
    assert root.tag == "installer-gui-script"
    [domains] = root.iter("domains")
    assert (domains.get("enable_localSystem"), domains.get("enable_anywhere")) == ("true", "false")
    [version] = root.iter("os-version")
    assert version.get("min") == "13.0"  # eslogger exists from Ventura on
    refs = list(root.iter("pkg-ref"))
    assert {r.get("id") for r in refs} == {"com.tripkey.agent"}
    assert [r.text for r in refs if r.text] == ["tripkey-agent-component.pkg"]
    script = (MACOS / "build-pkg.sh").read_text()
    assert "IDENTIFIER=com.tripkey.agent" in script and '"$OUT/tripkey-agent-component.pkg"' in script


def test_build_script_lays_out_the_payload_launchd_and_the_uninstaller_expect(tmp_path: Path) -> None:
    bundle = tmp_path / "dist" / "tripkey-agent"
    (bundle / "_internal").mkdir(parents=True)
    (bundle / "tripkey-agent").write_text("#!/bin/sh\n")
    (bundle / "tripkey-agent").chmod(0o755)
    (bundle / "_internal" / "Python").write_bytes(b"\xcf\xfa\xed\xfe")
    root = tmp_path / "root"
    result = subprocess.run(
        ["sh", str(MACOS / "build-pkg.sh"), "1.2.3", str(bundle), str(tmp_path / "out")],
        env={"PATH": "/usr/bin:/bin", "STAGE_ONLY": str(root)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [
        "Library/LaunchAgents/com.tripkey.tray.plist",
        "Library/LaunchDaemons/com.tripkey.agent.plist",
        "Library/Tripkey/tripkey-agent/_internal/Python",
        "Library/Tripkey/tripkey-agent/tripkey-agent",
        "Library/Tripkey/uninstall.sh",
    ]
    assert AGENT_BINARY_MACOS == "/" + "Library/Tripkey/tripkey-agent/tripkey-agent"  # what launchd runs
    assert (root / "Library/LaunchDaemons/com.tripkey.agent.plist").stat().st_mode & 0o777 == 0o644
    assert (root / "Library/Tripkey/uninstall.sh").stat().st_mode & 0o777 == 0o755
    assert not any(p.stat().st_mode & 0o022 for p in (root / "Library/Tripkey").rglob("*"))


def test_build_script_refuses_a_bad_version_or_a_missing_bundle(tmp_path: Path) -> None:
    for args, message in ((["1.2.x"], "VERSION must look like"), (["1.2.3", str(tmp_path)], "not found")):
        result = subprocess.run(
            ["sh", str(MACOS / "build-pkg.sh"), *args], capture_output=True, text=True, check=False
        )
        assert result.returncode == 2 and message in result.stderr


def test_uninstaller_unplants_before_removing_and_forgets_the_receipt() -> None:
    text = (MACOS / "scripts" / "uninstall").read_text()
    assert text.index('"$AGENT" unplant') < text.index("/bin/rm -rf /Library/Tripkey")
    assert "pkgutil --forget com.tripkey.agent" in text
    assert "com.tripkey.agent.plist" in text and "com.tripkey.tray.plist" in text
