"""MDM configuration: macOS forced managed preferences, the Windows policy key, their layer in
load_config, and the removal of the Windows enrollment token after enrollment.

Fixture formats (the real things cannot exist on this Linux host):
- macOS writes a profile's forced settings for the domain com.tripkey.agent to
  /Library/Managed Preferences/com.tripkey.agent.plist as a flat plist dict {key: value} (root-owned,
  not writable by others). The fixtures are written with plistlib into a root-only tmp folder.
- The Windows policy key HKLM\\SOFTWARE\\Policies\\Tripkey\\Agent is injected as a dict of
  value name -> value, as winreg.EnumValue returns them: str for REG_SZ, int for REG_DWORD.
"""

from __future__ import annotations

import logging
import os
import plistlib
import re
from pathlib import Path
from typing import Any

import pytest

import agent.config.mdm as mdm_config
from agent.config import ConfigError, TargetSpec, load_config
from agent.config.mdm import (
    MdmSource,
    managed_preferences,
    managed_preferences_source,
    policy_source,
    windows_policy,
)
from agent.reporting.enroll import EnrollmentError, ensure_enrolled
from agent.service import make_client
from agent.state import StateStore
from tests.support.net import free_port
from tests.support.paths import REPO_ROOT, requires_root

REPO = REPO_ROOT
NOBODY_UID = 65534


class DictPolicyKey:
    """The policy key as a dict; records deletions like RegistryPolicyKey would perform them."""

    def __init__(self, values: dict[str, object]) -> None:
        self.values = dict(values)
        self.deleted: list[str] = []

    def read(self) -> dict[str, object]:
        return dict(self.values)

    def delete_value(self, name: str) -> bool:
        self.deleted.append(name)
        return self.values.pop(name, None) is not None


def write_plist(tmp_path: Path, data: Any, mode: int = 0o644) -> Path:
    folder = tmp_path / "Managed Preferences"
    folder.mkdir(mode=0o755, exist_ok=True)
    path = folder / "com.tripkey.agent.plist"
    with open(path, "wb") as fh:
        plistlib.dump(data, fh)
    os.chmod(path, mode)
    return path


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


# ----- macOS managed preferences ------------------------------------------------------------------


def test_managed_preferences_types_and_payload_metadata(tmp_path: Path) -> None:
    path = write_plist(
        tmp_path,
        {
            "PayloadUUID": "8CF2B0F2-DDF4-4A13-95FC-BF133A9C6D14",  # metadata: skipped, not refused
            "mcx_data_timestamp": "2026-01-01",
            "issuer_url": "https://tripkey.example.com",
            "enroll_token": "tok-1",
            "sensor": "eslogger",
            "all_users": False,
            "force_default_profile": "yes",  # text fields of MDM forms
            "rotate_days": 30,
            "readlog_max_mb": "50",
            "heartbeat_interval": 60,
            "upload_interval": "12.5",
            "fail_open_ms": 80.0,
            "region": "",  # blank = not set
            "target": [{"path": "/Users/ci/.aws/credentials", "owner": "ci"}],
            "classify_rule": [{"name": "backup", "label": "indexer_backup_av", "program": ["acme"]}],
        },
    )
    values = managed_preferences(path)
    assert values == {
        "issuer_url": "https://tripkey.example.com",
        "enroll_token": "tok-1",
        "sensor": "eslogger",
        "all_users": False,
        "force_default_profile": True,
        "rotate_days": 30,
        "readlog_max_mb": 50,
        "heartbeat_interval": 60.0,
        "upload_interval": 12.5,
        "fail_open_ms": 80,
        "target": [{"path": "/Users/ci/.aws/credentials", "owner": "ci"}],
        "classification_rules": [{"name": "backup", "label": "indexer_backup_av", "program": ["acme"]}],
    }
    assert type(values["fail_open_ms"]) is int and type(values["heartbeat_interval"]) is float


def test_missing_managed_preferences_is_no_configuration(tmp_path: Path) -> None:
    assert managed_preferences(tmp_path / "absent" / "com.tripkey.agent.plist") == {}


def test_example_mobileconfig_payload_is_accepted(tmp_path: Path) -> None:
    """The keys of packaging/macos's example profile are what the agent reads, with their types."""
    with open(REPO / "packaging/macos/com.tripkey.agent.example.mobileconfig", "rb") as fh:
        profile = plistlib.load(fh)
    (payload,) = [p for p in profile["PayloadContent"] if p["PayloadType"] == "com.tripkey.agent"]
    path = write_plist(tmp_path, payload)  # what macOS writes: the payload's keys, flat
    config = load_config(None, env={}, mdm=[managed_preferences_source(path)])
    assert config.issuer_url == "https://tripkey.example.com"
    assert config.enroll_token == "REPLACE-WITH-ENROLLMENT-TOKEN"
    assert (config.profile, config.sensor, config.all_users) == ("prod-backup", "eslogger", True)


