"""The real AWS CLI reads the planted profile (a few hand-picked files, one CLI run each)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.credfile.awsconfig import plant_region_bytes
from agent.credfile.edit import CanaryCredential, plant_bytes
from tests.support.paths import VENV_BIN

CRED = CanaryCredential("AKIACLICLICLICLIWXYZ", "cli/secret+0001")
OWNED = {CRED.access_key_id, "AKIAOLDOLDOLDOLD0001"}

FILES = {
    "empty": b"",
    "crlf-no-final-newline": b"[work]\r\naws_access_key_id = AKIAWORK\r\naws_secret_access_key = w",
    "odd-spacing-comments": (
        b"; top\n[default]\n  aws_access_key_id=AKIADEF\n  aws_secret_access_key =d  \n\n"
        b"# mine\n[Canary]\nAWS_ACCESS_KEY_ID : AKIACASE\naws_secret_access_key:c\n  \t\n"
    ),
    "replace-ours-in-the-middle": (
        b"[a]\nk=v\n[canary]\naws_access_key_id=AKIAOLDOLDOLDOLD0001\r\naws_secret_access_key=old\r\n"
        b"aws_session_token=stale\n[b]\nx=1\n"
    ),
    "cr-only-and-nested": b"[svc]\rs3 =\r  addressing_style = path\r[ canary ]\rx=1\r",
}


def aws_cli(args: list[str], credentials: Path, config: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(credentials),
        AWS_CONFIG_FILE=str(config) if config else "/nonexistent/aws-config",
        AWS_EC2_METADATA_DISABLED="true",
    )
    done = subprocess.run(
        [str(VENV_BIN / "aws"), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name", sorted(FILES))
def test_aws_configure_list_shows_the_planted_key(tmp_path: Path, name: str) -> None:
    path = tmp_path / "credentials"
    path.write_bytes(plant_bytes(FILES[name], "canary", CRED, OWNED))
    out = aws_cli(["configure", "list", "--profile", "canary"], path)
    access_key_row = next(line for line in out.splitlines() if line.split()[:1] == ["access_key"])
    assert access_key_row.split()[1:] == ["****************WXYZ", "shared-credentials-file"]


def test_aws_cli_reads_key_and_region_from_both_planted_files(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    config = tmp_path / "config"
    credentials.write_bytes(plant_bytes(FILES["odd-spacing-comments"], "canary", CRED, OWNED))
    user_config = b"[default]\nregion = us-east-1\noutput = json"
    config.write_bytes(plant_region_bytes(user_config, "canary", "eu-north-1"))
    out = aws_cli(["configure", "list", "--profile", "canary"], credentials, config)
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["access_key"] == ["****************WXYZ", "shared-credentials-file"]
    assert rows["region"][:2] == ["eu-north-1", "config-file"]
