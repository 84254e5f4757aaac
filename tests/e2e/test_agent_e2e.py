"""End to end: a real issuer minting in moto, the installed `tripkey-agent` command, two real local
users. Plant for both → distinct keys, each file owned by its user 0600, parsed by botocore and
usable against "AWS"; the issuer knows which host/user/path holds each key; `unplant` restores both
files byte for byte and revokes the keys."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from server_api_client import IssuerClient
from tests.support.e2e import E2EUser
from tests.support.paths import FAKE_AWS_ENV, VENV_BIN

SEEDS = {
    "tk-e2e-a": b"# team profiles, do not edit\n[default]\naws_access_key_id = AKIAUSERADEFAULT0001\n"
    b"aws_secret_access_key = aaaa\n\n[dev]  \nregion=eu-west-1\naws_access_key_id=AKIAUSERADEV00000001\n"
    b"aws_secret_access_key=bbbb\n; end",
    "tk-e2e-b": b"[ops]\r\naws_access_key_id = AKIAUSERBOPS00000001\r\naws_secret_access_key = cc\r\n"
    b"  # indented comment\r\n\r\n",
}


def agent(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPKEY_")}
    return subprocess.run(
        [str(VENV_BIN / "tripkey-agent"), *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def botocore_profile(path: Path, profile: str) -> dict[str, str]:
    from botocore.configloader import raw_config_parse

    return raw_config_parse(str(path))[profile]


def caller_identity(path: Path, profile: str, moto_url: str) -> dict[str, Any]:
    env = {**os.environ, **FAKE_AWS_ENV, "AWS_SHARED_CREDENTIALS_FILE": str(path), "AWS_PAGER": ""}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        env.pop(key)
    proc = subprocess.run(
        [
            str(VENV_BIN / "aws"),
            "sts",
            "get-caller-identity",
            "--profile",
            profile,
            "--endpoint-url",
            moto_url,
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_two_users_plant_and_unplant(
    tmp_path: Path, live_issuer: Any, moto_url: str, e2e_users: list[E2EUser]
) -> None:
    files = {}
    for user in e2e_users:
        aws_dir = user.home / ".aws"
        aws_dir.mkdir()
        os.chown(aws_dir, user.uid, user.gid)
        path = aws_dir / "credentials"
        path.write_bytes(SEEDS[user.name])
        os.chown(path, user.uid, user.gid)
        os.chmod(path, 0o600)
        files[user.name] = path
    config = tmp_path / "agent.toml"
    config.write_text(
        f'issuer_url = "{live_issuer.url}"\n'
        f'enroll_token = "{live_issuer.create_token("enroll")}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        'profile = "prod-backup"\nall_users = false\n'
        + "".join(f'[[target]]\npath = "{files[u.name]}"\nowner = "{u.name}"\n' for u in e2e_users)
    )

    planted = agent("plant-once", "--json", config=config)
    assert planted.returncode == 0, planted.stderr + planted.stdout
    status = json.loads(agent("status", "--json", config=config).stdout)
    by_path = {t["path"]: t for t in status["targets"]}
    keys = set()
    for user in e2e_users:
        path = files[user.name]
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (user.uid, user.gid, 0o600)
        section = botocore_profile(path, "prod-backup")
        assert section["aws_access_key_id"] == by_path[str(path)]["access_key_id"]
        assert by_path[str(path)]["local_user"] == user.name and by_path[str(path)]["status"] == "planted"
        keys.add(section["aws_access_key_id"])
        # The user's own profiles still parse exactly as before.
        for own in ("default", "dev") if user.name == "tk-e2e-a" else ():
            assert botocore_profile(path, own)["aws_access_key_id"].startswith("AKIAUSERA")
        # The canary is a working key in "AWS" (that is how the issuer will see it used).
        identity = caller_identity(path, "prod-backup", moto_url)
        assert identity["Arn"].startswith("arn:aws:iam::") and user.name not in identity["Arn"]
    assert len(keys) == 2

    responder = IssuerClient(live_issuer.url, live_issuer.create_token("responder"))
    for user in e2e_users:
        info = responder.lookup_credential(by_path[str(files[user.name])]["access_key_id"])
        assert (info.local_user, info.path, info.profile) == (user.name, str(files[user.name]), "prod-backup")
        assert info.device_id == status["device_id"] and info.status == "active"

    removed = agent("unplant", "--json", config=config)
    assert removed.returncode == 0, removed.stderr + removed.stdout
    for user in e2e_users:
        assert files[user.name].read_bytes() == SEEDS[user.name]
        assert files[user.name].stat().st_uid == user.uid
    for key in keys:
        assert responder.lookup_credential(key).status == "revoked"
    responder.close()


def test_missing_owner_is_reported_not_fatal(
    tmp_path: Path, live_issuer: Any, e2e_users: list[E2EUser]
) -> None:
    good = e2e_users[0]
    config = tmp_path / "agent.toml"
    config.write_text(
        f'issuer_url = "{live_issuer.url}"\nenroll_token = "{live_issuer.create_token("enroll")}"\n'
        f'state_dir = "{tmp_path / "state"}"\nall_users = false\n'
        f'[[target]]\npath = "{good.home}/.aws/credentials"\nowner = "{good.name}"\n'
        f'[[target]]\npath = "{tmp_path}/nobody/.aws/credentials"\nowner = "tk-e2e-no-such-user"\n'
    )
    result = agent("plant-once", config=config)
    assert result.returncode == 3
    assert (good.home / ".aws" / "credentials").stat().st_uid == good.uid


@pytest.mark.parametrize("command", ["status", "check", "unplant"])
def test_commands_need_no_issuer_for_local_views(tmp_path: Path, command: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\nall_users = false\n'
        f'[[target]]\npath = "{tmp_path}/x/credentials"\nowner = "root"\n'
    )
    result = agent(command, config=config)
    assert result.returncode in (0, 3), result.stderr