@requires_root
def test_plist_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    path = write_plist(tmp_path, {"issuer_url": "https://evil.example.com"})
    os.chown(path, NOBODY_UID, 0)
    with pytest.raises(ConfigError, match=r"file is owned by uid 65534, not root.*not MDM-forced"):
        managed_preferences(path)


@requires_root
def test_folder_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    path = write_plist(tmp_path, {"issuer_url": "https://evil.example.com"})
    os.chown(path.parent, NOBODY_UID, 0)
    with pytest.raises(ConfigError, match=r"folder is owned by uid 65534"):
        managed_preferences(path)


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_plist_writable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_plist(tmp_path, {"issuer_url": "https://evil.example.com"}, mode=mode)
    with pytest.raises(ConfigError, match=r"file is writable by group or others \(mode -rw-"):
        managed_preferences(path)


def test_folder_writable_by_others_is_refused(tmp_path: Path) -> None:
    path = write_plist(tmp_path, {"profile": "x"})
    os.chmod(path.parent, 0o777)  # anyone could have swapped the file in
    with pytest.raises(ConfigError, match=r"folder is writable by group or others"):
        managed_preferences(path)


def test_symlinked_plist_is_refused(tmp_path: Path) -> None:
    real = write_plist(tmp_path, {"profile": "x"})
    link = real.parent / "link.plist"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="cannot read managed preferences"):
        managed_preferences(link)


def test_insecure_plist_fails_load_config(tmp_path: Path) -> None:
    """No silent fallback to the file: the agent refuses to start with an untrusted MDM layer."""
    path = write_plist(tmp_path, {"profile": "from-mdm"}, mode=0o666)
    toml = write_toml(tmp_path, 'profile = "from-file"\n')
    with pytest.raises(ConfigError, match="not MDM-forced"):
        load_config(toml, env={}, mdm=[managed_preferences_source(path)])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a plist", "is not a valid property list"),
        (plistlib.dumps(["issuer_url"]), "must hold a dictionary of settings, not list"),
    ],
)
def test_bad_plist_content(tmp_path: Path, content: bytes, message: str) -> None:
    path = write_plist(tmp_path, {})
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        managed_preferences(path)


def test_unknown_key_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    path = write_plist(tmp_path, {"issuer_url": "https://x.example.com", "all_user": False})
    with pytest.raises(ConfigError, match=r"unknown configuration key 'all_user' in managed preferences "):
        managed_preferences(path)
    path = write_plist(tmp_path, {"all_user": False})
    with pytest.raises(ConfigError, match=r"did you mean 'all_users'\?"):
        managed_preferences(path)


def test_both_spellings_of_rules_are_refused(tmp_path: Path) -> None:
    path = write_plist(tmp_path, {"classify_rule": [], "classification_rules": []})
    with pytest.raises(ConfigError, match="'classification_rules' is set twice"):
        managed_preferences(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("all_users", "maybe", "all_users must be true or false, not str 'maybe'"),
        ("all_users", 2, "all_users must be true or false, not int 2"),
        ("issuer_url", 42, "issuer_url must be a string, not int 42"),
        ("profile", b"prod", "profile must be a string, not bytes"),
        ("rotate_days", 1.5, "rotate_days must be a whole number, not 1.5"),
        ("rotate_days", True, "rotate_days must be a number, not bool True"),
        ("heartbeat_interval", "nan", "heartbeat_interval must be a finite number"),
        ("heartbeat_interval", "soon", "heartbeat_interval must be a number, not str 'soon'"),
        ("target", {"path": "/x", "owner": "y"}, "target must be a list of tables"),
    ],
)
def test_wrong_types_are_refused(tmp_path: Path, key: str, value: Any, message: str) -> None:
    path = write_plist(tmp_path, {key: value})
    with pytest.raises(ConfigError, match=re.escape(message)):
        managed_preferences(path)


def test_enroll_token_is_never_echoed_in_an_error(tmp_path: Path) -> None:
    path = write_plist(tmp_path, {"enroll_token": 123456789})
    with pytest.raises(ConfigError) as caught:
        managed_preferences(path)
    assert "enroll_token" in str(caught.value) and "123456789" not in str(caught.value)


