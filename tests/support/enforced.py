"""A moto server that enforces IAM, and an issuer minting in it as a real issuer would.

In the default moto server every call is allowed, so a canary's explicit deny is never tested there
(`tripkey-agent trigger` then rightly reports "NOT denied"). Here the canary is refused what its
policy denies. How enforcement is armed: tests/support/aws.py (arm_iam_enforcement).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.aws import admin_profile_file, arm_iam_enforcement, bootstrap_admin
from tests.support.issuer import start_issuer
from tests.support.moto import run_moto_server

BOOTSTRAP_ACTIONS = 3  # CreateUser, PutUserPolicy, CreateAccessKey of the issuer's administrator
ISSUER_PROFILE = "issuer-admin"


@pytest.fixture(scope="session")
def enforcing_moto_server() -> Iterator[str]:
    with run_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": str(BOOTSTRAP_ACTIONS)}) as url:
        yield url


@pytest.fixture
def enforced_issuer(
    enforcing_moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """A live issuer (detection on: last-used every second) minting through a named profile whose
    keys belong to an administrator of the enforcing moto account. `.moto_url` is that account."""
    arm_iam_enforcement(enforcing_moto_server, BOOTSTRAP_ACTIONS)
    admin = bootstrap_admin(enforcing_moto_server)
    credentials = admin_profile_file(tmp_path / "issuer-aws-credentials", ISSUER_PROFILE, admin)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    issuer = start_issuer(
        data_dir=str(tmp_path / "issuer"),
        aws_endpoint=enforcing_moto_server,
        poll_interval=1,
        accounts=[{"name": "main", "profile": ISSUER_PROFILE}],
    )
    issuer.moto_url = enforcing_moto_server  # type: ignore[attr-defined]
    try:
        yield issuer
    finally:
        issuer.stop()
