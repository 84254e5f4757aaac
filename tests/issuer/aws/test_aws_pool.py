"""An account pool of two accounts on one moto server.

moto keeps one backend per account id. A request is served in the account that owns its access
key; `sts:AssumeRole` into arn:aws:iam::222222222222:role/... returns a key that belongs to account
222222222222, so everything the gateway does through that role happens there (moto docs,
"multi-account"). The plain account uses the ambient test credentials and lands in moto's default
account 123456789012.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import requests
from botocore.credentials import RefreshableCredentials

from issuer.aws.gateway import AccountConfig, AccountPoolFullError, AwsError, AwsGateway, MintingConfig
from tests.support.aws import DEFAULT_ACCOUNT_ID, admin_profile_file, canary_client

SECOND_ACCOUNT_ID = "222222222222"
ROLE_ARN = f"arn:aws:iam::{SECOND_ACCOUNT_ID}:role/credential-issuer"
EXPECTED_IDS = {"main": DEFAULT_ACCOUNT_ID, "second": SECOND_ACCOUNT_ID}


def _pool(moto_url: str, cap: int = 4_900) -> AwsGateway:
    return AwsGateway(
        MintingConfig(
            endpoint_url=moto_url,
            accounts=(
                AccountConfig("main"),
                AccountConfig("second", role_arn=ROLE_ARN, external_id="ext-42"),
            ),
            max_users_per_account=cap,
        )
    )


def _users(gateway: AwsGateway, account: str) -> set[str]:
    return {u["UserName"] for u in gateway.client("iam", account).list_users()["Users"]}


def test_each_account_resolves_to_its_own_id(moto_url: str) -> None:
    gateway = _pool(moto_url)
    assert gateway.account_id("main") == DEFAULT_ACCOUNT_ID
    assert gateway.account_id("second") == SECOND_ACCOUNT_ID
    assert gateway.account_names == ("main", "second")


def test_mints_spread_over_both_accounts_and_land_in_the_right_one(moto_url: str) -> None:
    gateway = _pool(moto_url)
    counts: dict[str, int] = {}
    creds = []
    for _ in range(4):
        account = gateway.pick_account(counts)
        cred = gateway.mint(account)
        counts[account] = counts.get(account, 0) + 1
        creds.append(cred)
    assert counts == {"main": 2, "second": 2}
    for cred in creds:
        assert cred.account_id == EXPECTED_IDS[cred.account]
        assert cred.principal_arn == f"arn:aws:iam::{cred.account_id}:user/{cred.principal_name}"
        # AWS itself (moto) says whose key it is: the canary's own identity is in that account.
        identity = canary_client(moto_url, "sts", cred).get_caller_identity()
        assert identity["Account"] == EXPECTED_IDS[cred.account]
        assert identity["Arn"] == cred.principal_arn
    for account in ("main", "second"):
        assert _users(gateway, account) == {c.principal_name for c in creds if c.account == account}


def test_cap_refuses_when_both_accounts_are_full(moto_url: str) -> None:
    gateway = _pool(moto_url, cap=1)
    counts: dict[str, int] = {}
    for _ in range(2):
        account = gateway.pick_account(counts)
        gateway.mint(account)
        counts[account] = counts.get(account, 0) + 1
    with pytest.raises(AccountPoolFullError, match=r"\(main, second\) holds 1 or more"):
        gateway.pick_account(counts)


def test_revoke_deletes_the_user_in_the_right_account_only(moto_url: str) -> None:
    gateway = _pool(moto_url)
    in_main = gateway.mint("main")
    in_second = gateway.mint("second")
    gateway.revoke(
        backend="iam-user",
        account="second",
        principal_name=in_second.principal_name,
        access_key_id=in_second.access_key_id,
    )
    assert _users(gateway, "second") == set()
    assert _users(gateway, "main") == {in_main.principal_name}
    gateway.revoke(
        backend="iam-user",
        account="main",
        principal_name=in_main.principal_name,
        access_key_id=in_main.access_key_id,
    )
    assert _users(gateway, "main") == set()


def test_role_is_assumed_with_the_external_id(moto_url: str) -> None:
    gateway = _pool(moto_url)
    access_key = (
        gateway.client("iam", "second")._request_signer._credentials.get_frozen_credentials().access_key
    )
    # moto's model dump shows what AssumeRole received on the server side.
    sessions = requests.get(f"{moto_url}/moto-api/data.json", timeout=10).json()["sts"]["AssumedRole"]
    (session,) = [s for s in sessions if s["access_key_id"] == access_key]
    assert session["role_arn"] == ROLE_ARN
    assert session["external_id"] == "ext-42"
    assert session["account_id"] == SECOND_ACCOUNT_ID
    assert not any(word in session["session_name"] for word in ("canary", "honey", "trap", "tripkey"))


def test_role_credentials_are_re_assumed_before_they_expire(moto_url: str) -> None:
    gateway = _pool(moto_url)
    iam = gateway.client("iam", "second")
    credentials = iam._request_signer._credentials
    assert isinstance(credentials, RefreshableCredentials)
    first_key = credentials.get_frozen_credentials().access_key
    # Pretend the session is 5 minutes from expiry: inside botocore's mandatory refresh window.
    credentials._expiry_time = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    cred = gateway.mint("second")
    assert credentials.get_frozen_credentials().access_key != first_key
    assert credentials._expiry_time > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=30)
    assert cred.account_id == SECOND_ACCOUNT_ID


def test_profile_account_uses_that_profile(
    moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = {"aws_access_key_id": "AKIAPROFILEEXAMPLE00", "aws_secret_access_key": "x" * 40}
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(admin_profile_file(tmp_path / "c", "pool-b", keys)))
    gateway = AwsGateway(
        MintingConfig(endpoint_url=moto_url, accounts=(AccountConfig("b", profile="pool-b"),))
    )
    iam = gateway.client("iam", "b")
    assert iam._request_signer._credentials.access_key == "AKIAPROFILEEXAMPLE00"
    assert gateway.mint("b").account == "b"


def test_missing_profile_is_a_clear_error(moto_url: str) -> None:
    gateway = AwsGateway(MintingConfig(endpoint_url=moto_url, accounts=(AccountConfig("b", profile="nope"),)))
    with pytest.raises(
        AwsError, match=r"loading credentials \(profile 'nope'\) in account 'b' failed: .*nope"
    ):
        gateway.mint("b")


def test_debug_log_never_carries_the_issuers_role_credentials(
    moto_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG botocore logs each request with its headers: the role session's token rides in
    X-Amz-Security-Token, and AssumeRole's response body holds the role's secret key."""
    import logging

    gateway = _pool(moto_url)
    with caplog.at_level(logging.DEBUG):
        cred = gateway.mint("second")
    frozen = gateway.client("iam", "second")._request_signer._credentials.get_frozen_credentials()
    text = caplog.text
    assert "X-Amz-Security-Token" in text  # botocore did log the signed requests...
    assert frozen.token not in text  # ...without the session token
    assert frozen.secret_key not in text
    assert cred.secret_access_key not in text