def test_values_are_validated_like_the_file(tmp_path: Path) -> None:
    path = write_plist(tmp_path, {"profile": "default"})
    with pytest.raises(ConfigError, match='profile "default" would make every AWS tool'):
        load_config(None, env={}, mdm=[managed_preferences_source(path)])
    path = write_plist(tmp_path, {"target": [{"path": "relative", "owner": "ci"}]})
    with pytest.raises(ConfigError, match="path must be an absolute file path"):
        load_config(None, env={}, mdm=[managed_preferences_source(path)])


# ----- Windows policy key -------------------------------------------------------------------------


def test_windows_policy_values() -> None:
    values = windows_policy(
        lambda: {
            "installed_by": "msi",  # the MSI's marker value: not a setting
            "issuer_url": "https://tripkey.example.com",
            "enroll_token": "",  # the MSI writes properties that were not given as empty strings
            "profile": "   ",
            "sensor": "eventlog",
            "all_users": 0,  # REG_DWORD
            "heartbeat_interval": "120",
            "rotate_days": 45,
            "target": '[{"path": "C:\\\\build\\\\.aws\\\\credentials", "owner": "build"}]',
        }
    )
    assert values == {
        "issuer_url": "https://tripkey.example.com",
        "sensor": "eventlog",
        "all_users": False,
        "heartbeat_interval": 120.0,
        "rotate_days": 45,
        "target": [{"path": "C:\\build\\.aws\\credentials", "owner": "build"}],
    }


def test_windows_policy_refuses_unknown_values_and_bad_json() -> None:
    with pytest.raises(ConfigError, match=r"unknown configuration key 'issuer' in policy key HKLM\\SOFTWARE"):
        windows_policy(lambda: {"issuer": "https://x.example.com"})
    with pytest.raises(ConfigError, match="target must be JSON"):
        windows_policy(lambda: {"target": "C:\\x:ci"})
    with pytest.raises(ConfigError, match="profile must be a string, not list"):
        windows_policy(lambda: {"profile": ["a", "b"]})  # REG_MULTI_SZ


def test_unreadable_policy_key_is_a_config_error() -> None:
    def denied() -> dict[str, object]:
        raise PermissionError(5, "Access is denied")

    with pytest.raises(ConfigError, match=r"cannot read policy key .*Access is denied"):
        windows_policy(denied)


def test_example_policy_reg_and_msi_values_are_accepted() -> None:
    """The value names in packaging/windows (the .reg example and the MSI's RegistryValues) are
    all keys the agent knows."""
    reg = (REPO / "packaging/windows/tripkey-agent-policy.reg").read_text(encoding="utf-8")
    values: dict[str, object] = dict(re.findall(r'^"([^"]+)"="([^"]*)"$', reg, re.MULTILINE))
    assert {"issuer_url", "enroll_token", "profile", "sensor"} <= set(values)
    assert windows_policy(lambda: values)["sensor"] == "eventlog"
    wxs = (REPO / "packaging/windows/tripkey-agent.wxs").read_text(encoding="utf-8")
    names = re.findall(
        r'RegistryValue Root="HKLM" Key="SOFTWARE\\Policies\\Tripkey\\Agent" Name="(\w+)"', wxs
    )
    assert "issuer_url" in names and "installed_by" in names
    assert windows_policy(lambda: dict.fromkeys(names, "")) == {}  # a bare install: nothing set


# ----- the layer in load_config -------------------------------------------------------------------


def test_precedence_flags_over_env_over_mdm_over_file(tmp_path: Path) -> None:
    toml = write_toml(
        tmp_path,
        'profile = "from-file"\nsensor = "audit"\nregion = "eu-west-1"\nupload_interval = 7\n'
        'issuer_url = "https://file.example.com"\n',
    )
    key = DictPolicyKey(
        {
            "profile": "from-mdm",
            "sensor": "fanotify",
            "region": "",  # empty: the file's region stays
            "issuer_url": "https://mdm.example.com",
            "upload_interval": "9",
        }
    )
    env = {"TRIPKEY_SENSOR": "fanotify-notify", "TRIPKEY_PROFILE": "from-env"}
    config = load_config(toml, env=env, overrides={"profile": "from-flag"}, mdm=[policy_source(key)])
    assert config.profile == "from-flag"  # flag > env > MDM
    assert config.sensor == "fanotify-notify"  # env > MDM > file
    assert config.issuer_url == "https://mdm.example.com"  # MDM > file
    assert config.upload_interval == 9.0
    assert config.region == "eu-west-1"  # not set by MDM
    assert load_config(toml, env={}, mdm=[]).profile == "from-file"  # mdm=[]: no MDM layer


