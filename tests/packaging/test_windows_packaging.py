"""Windows packaging: the WiX source (built into a real MSI with wixl when installed), the
registry example and the administrative template."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent.config import AgentConfig
from tests.support.packaging import WINDOWS

WXS = WINDOWS / "tripkey-agent.wxs"
WIX = "{http://schemas.microsoft.com/wix/2006/wi}"
ADMX_NS = "{http://schemas.microsoft.com/GroupPolicy/2006/07/PolicyDefinitions}"
POLICY_KEY = r"SOFTWARE\Policies\Tripkey\Agent"
CONFIG_KEYS = {f.name for f in dataclasses.fields(AgentConfig)}


def test_wxs_installs_the_service_and_writes_the_policy_key() -> None:
    root = ET.parse(WXS).getroot()
    [service] = root.iter(f"{WIX}ServiceInstall")
    assert (service.get("Name"), service.get("Arguments"), service.get("Account"), service.get("Start")) == (
        "TripkeyAgent",
        "service",  # the ServiceFramework entry (agent/runtime/winservice.py); `run` is the console form
        "LocalSystem",
        "auto",
    )
    [control] = root.iter(f"{WIX}ServiceControl")
    events = (control.get("Start"), control.get("Stop"), control.get("Remove"))
    assert events == ("install", "both", "uninstall")
    [exe] = root.iter(f"{WIX}File")
    assert exe.get("Name") == "tripkey-agent.exe"
    values = {v.get("Name"): v.get("Value") for v in root.iter(f"{WIX}RegistryValue")}
    assert values["issuer_url"] == "[ISSUER_URL]"
    assert values["enroll_token"] == "[ENROLL_TOKEN]"
    assert values["profile"] == "[PROFILE]"
    assert {v.get("Key") for v in root.iter(f"{WIX}RegistryValue")} == {POLICY_KEY}
    assert {v.get("Root") for v in root.iter(f"{WIX}RegistryValue")} == {"HKLM"}
    assert set(values) - {"installed_by"} <= CONFIG_KEYS
    hidden = next(p for p in root.iter(f"{WIX}Property") if p.get("Id") == "MsiHiddenProperties")
    assert "ENROLL_TOKEN" in hidden.get("Value", "").split(";")


def test_registry_example_names_config_keys_and_the_policy_key() -> None:
    text = (WINDOWS / "tripkey-agent-policy.reg").read_text()
    assert text.startswith("Windows Registry Editor Version 5.00")
    assert f"[HKEY_LOCAL_MACHINE\\{POLICY_KEY}]" in text
    names = set(re.findall(r'^"([^"]+)"=', text, flags=re.M))
    assert {"issuer_url", "enroll_token", "profile"} <= names <= CONFIG_KEYS


def test_admx_and_adml_agree() -> None:
    admx = ET.parse(WINDOWS / "tripkey-agent.admx").getroot()
    adml = ET.parse(WINDOWS / "en-US" / "tripkey-agent.adml").getroot()
    strings = {s.get("id") for s in adml.iter(f"{ADMX_NS}string")}
    presentations = {p.get("id") for p in adml.iter(f"{ADMX_NS}presentation")}
    text = ET.tostring(admx, encoding="unicode")
    used_strings = set(re.findall(r"\$\(string\.([A-Za-z0-9_]+)\)", text))
    used_presentations = set(re.findall(r"\$\(presentation\.([A-Za-z0-9_]+)\)", text))
    assert used_strings and used_strings <= strings, used_strings - strings
    assert used_presentations and used_presentations <= presentations
    value_names = set()
    for policy in admx.iter(f"{ADMX_NS}policy"):
        assert policy.get("key") == POLICY_KEY and policy.get("class") == "Machine"
        value_names |= {e.get("valueName") for e in policy.iter() if e.get("valueName")}
    assert value_names <= CONFIG_KEYS and "enroll_token" not in value_names  # GPOs are world-readable


def _onedir_bundle(root: Path) -> Path:
    """A stand-in for the PyInstaller one-directory bundle (same layout, placeholder bytes)."""
    bundle = root / "dist" / "tripkey-agent"
    (bundle / "_internal" / "win32" / "lib").mkdir(parents=True)
    (bundle / "tripkey-agent.exe").write_bytes(b"MZ" + bytes(4094))
    (bundle / "_internal" / "python311.dll").write_bytes(b"MZ" + bytes(100))
    (bundle / "_internal" / "base_library.zip").write_bytes(b"PK" + bytes(10))
    (bundle / "_internal" / "win32" / "lib" / "servicemanager.pyd").write_bytes(b"MZ" + bytes(10))
    return bundle


def test_runtime_fragment_lists_every_bundle_file_but_the_exe(tmp_path: Path) -> None:
    bundle = _onedir_bundle(tmp_path)
    text = subprocess.run(
        [sys.executable, str(WINDOWS / "runtime_wxs.py"), str(bundle)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    root = ET.fromstring(text)
    sources = sorted(f.get("Source", "") for f in root.iter(f"{WIX}File"))
    assert sources == [
        "$(var.SourceDir)/_internal/base_library.zip",
        "$(var.SourceDir)/_internal/python311.dll",
        "$(var.SourceDir)/_internal/win32/lib/servicemanager.pyd",
    ]
    [group] = root.iter(f"{WIX}ComponentGroup")
    assert group.get("Id") == "AgentRuntime" and len(list(group)) == 3
    missing = subprocess.run(
        [sys.executable, str(WINDOWS / "runtime_wxs.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert missing.returncode != 0 and "tripkey-agent.exe" in missing.stderr


@pytest.mark.skipif(
    shutil.which("wixl") is None or shutil.which("msiinfo") is None,
    reason="wixl/msiinfo not installed (Debian: apt-get install wixl msitools)",
)
def test_wixl_builds_an_msi_with_service_recovery_policy_values_and_kept_settings(tmp_path: Path) -> None:
    bundle = _onedir_bundle(tmp_path)
    runtime = tmp_path / "runtime.wxs"
    runtime.write_text(
        subprocess.run(
            [sys.executable, str(WINDOWS / "runtime_wxs.py"), str(bundle)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    msi = tmp_path / "tripkey-agent.msi"
    build = subprocess.run(
        [
            "wixl", "-a", "x64", "-D", "SourceDir=dist/tripkey-agent", "-D", "Version=1.2.3",
            "-o", str(msi), str(WXS), str(runtime),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert build.returncode == 0 and msi.exists(), build.stderr
    assert "CRITICAL" not in build.stderr and "WARNING" not in build.stderr, build.stderr

    def table(name: str) -> list[list[str]]:
        out = subprocess.run(
            ["msiinfo", "export", str(msi), name], capture_output=True, text=True, check=True
        ).stdout
        return [row.split("\t") for row in out.splitlines()[3:]]  # after the 3 header lines

    properties = dict((row[0], row[1]) for row in table("Property"))
    assert properties["ProductVersion"] == "1.2.3"
    assert properties["UpgradeCode"] == "{BF383EA5-1BC1-4123-BCB8-46992DF0291C}"
    assert properties["ALLUSERS"] == "1"
    assert "ENROLL_TOKEN" in properties["MsiHiddenProperties"].split(";")

    # ServiceInstall: Name, DisplayName, ServiceType, StartType, ErrorControl, LoadOrderGroup,
    # Dependencies, StartName, Password, Arguments, Component_, Description.
    [service] = table("ServiceInstall")
    assert service[1:5] == ["TripkeyAgent", "Tripkey Agent", "16", "2"]  # own process, automatic start
    assert (service[8], service[10], service[11]) == ("LocalSystem", "service", "AgentService")
    [control] = table("ServiceControl")
    assert control[1] == "TripkeyAgent" and int(control[2]) == 1 | 2 | 32 | 128  # start, stop, remove

    # Recovery actions: the agent's exe, deferred (1024) and not impersonated (2048), type 18 (an
    # installed file), after the service is installed and before it is started.
    actions = {row[0]: row[1:] for row in table("CustomAction")}
    assert actions["ConfigureRecovery"][:3] == ["3090", "AgentExe", "service --configure-recovery"]
    sequence = {row[0]: (row[1], int(row[2])) for row in table("InstallExecuteSequence")}
    assert sequence["ConfigureRecovery"][0] == "NOT REMOVE"
    assert sequence["InstallFiles"][1] < sequence["InstallServices"][1] < sequence["ConfigureRecovery"][1]
    assert sequence["ConfigureRecovery"][1] < sequence["StartServices"][1]

    registry = {row[3]: (row[1], row[2], row[4]) for row in table("Registry")}
    assert registry["issuer_url"] == ("2", POLICY_KEY, "[ISSUER_URL]")  # 2 = HKLM
    assert registry["enroll_token"] == ("2", POLICY_KEY, "[ENROLL_TOKEN]")
    assert registry["profile"] == ("2", POLICY_KEY, "[PROFILE]")

    # A reinstall/upgrade without the properties keeps the values already in the key.
    searches = {row[0]: row[1] for row in table("AppSearch")}
    assert searches == {
        "SAVED_ISSUER_URL": "SavedIssuerUrl",
        "SAVED_ENROLL_TOKEN": "SavedEnrollToken",
        "SAVED_PROFILE": "SavedProfile",
    }
    assert sequence["KeepIssuerUrl"][0] == "NOT ISSUER_URL AND SAVED_ISSUER_URL"
    assert actions["KeepProfile"][1:3] == ["PROFILE", "[SAVED_PROFILE]"]

    files = {row[2]: row[3] for row in table("File")}
    assert files["tripkey-agent.exe"] == "4096"
    assert {"python311.dll", "base_library.zip", "servicemanager.pyd"} <= set(files)  # the onedir runtime


def test_the_bundle_carries_the_service_host_on_windows() -> None:
    # PyInstaller cannot see the lazily imported pywin32 modules; the spec names them for Windows,
    # with win32timezone, which pywin32's service host imports at run time.
    spec = (WINDOWS.parent / "linux" / "tripkey-agent.spec").read_text()
    block = spec[spec.index('if sys.platform == "win32":') :]
    for module in ("servicemanager", "win32serviceutil", "win32evtlog", "win32pipe", "win32timezone"):
        assert f'"{module}"' in block, module
