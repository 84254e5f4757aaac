"""With moto enforcing IAM, the canary is denied everything except sts:GetCallerIdentity.

How enforcement works in moto server mode: the server is started with INITIAL_NO_AUTH_ACTION_COUNT=3,
i.e. the first 3 AWS actions are served unauthenticated and every later one is signature-checked
against a real IAM user's key and authorized against its policies. Before each test the budget is
re-armed (POST /moto-api/reset, then /moto-api/reset-auth with "3"), and those 3 free actions
bootstrap an administrator (CreateUser, PutUserPolicy Allow */*, CreateAccessKey). The gateway then
mints with that administrator's keys through a named profile, exactly as an issuer would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError

from issuer.aws.gateway import AccountConfig, AwsError, AwsGateway, MintedCredential, MintingConfig
from tests.support.aws import (
    DEFAULT_ACCOUNT_ID,
    admin_profile_file,
    arm_iam_enforcement,
    aws_cli,
    bootstrap_admin,
    canary_client,
    inspector,
    write_credentials_file,
)
from tests.support.moto import run_moto_server

BOOTSTRAP_ACTIONS = 3


@pytest.fixture(scope="module")
def enforcing_moto() -> Iterator[str]:
    with run_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": str(BOOTSTRAP_ACTIONS)}) as url:
        yield url


@pytest.fixture
def admin(enforcing_moto: str) -> dict[str, str]:
    arm_iam_enforcement(enforcing_moto, BOOTSTRAP_ACTIONS)
    return bootstrap_admin(enforcing_moto)


@pytest.fixture
def gateway(
    enforcing_moto: str, admin: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AwsGateway:
    issuer_credentials = admin_profile_file(tmp_path / "issuer-credentials", "issuer-admin", admin)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(issuer_credentials))
    return AwsGateway(
        MintingConfig(endpoint_url=enforcing_moto, accounts=(AccountConfig("main", profile="issuer-admin"),))
    )


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_enforcement_is_really_on(enforcing_moto: str, admin: dict[str, str]) -> None:
    # Without this, every "denied" below could be a test that cannot fail.
    with pytest.raises(ClientError) as unknown:
        inspector(enforcing_moto, "iam").list_users()  # the ambient fake "testing" key
    assert _code(unknown) == "InvalidClientTokenId"
    # ...and the administrator is allowed what the canary will be refused.
    assert inspector(enforcing_moto, "s3", **admin).list_buckets()["Buckets"] == []
    assert len(inspector(enforcing_moto, "iam", **admin).list_users()["Users"]) == 1


def test_canary_is_denied_s3_but_get_caller_identity_works_boto3(
    enforcing_moto: str, gateway: AwsGateway
) -> None:
    cred = gateway.mint("main")
    with pytest.raises(ClientError) as denied:
        canary_client(enforcing_moto, "s3", cred).list_buckets()
    assert _code(denied) == "AccessDenied"
    with pytest.raises(ClientError) as denied_iam:
        canary_client(enforcing_moto, "iam", cred).list_users()
    assert _code(denied_iam) == "AccessDenied"
    # AWS cannot deny GetCallerIdentity, so an attacker's first probe succeeds (and is detected).
    identity = canary_client(enforcing_moto, "sts", cred).get_caller_identity()
    assert identity["Arn"] == cred.principal_arn
    assert identity["Account"] == DEFAULT_ACCOUNT_ID


def _planted(tmp_path: Path, cred: MintedCredential) -> Path:
    return write_credentials_file(tmp_path / "victim-credentials", "prod-backup", cred)


def test_canary_is_denied_s3_by_the_real_aws_cli(
    enforcing_moto: str, gateway: AwsGateway, tmp_path: Path
) -> None:
    cred = gateway.mint("main")
    planted = _planted(tmp_path, cred)
    for args in (["s3", "ls"], ["s3api", "list-buckets"]):
        result = aws_cli(
            [*args, "--profile", "prod-backup"], credentials_file=planted, moto_url=enforcing_moto
        )
        assert result.returncode != 0, result.stdout
        assert "AccessDenied" in result.stderr, result.stderr
        assert cred.secret_access_key not in result.stderr + result.stdout


def test_get_caller_identity_works_from_the_real_aws_cli(
    enforcing_moto: str, gateway: AwsGateway, tmp_path: Path
) -> None:
    cred = gateway.mint("main")
    result = aws_cli(
        ["sts", "get-caller-identity", "--profile", "prod-backup", "--output", "json"],
        credentials_file=_planted(tmp_path, cred),
        moto_url=enforcing_moto,
    )
    assert result.returncode == 0, result.stderr
    identity = json.loads(result.stdout)
    assert identity["Arn"] == cred.principal_arn
    assert identity["Account"] == DEFAULT_ACCOUNT_ID


def test_revoked_canary_is_unknown_to_aws(enforcing_moto: str, gateway: AwsGateway) -> None:
    cred = gateway.mint("main")
    gateway.revoke(
        backend="iam-user",
        account="main",
        principal_name=cred.principal_name,
        access_key_id=cred.access_key_id,
    )
    with pytest.raises(ClientError) as dead:
        canary_client(enforcing_moto, "sts", cred).get_caller_identity()
    assert _code(dead) == "InvalidClientTokenId"


def test_issuer_without_create_access_key_permission_leaves_no_orphan(
    enforcing_moto: str, admin: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real AccessDenied half-way through minting (no injected fault): the user is cleaned up."""
    iam = inspector(enforcing_moto, "iam", **admin)
    iam.create_user(UserName="issuer-limited")
    allowed = ["iam:CreateUser", "iam:PutUserPolicy", "iam:DeleteUser", "iam:DeleteUserPolicy", "iam:List*"]
    iam.put_user_policy(
        UserName="issuer-limited",
        PolicyName="minting-without-keys",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": allowed, "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName="issuer-limited")["AccessKey"]
    keys = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
    monkeypatch.setenv(
        "AWS_SHARED_CREDENTIALS_FILE", str(admin_profile_file(tmp_path / "c", "limited", keys))
    )
    limited = AwsGateway(
        MintingConfig(endpoint_url=enforcing_moto, accounts=(AccountConfig("main", profile="limited"),))
    )
    with pytest.raises(
        AwsError, match=r"iam:CreateAccessKey for svc-backup-\w+ in account 'main' failed"
    ) as e:
        limited.mint("main")
    assert e.value.code == "AccessDenied"
    assert {u["UserName"] for u in iam.list_users()["Users"]} == {"issuer-admin", "issuer-limited"}


def test_enforcement_can_be_switched_off_again(enforcing_moto: str) -> None:
    """The module server is private to this file; still, leave it permissive like a fresh one."""
    response = requests.post(f"{enforcing_moto}/moto-api/reset-auth", data=b"inf", timeout=10)
    assert response.json()["status"] == "ok"
    assert inspector(enforcing_moto, "iam").list_users()["Users"] is not None
