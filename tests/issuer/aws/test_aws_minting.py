"""issuer/aws/gateway.py mints iam-user canaries on a real moto server; names, policy, secrets, clients."""

from __future__ import annotations

import getpass
import logging
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError

from issuer.aws import gateway as aws
from issuer.aws.gateway import DENY_ALL_POLICY, FORBIDDEN_WORDS, AwsError, UnknownAccountError
from tests.support.aws import DEFAULT_ACCOUNT_ID, canary_client, inspector, make_gateway, record_calls


def test_iam_user_canary_has_explicit_deny_inline_policy_and_one_key(moto_url: str) -> None:
    gateway = make_gateway(moto_url)
    cred = gateway.mint("default")

    iam = inspector(moto_url, "iam")
    user = iam.get_user(UserName=cred.principal_name)["User"]
    assert (
        user["Arn"] == cred.principal_arn == f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:user/{cred.principal_name}"
    )
    assert user["Path"] == "/"
    assert iam.list_user_policies(UserName=cred.principal_name)["PolicyNames"] == ["backup-access-scope"]
    document = iam.get_user_policy(UserName=cred.principal_name, PolicyName="backup-access-scope")[
        "PolicyDocument"
    ]
    assert document == DENY_ALL_POLICY
    assert document["Statement"] == [{"Effect": "Deny", "Action": "*", "Resource": "*"}]
    keys = iam.list_access_keys(UserName=cred.principal_name)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [cred.access_key_id]
    assert iam.list_attached_user_policies(UserName=cred.principal_name)["AttachedPolicies"] == []
    # Tags would show up to anyone who can read the user: a canary carries none.
    assert iam.list_user_tags(UserName=cred.principal_name)["Tags"] == []

    assert cred.backend == "iam-user"
    assert cred.account == "default"
    assert cred.account_id == DEFAULT_ACCOUNT_ID
    assert cred.session_token is None
    assert cred.expires_at is None
    assert cred.access_key_id.startswith("AKIA")
    assert len(cred.secret_access_key) >= 20


def test_minted_key_is_a_real_key_of_that_user(moto_url: str) -> None:
    cred = make_gateway(moto_url).mint("default")
    identity = canary_client(moto_url, "sts", cred).get_caller_identity()
    assert identity["Arn"] == cred.principal_arn
    assert identity["Account"] == DEFAULT_ACCOUNT_ID


def test_iam_path_and_policy_name_are_configurable(moto_url: str) -> None:
    gateway = make_gateway(moto_url, iam_path="/service/backup/", inline_policy_name="s3-sync-limits")
    cred = gateway.mint("default")
    iam = inspector(moto_url, "iam")
    assert iam.get_user(UserName=cred.principal_name)["User"]["Path"] == "/service/backup/"
    assert iam.list_user_policies(UserName=cred.principal_name)["PolicyNames"] == ["s3-sync-limits"]


def test_permissions_boundary_is_sent_with_create_user(moto_url: str) -> None:
    # moto 5 accepts but does not store a user's PermissionsBoundary (GetUser never returns one),
    # so the test reads the CreateUser request the real client put on the wire.
    boundary = "arn:aws:iam::123456789012:policy/deny-everything-boundary"
    gateway = make_gateway(moto_url, permissions_boundary_arn=boundary)
    sent = record_calls(gateway.client("iam", "default", "us-east-1"), "CreateUser")
    cred = gateway.mint("default")
    assert [call.get("PermissionsBoundary") for call in sent] == [boundary]
    assert sent[0]["UserName"] == cred.principal_name


def test_no_permissions_boundary_unless_configured(moto_url: str) -> None:
    gateway = make_gateway(moto_url)
    sent = record_calls(gateway.client("iam", "default", "us-east-1"), "CreateUser")
    gateway.mint("default")
    assert len(sent) == 1
    assert "PermissionsBoundary" not in sent[0]
    assert not any(key.startswith("Tags") for key in sent[0])


def test_principal_names_are_prefix_plus_random_id_and_reveal_nothing(moto_url: str) -> None:
    gateway = make_gateway(moto_url)
    creds = [gateway.mint("default") for _ in range(5)]
    names = [c.principal_name for c in creds]
    assert len(set(names)) == 5
    host = socket.gethostname().lower()
    user = getpass.getuser().lower()
    for name in names:
        assert re.fullmatch(r"svc-backup-[a-z0-9]{10}", name), name
        assert not any(word in name for word in FORBIDDEN_WORDS)
        if len(host) >= 4:
            assert host not in name
        if len(user) >= 4:
            assert user not in name
    listed = {u["UserName"] for u in inspector(moto_url, "iam").list_users()["Users"]}
    assert listed == set(names)