def test_mdm_targets_replace_the_file_targets(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, '[[target]]\npath = "/srv/a/.aws/credentials"\nowner = "a"\n')
    path = write_plist(
        tmp_path, {"all_users": False, "target": [{"path": "/srv/b/.aws/credentials", "owner": "b"}]}
    )
    config = load_config(toml, env={}, mdm=[managed_preferences_source(path)])
    assert config.all_users is False
    assert config.targets == (TargetSpec("/srv/b/.aws/credentials", "b"),)


def test_default_sources_follow_osflags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mdm_config, "MACOS", False)
    monkeypatch.setattr(mdm_config, "WINDOWS", False)
    assert mdm_config.default_sources() == ()  # Linux: MDM writes /etc/tripkey/agent.toml
    monkeypatch.setattr(mdm_config, "MACOS", True)
    (mac,) = mdm_config.default_sources()
    assert mac.description == "managed preferences /Library/Managed Preferences/com.tripkey.agent.plist"
    assert mac.forget_enroll_token() is False  # the profile owns the file
    monkeypatch.setattr(mdm_config, "MACOS", False)
    monkeypatch.setattr(mdm_config, "WINDOWS", True)
    (win,) = mdm_config.default_sources()
    assert win.description == "policy key HKLM\\SOFTWARE\\Policies\\Tripkey\\Agent"


def test_load_config_uses_default_sources_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    key = DictPolicyKey({"profile": "from-default-source"})
    monkeypatch.setattr(mdm_config, "default_sources", lambda: (policy_source(key),))
    assert load_config(None, env={}).profile == "from-default-source"


# ----- the enrollment token is removed from the policy key after enrollment -----------------------


def enroll_config(tmp_path: Path, url: str, token: str) -> Any:
    return load_config(
        None,
        env={},
        overrides={"issuer_url": url, "enroll_token": token, "state_dir": str(tmp_path / "state")},
        mdm=[],
    )


def test_enroll_token_deleted_after_enrollment(tmp_path: Path, live_issuer: Any) -> None:
    token = live_issuer.create_token("enroll")
    key = DictPolicyKey({"issuer_url": live_issuer.url, "enroll_token": token, "installed_by": "msi"})
    config = load_config(
        None, env={}, overrides={"state_dir": str(tmp_path / "state")}, mdm=[policy_source(key)]
    )
    assert config.enroll_token == token
    store = StateStore(config.state_dir)
    device_id, _ = ensure_enrolled(store, make_client(config), config, [], mdm=[policy_source(key)])
    assert key.values == {"issuer_url": live_issuer.url, "installed_by": "msi"}
    # Pushed again (msiexec with ENROLL_TOKEN on an enrolled host): removed on the next start too.
    key.values["enroll_token"] = token
    again = ensure_enrolled(
        StateStore(config.state_dir), make_client(config), config, [], mdm=[policy_source(key)]
    )
    assert again[0] == device_id and "enroll_token" not in key.values


def test_enroll_token_kept_when_enrollment_fails(tmp_path: Path) -> None:
    config = enroll_config(tmp_path, f"http://127.0.0.1:{free_port()}", "tok")
    key = DictPolicyKey({"enroll_token": "tok"})
    client = make_client(config)
    client.retries = 0
    with pytest.raises(EnrollmentError, match="after 1 attempts"):
        ensure_enrolled(
            StateStore(config.state_dir), client, config, [], max_attempts=1, mdm=[policy_source(key)]
        )
    assert key.values == {"enroll_token": "tok"} and key.deleted == []


def test_failure_to_delete_the_token_is_loud_but_not_fatal(
    tmp_path: Path, live_issuer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse() -> bool:
        raise PermissionError(5, "Access is denied")

    config = enroll_config(tmp_path, live_issuer.url, live_issuer.create_token("enroll"))
    source = MdmSource(description="policy key TEST", load=dict, forget_enroll_token=refuse)
    with caplog.at_level(logging.ERROR, logger="agent.reporting.enroll"):
        device_id, _ = ensure_enrolled(
            StateStore(config.state_dir), make_client(config), config, [], mdm=[source]
        )
    assert device_id
    assert (
        "could not remove the enrollment token from policy key TEST: [Errno 5] Access is denied"
        in caplog.text
    )
