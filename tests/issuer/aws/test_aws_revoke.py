"""Revoking iam-user canaries on a real moto server, and no orphan user when minting fails half-way."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from issuer.aws.gateway import AwsError
from tests.support.aws import canary_client, inspector, make_gateway


def _user_names(moto_url: str) -> set[str]:
    return {u["UserName"] for u in inspector(moto_url, "iam").list_users()["Users"]}


def _error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_revoke_deletes_key_policy_and_user(moto_url: str) -> None:
    gateway = make_gateway(moto_url)
    cred = gateway.mint("default")
    keep = gateway.mint("default")
    gateway.revoke(
        backend="iam-user",
        account="default",
        principal_name=cred.principal_name,
        access_key_id=cred.access_key_id,
    )
    iam = inspector(moto_url, "iam")
    with pytest.raises(ClientError) as gone:
        iam.get_user(UserName=cred.principal_name)
    assert _error_code(gone) == "NoSuchEntity"
    assert _user_names(moto_url) == {keep.principal_name}  # nothing else touched
    # The key itself is dead: AWS no longer knows whose it is.
    identity = canary_client(moto_url, "sts", cred).get_caller_identity()
    assert identity["Arn"] != cred.principal_arn


def test_revoke_is_idempotent(moto_url: str) -> None:
    gateway = make_gateway(moto_url)
    cred = gateway.mint("default")
    args = {
        "backend": "iam-user",
        "account": "default",
        "principal_name": cred.principal_name,
        "access_key_id": cred.access_key_id,
    }
    gateway.revoke(**args)
    gateway.revoke(**args)  # already gone: success, no error
    gateway.revoke(**{**args, "principal_name": "svc-backup-neverexisted"})
    assert _user_names(moto_url) == set()


def test_revoke_finishes_a_half_revoked_user(moto_url: str) -> None:
    gateway = make_gateway(moto_url)
    cred = gateway.mint("default")
    iam = inspector(moto_url, "iam")
    iam.delete_access_key(UserName=cred.principal_name, AccessKeyId=cred.access_key_id)  # a crash mid-revoke
    gateway.revoke(
        backend="iam-user",
        account="default",
        principal_name=cred.principal_name,
        access_key_id=cred.access_key_id,
    )
    assert _user_names(moto_url) == set()


def test_revoke_removes_what_someone_attached_to_the_user_since(moto_url: str) -> None:
    gateway = make_gateway(moto_url)
    cred = gateway.mint("default")
    iam = inspector(moto_url, "iam")
    policy_arn = iam.create_policy(
        PolicyName="read-only",
        PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:Get*","Resource":"*"}]}',
    )["Policy"]["Arn"]
    iam.attach_user_policy(UserName=cred.principal_name, PolicyArn=policy_arn)
    iam.create_group(GroupName="backup-operators")
    iam.add_user_to_group(UserName=cred.principal_name, GroupName="backup-operators")
    iam.create_login_profile(UserName=cred.principal_name, Password="Correct-Horse-9")
    gateway.revoke(
        backend="iam-user",
        account="default",
        principal_name=cred.principal_name,
        access_key_id=cred.access_key_id,
    )
    assert _user_names(moto_url) == set()
    assert iam.get_group(GroupName="backup-operators")["Users"] == []
    assert iam.get_policy(PolicyArn=policy_arn)["Policy"]["AttachmentCount"] == 0


def test_revoke_refuses_a_user_that_does_not_own_the_key(moto_url: str) -> None:
    gateway = make_gateway(moto_url)
    iam = inspector(moto_url, "iam")
    iam.create_user(UserName="svc-backup-realperson")
    real_key = iam.create_access_key(UserName="svc-backup-realperson")["AccessKey"]["AccessKeyId"]
    with pytest.raises(AwsError, match="refusing to delete IAM user 'svc-backup-realperson'"):
        gateway.revoke(
            backend="iam-user",
            account="default",
            principal_name="svc-backup-realperson",
            access_key_id="AKIAOTHERKEY00000000",
        )
    assert _user_names(moto_url) == {"svc-backup-realperson"}
    assert [
        k["AccessKeyId"] for k in iam.list_access_keys(UserName="svc-backup-realperson")["AccessKeyMetadata"]
    ] == [real_key]


def test_revoke_federation_is_a_no_op_and_bad_input_is_refused(moto_url: str) -> None:
    gateway = make_gateway(moto_url)
    iam_user = gateway.mint("default")
    gateway.revoke(
        backend="sts-federation", account="default", principal_name="svc-backup-x", access_key_id="ASIAX"
    )
    assert _user_names(moto_url) == {iam_user.principal_name}
    with pytest.raises(ValueError, match="backend 'iam-role'"):
        gateway.revoke(backend="iam-role", account="default", principal_name="x", access_key_id="AKIA")
    with pytest.raises(ValueError, match="not a valid IAM user name"):
        gateway.revoke(backend="iam-user", account="default", principal_name="", access_key_id="AKIA")
    with pytest.raises(ValueError, match="not a valid IAM user name"):
        gateway.revoke(backend="iam-user", account="default", principal_name="a/b", access_key_id="AKIA")


def _fail(operation: str) -> Any:
    def fail(**_: Any) -> Any:
        raise ClientError({"Error": {"Code": "ServiceFailure", "Message": "injected"}}, operation)

    return fail


@pytest.mark.parametrize(
    ("method", "operation"), [("create_access_key", "CreateAccessKey"), ("put_user_policy", "PutUserPolicy")]
)
def test_failure_after_create_user_leaves_no_orphan(
    moto_url: str, monkeypatch: pytest.MonkeyPatch, method: str, operation: str
) -> None:
    gateway = make_gateway(moto_url)
    iam = gateway.client("iam", "default", "us-east-1")
    created = []
    iam.meta.events.register("after-call.iam.CreateUser", lambda parsed, **_: created.append(parsed["User"]))
    monkeypatch.setattr(iam, method, _fail(operation))  # the one injected fault; moto serves the rest
    with pytest.raises(AwsError) as caught:
        gateway.mint("default")
    assert caught.value.code == "ServiceFailure"
    assert len(created) == 1  # the user really was created on the server...
    assert _user_names(moto_url) == set()  # ...and removed again


def test_failure_whose_cleanup_also_fails_names_the_orphan(
    moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = make_gateway(moto_url)
    iam = gateway.client("iam", "default", "us-east-1")
    monkeypatch.setattr(iam, "create_access_key", _fail("CreateAccessKey"))
    monkeypatch.setattr(iam, "delete_user", _fail("DeleteUser"))
    with pytest.raises(AwsError) as caught:
        gateway.mint("default")
    (orphan,) = _user_names(moto_url)
    assert f"delete IAM user {orphan!r} in account 'default' by hand" in str(caught.value)
    assert caught.value.code == "ServiceFailure"