def test_random_id_that_would_spell_a_forbidden_word_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter(["nary123456", "x1y2z3w4v5"])  # "svc-ca" + "nary..." would read "canary"
    monkeypatch.setattr(aws, "random_id", lambda: next(draws))
    gateway = aws.AwsGateway(aws.MintingConfig(name_prefix="svc-ca"))
    assert gateway.new_principal_name() == "svc-cax1y2z3w4v5"


def test_name_collision_with_an_existing_user_picks_another_name(
    moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inspector(moto_url, "iam").create_user(UserName="svc-backup-aaaaaaaaaa")
    draws = iter(["aaaaaaaaaa", "bbbbbbbbbb"])
    monkeypatch.setattr(aws, "random_id", lambda: next(draws))
    cred = make_gateway(moto_url).mint("default")
    assert cred.principal_name == "svc-backup-bbbbbbbbbb"


def test_repr_and_str_never_show_the_secret(moto_url: str) -> None:
    cred = make_gateway(moto_url).mint("default")
    for text in (repr(cred), str(cred), f"{cred}", f"{cred!r}"):
        assert cred.secret_access_key not in text
        assert cred.access_key_id in text
    assert "secret_access_key" not in repr(cred)
    assert "session_token" not in repr(cred)


def test_botocore_debug_log_never_carries_the_secret(moto_url: str, caplog: pytest.LogCaptureFixture) -> None:
    gateway = make_gateway(moto_url)
    with caplog.at_level(logging.DEBUG):
        cred = gateway.mint("default")
    text = caplog.text
    assert "CreateAccessKey" in text  # botocore did log the exchange at DEBUG...
    assert "<SecretAccessKey><redacted></SecretAccessKey>" in text  # ...with the body scrubbed
    assert cred.secret_access_key not in text
    assert cred.access_key_id in text  # the key id is not a secret and helps responders


def test_client_is_cached_per_account_service_and_region(moto_url: str) -> None:
    gateway = make_gateway(moto_url)
    sqs = gateway.client("sqs")
    assert gateway.client("sqs", "default") is sqs
    assert gateway.client("sqs", "default", "us-east-1") is sqs
    other_region = gateway.client("sqs", "default", "eu-west-1")
    assert other_region is not sqs
    assert other_region.meta.region_name == "eu-west-1"
    assert sqs.meta.endpoint_url == moto_url
    # The client really talks to the endpoint: a queue made through it is there.
    url = sqs.create_queue(QueueName="events")["QueueUrl"]
    assert url in inspector(moto_url, "sqs").list_queues()["QueueUrls"]


def test_account_id_comes_from_sts(moto_url: str) -> None:
    assert make_gateway(moto_url).account_id("default") == DEFAULT_ACCOUNT_ID


def test_unknown_account_is_a_clear_error(moto_url: str) -> None:
    gateway = make_gateway(moto_url)
    for call in (
        lambda: gateway.mint("prod"),
        lambda: gateway.client("iam", "prod"),
        lambda: gateway.account_id("prod"),
        lambda: gateway.revoke(backend="iam-user", account="prod", principal_name="x", access_key_id="AKIA1"),
    ):
        with pytest.raises(
            UnknownAccountError, match=r"account 'prod' is not in the configured pool \(default\)"
        ):
            call()


def test_aws_failure_becomes_aws_error_with_code_and_no_secret(
    moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = make_gateway(moto_url)
    iam = gateway.client("iam", "default", "us-east-1")

    def refuse(**_: Any) -> Any:
        raise ClientError(
            {"Error": {"Code": "LimitExceeded", "Message": "Cannot exceed quota for UsersPerAccount: 5000"}},
            "CreateUser",
        )

    monkeypatch.setattr(iam, "create_user", refuse)
    with pytest.raises(AwsError) as caught:
        gateway.mint("default")
    assert caught.value.code == "LimitExceeded"
    assert caught.value.account == "default"
    assert "iam:CreateUser svc-backup-" in str(caught.value)
    assert "Cannot exceed quota for UsersPerAccount" in str(caught.value)


def test_unreachable_endpoint_is_an_aws_error_not_a_hang() -> None:
    gateway = aws.AwsGateway(aws.MintingConfig(endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(AwsError, match=r"iam:CreateUser .* in account 'default' failed: Could not connect"):
        gateway.mint("default")


def test_concurrent_mints_from_many_threads_each_get_their_own_user(moto_url: str) -> None:
    gateway = make_gateway(moto_url)
    with ThreadPoolExecutor(max_workers=8) as pool:
        creds = list(pool.map(lambda _: gateway.mint("default"), range(16)))
    assert len({c.principal_name for c in creds}) == 16
    assert len({c.access_key_id for c in creds}) == 16
    listed = {u["UserName"] for u in inspector(moto_url, "iam").list_users()["Users"]}
    assert listed == {c.principal_name for c in creds}
