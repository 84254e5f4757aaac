"""Helpers shared by the tests/issuer/test_aws_*.py files (moto server as the AWS account)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import boto3
import requests

from issuer.aws.gateway import AccountConfig, AwsGateway, MintedCredential, MintingConfig
from tests.support.paths import VENV_BIN

DEFAULT_ACCOUNT_ID = "123456789012"  # moto's account for credentials it does not know


def make_gateway(moto_url: str, **overrides: Any) -> AwsGateway:
    return AwsGateway(MintingConfig(endpoint_url=moto_url, **overrides))


def inspector(moto_url: str, service: str, **credentials: str) -> Any:
    """A plain boto3 client playing the AWS console: looks at what the gateway did."""
    return boto3.client(service, endpoint_url=moto_url, region_name="us-east-1", **credentials)


def canary_client(moto_url: str, service: str, cred: MintedCredential) -> Any:
    """A boto3 client using the canary itself, as an attacker would."""
    return boto3.client(
        service,
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id=cred.access_key_id,
        aws_secret_access_key=cred.secret_access_key,
        aws_session_token=cred.session_token,
    )


def record_calls(client: Any, operation: str) -> list[dict[str, Any]]:
    """Record the serialized request body of every `operation` call the client sends on the wire."""
    seen: list[dict[str, Any]] = []

    def on_call(params: dict[str, Any], **_: Any) -> None:
        seen.append(dict(params["body"]))

    client.meta.events.register(f"before-call.{client.meta.service_model.service_name}.{operation}", on_call)
    return seen


def write_credentials_file(path: Path, profile: str, cred: MintedCredential) -> Path:
    lines = [
        f"[{profile}]",
        f"aws_access_key_id = {cred.access_key_id}",
        f"aws_secret_access_key = {cred.secret_access_key}",
    ]
    if cred.session_token:
        lines.append(f"aws_session_token = {cred.session_token}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def aws_cli(args: list[str], *, credentials_file: Path, moto_url: str) -> subprocess.CompletedProcess[str]:
    """Run the real AWS CLI against moto with only the given credentials file to go on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(credentials_file),
        AWS_CONFIG_FILE=str(credentials_file.with_name("no-such-config")),
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return subprocess.run(
        [str(VENV_BIN / "aws"), *args, "--endpoint-url", moto_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def arm_iam_enforcement(moto_url: str, unauthenticated_actions: int) -> None:
    """Reset moto and let exactly N more AWS actions through unchecked; enforce IAM after that.

    moto server mode: INITIAL_NO_AUTH_ACTION_COUNT (env, read at start) is the budget of actions
    served without authentication; POST /moto-api/reset-auth with a number sets a new budget and
    zeroes the counter (what moto's own `set_initial_no_auth_action_count` does in server mode).
    "inf" turns enforcement off again.
    """
    requests.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    requests.post(
        f"{moto_url}/moto-api/reset-auth", data=str(unauthenticated_actions).encode(), timeout=10
    ).raise_for_status()


def bootstrap_admin(moto_url: str, user_name: str = "issuer-admin") -> dict[str, str]:
    """Create an admin IAM user in exactly 3 unauthenticated actions; return its keys."""
    iam = inspector(moto_url, "iam")
    iam.create_user(UserName=user_name)
    iam.put_user_policy(
        UserName=user_name,
        PolicyName="administrator",
        PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}',
    )
    key = iam.create_access_key(UserName=user_name)["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


def admin_profile_file(path: Path, profile: str, keys: dict[str, str]) -> Path:
    path.write_text(
        f"[{profile}]\naws_access_key_id = {keys['aws_access_key_id']}\n"
        f"aws_secret_access_key = {keys['aws_secret_access_key']}\n"
    )
    path.chmod(0o600)
    return path


def profile_account(name: str, profile: str) -> tuple[AccountConfig, ...]:
    return (AccountConfig(name, profile=profile),)
