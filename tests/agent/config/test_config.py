"""Agent configuration: precedence (flags > env > file > defaults) and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, ConfigError, TargetSpec, load_config, parse_assignment
from tests.support.paths import REPO_ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_without_file() -> None:
    config = load_config(None, env={})
    assert config.profile == "prod-backup"
    assert config.sensor == "auto"
    assert config.all_users is True
    assert config.refresh_before_seconds == 6 * 3600
    assert config.rotate_days == 90
    assert config.issuer_url is None


def test_file_values_and_targets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
issuer_url = "https://tripkey.example.com"
enroll_token = "tok"
profile = "ci-deploy"
state_dir = "/var/lib/tk-test"
sensor = "fanotify"
all_users = false
heartbeat_interval = 60
region = "eu-west-1"
[[target]]
path = "/srv/ci/.aws/credentials"
owner = "ci"
[[target]]
path = "/srv/build/.aws/credentials"
owner = "build"
""",
    )
    config = load_config(path, env={})
    assert config.issuer_url == "https://tripkey.example.com"
    assert config.profile == "ci-deploy"
    assert config.sensor == "fanotify"
    assert config.all_users is False
    assert config.heartbeat_interval == 60.0
    assert config.targets == (
        TargetSpec("/srv/ci/.aws/credentials", "ci"),
        TargetSpec("/srv/build/.aws/credentials", "build"),
    )


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "from-file"\nsensor = "audit"\nissuer_url = "http://file:1"\n')
    env = {"TRIPKEY_PROFILE": "from-env", "TRIPKEY_SENSOR": "fanotify-notify"}
    config = load_config(path, env=env, overrides={"profile": "from-flag", "sensor": None})
    assert config.profile == "from-flag"  # flag beats env and file
    assert config.sensor == "fanotify-notify"  # env beats file (flag was not given)
    assert config.issuer_url == "http://file:1"  # only the file set it


def test_env_types_and_json_targets() -> None:
    env = {
        "TRIPKEY_ALL_USERS": "false",
        "TRIPKEY_UPLOAD_INTERVAL": "7.5",
        "TRIPKEY_TARGET": '[{"path": "/x/.aws/credentials", "owner": "x"}]',
        "TRIPKEY_UNRELATED_ISSUER_THING": "ignored",
    }
    config = load_config(None, env=env)
    assert config.all_users is False
    assert config.upload_interval == 7.5
    assert config.targets == (TargetSpec("/x/.aws/credentials", "x"),)


def test_config_env_var_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "via-env-file"\n')
    assert load_config(None, env={"TRIPKEY_CONFIG": str(path)}).profile == "via-env-file"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("all_user = true\n", "unknown configuration key 'all_user'"),
        ('profile = "default"\n', 'profile "default"'),
        ('profile = "has space"\n', "not a usable AWS CLI profile name"),
        ('profile = "[x]"\n', "not a usable AWS CLI profile name"),
        ('sensor = "bpf"\n', "sensor must be one of"),
        ('issuer_url = "ftp://x"\n', "issuer_url must be an http(s) URL"),
        ("heartbeat_interval = 0\n", "heartbeat_interval must be greater than zero"),
        ('rotate_days = "soon"\n', "rotate_days must be a number"),
        ("all_users = 1\n", "all_users must be true or false"),
        ('state_dir = "relative/dir"\n', "state_dir must be an absolute path"),
        ('region = "mars"\n', "does not look like an AWS region"),
        ("all_users = false\n", "nothing to plant"),
        ('[[target]]\npath = "relative"\nowner = "x"\n', "path must be an absolute file path"),
        ('[[target]]\npath = "/a/credentials"\n', "owner must name a local user"),
        (
            '[[target]]\npath = "/a/credentials"\nowner = "x"\nmode = "0600"\n',
            "unknown key 'mode' in target #1",
        ),
        (
            '[[target]]\npath = "/a/c"\nowner = "x"\n[[target]]\npath = "/a/c"\nowner = "y"\n',
            "more than once",
        ),
        ("this is not toml\n", "is not valid TOML"),
        ('ca_bundle = "/nonexistent/ca.pem"\n', "ca_bundle /nonexistent/ca.pem does not exist"),
    ],
)
def test_invalid_file_values_explain_themselves(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert message in str(info.value)


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'all_users'"):
        load_config(write(tmp_path, "all_user = true\n"), env={})


def test_default_profile_allowed_only_when_forced(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'profile = "default"\nforce_default_profile = true\n'), env={})
    assert config.profile == "default"


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_bad_env_values() -> None:
    with pytest.raises(ConfigError, match="TRIPKEY_ALL_USERS: all_users must be true or false"):
        load_config(None, env={"TRIPKEY_ALL_USERS": "maybe"})
    with pytest.raises(ConfigError, match="TRIPKEY_TARGET: target must be JSON"):
        load_config(None, env={"TRIPKEY_TARGET": "/x:y"})
    with pytest.raises(ConfigError, match="spool_max_events must be a number"):
        load_config(None, env={"TRIPKEY_SPOOL_MAX_EVENTS": "lots"})


def test_unknown_flag_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown configuration key 'bogus'"):
        load_config(None, env={}, overrides={"bogus": 1})


def test_classify_rule_alias(tmp_path: Path) -> None:
    path = write(tmp_path, '[[classify_rule]]\nname = "ours"\nlabel = "aws_tool"\nprogram = ["x"]\n')
    config = load_config(path, env={})
    assert config.classification_rules == ({"name": "ours", "label": "aws_tool", "program": ["x"]},)


def test_parse_assignment() -> None:
    assert parse_assignment("all_users=false") == ("all_users", False)
    assert parse_assignment("upload_interval=2.5") == ("upload_interval", 2.5)
    assert parse_assignment("profile=ci") == ("profile", "ci")
    with pytest.raises(ConfigError):
        parse_assignment("novalue")


def test_require_issuer() -> None:
    with pytest.raises(ConfigError, match="issuer_url is not set"):
        AgentConfig().require_issuer()


def test_shipped_example_lists_every_key_with_its_default() -> None:
    import dataclasses
    import re

    from agent.config import AgentConfig

    path = REPO_ROOT / "agent" / "config" / "default_config.toml"
    config = load_config(path, env={})
    defaults = AgentConfig()
    for field in dataclasses.fields(AgentConfig):
        if field.name not in ("state_dir",):
            assert getattr(config, field.name) == getattr(defaults, field.name), field.name
    text = path.read_text()
    mentioned = set(re.findall(r"^#?\s*\[*([a-z_]+)\]*\s*=?", text, flags=re.M))
    missing = {f.name for f in dataclasses.fields(AgentConfig)} - mentioned - {"targets", "passwd_file"}
    assert not missing, f"undocumented keys: {missing}"
