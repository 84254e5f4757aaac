"""systemd units: the right command, the hardening options, and systemd's own verdict."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.packaging import LINUX, unit_directives

AGENT_UNIT = LINUX / "tripkey-agent.service"
ISSUER_UNIT = LINUX / "tripkey-issuer.service"


def test_agent_unit_runs_the_agent_service_as_root_with_its_config() -> None:
    unit = unit_directives(AGENT_UNIT)
    service = unit["Service"]
    assert service["ExecStart"] == ["/usr/bin/tripkey-agent run --config /etc/tripkey/agent.toml"]
    assert "User" not in service  # root: fanotify/audit and writing into every home need it
    assert service["StateDirectory"] == ["tripkey"] and service["StateDirectoryMode"] == ["0700"]
    assert service["RuntimeDirectory"] == ["tripkey"]  # /run/tripkey/selfreport.sock for the tray
    assert service["Restart"] == ["on-failure"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_agent_unit_is_hardened_but_keeps_what_the_sensors_need() -> None:
    service = unit_directives(AGENT_UNIT)["Service"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "full",
        "PrivateTmp": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "UMask": "0077",
    }.items():
        assert service.get(key) == [value], key
    caps = set(service["CapabilityBoundingSet"][0].split())
    assert {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_AUDIT_CONTROL", "CAP_AUDIT_READ"} <= caps
    assert {"CAP_CHOWN", "CAP_FOWNER"} <= caps
    assert not caps & {"CAP_NET_ADMIN", "CAP_SYS_MODULE", "CAP_SETUID", "CAP_SYS_BOOT"}
    assert service["ProtectHome"] == ["no"]  # the planted files live in home directories
    families = set(service["RestrictAddressFamilies"][0].split())
    assert "AF_NETLINK" in families  # the audit sensor's netlink socket


def test_issuer_unit_is_an_unprivileged_service() -> None:
    service = unit_directives(ISSUER_UNIT)["Service"]
    [command] = service["ExecStart"]
    assert command.split()[:2] == ["/opt/tripkey-issuer/bin/tripkey-issuer", "serve"]
    assert "--config /etc/tripkey/issuer.toml" in command
    assert service["DynamicUser"] == ["yes"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["ProtectSystem"] == ["strict"] and service["ProtectHome"] == ["yes"]
    assert service["StateDirectory"] == ["tripkey-issuer"]
    assert service["Environment"] == ["TRIPKEY_DATA_DIR=/var/lib/tripkey-issuer"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    # A private root with the host's own unit library and stand-in executables, so verify checks
    # the units (syntax, unknown keys, executables) without installing anything on this host.
    system_units = next(
        (
            p
            for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
            if (p / "sysinit.target").exists()
        ),
        None,
    )
    if system_units is None:
        pytest.skip("no systemd unit library on this host")
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    for exe in ("usr/bin/tripkey-agent", "opt/tripkey-issuer/bin/tripkey-issuer"):
        (root / exe).parent.mkdir(parents=True, exist_ok=True)
        (root / exe).write_text("#!/bin/sh\n")
        (root / exe).chmod(0o755)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in (AGENT_UNIT, ISSUER_UNIT):
        shutil.copy(unit, units / unit.name)
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            f"--root={root}",
            "/etc/systemd/system/tripkey-agent.service",
            "/etc/systemd/system/tripkey-issuer.service",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # verify exits 0 even for unknown keys; it prints them. Our units must print nothing.
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_would_catch_a_typo(tmp_path: Path) -> None:
    # The check above can fail: a misspelt hardening key is reported.
    broken = tmp_path / "tripkey-agent.service"
    broken.write_text(AGENT_UNIT.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=120, check=False
    )
    assert "NoNewPrivilege" in result.stdout + result.stderr


def test_tray_autostart_runs_the_tray_per_user() -> None:
    import configparser

    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # type: ignore[assignment,method-assign]
    entry.read(LINUX / "tripkey-tray.desktop")
    desktop = entry["Desktop Entry"]
    assert desktop["Type"] == "Application"
    assert desktop["Exec"] == "/usr/bin/tripkey-agent tray"
    assert desktop["Terminal"] == "false"
    # Nothing in the name a user sees says "canary": it explains, it does not alarm.
    assert "canary" not in desktop["Name"].lower()


def test_agent_unit_arms_the_deadman() -> None:
    """systemd kills a stopped or wedged agent (closing its fanotify fd releases every held reader)
    within 2 s: the agent pets WATCHDOG=1 (agent.runtime.deadman), READY=1 starts the clock."""
    service = unit_directives(AGENT_UNIT)["Service"]
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert service["WatchdogSignal"] == ["SIGKILL"]  # SIGABRT (the default) would dump core first
    [watchdog] = service["WatchdogSec"]
    assert watchdog.endswith("ms") and 1000 <= int(watchdog.removesuffix("ms")) <= 1500
    assert service["Restart"] == ["on-failure"]  # a watchdog kill is a failure: restarted
