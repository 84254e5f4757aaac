"""sts-federation canaries on a real moto server: deny-all session policy, expiry, short names."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from issuer.aws.gateway import DENY_ALL_POLICY, FEDERATED_NAME_MAX, MintingConfig
from tests.support.aws import DEFAULT_ACCOUNT_ID, inspector, make_gateway, record_calls


def test_federation_token_has_deny_all_session_policy_and_expiry(moto_url: str) -> None:
    gateway = make_gateway(moto_url, backend="sts-federation")
    sent = record_calls(gateway.client("sts", "default", "us-east-1"), "GetFederationToken")
    before = dt.datetime.now(dt.UTC)
    cred = gateway.mint("default")

    assert len(sent) == 1
    assert json.loads(sent[0]["Policy"]) == DENY_ALL_POLICY
    assert int(sent[0]["DurationSeconds"]) == 129_600
    assert sent[0]["Name"] == cred.principal_name

    assert cred.backend == "sts-federation"
    assert cred.session_token
    assert cred.secret_access_key
    assert cred.access_key_id
    assert cred.expires_at is not None
    assert cred.expires_at.tzinfo is not None
    expected = before + dt.timedelta(seconds=129_600)
    assert abs((cred.expires_at - expected).total_seconds()) < 120
    assert len(cred.principal_name) <= FEDERATED_NAME_MAX
    assert re.fullmatch(r"svc-backup-[a-z0-9]{10}", cred.principal_name)
    assert cred.principal_arn == f"arn:aws:sts::{DEFAULT_ACCOUNT_ID}:federated-user/{cred.principal_name}"
    assert cred.account_id == DEFAULT_ACCOUNT_ID
    assert cred.session_token not in repr(cred)
    assert cred.secret_access_key not in repr(cred)
    # Nothing was created in IAM: federated sessions do not count against the users quota.
    assert inspector(moto_url, "iam").list_users()["Users"] == []


def test_configured_duration_is_used(moto_url: str) -> None:
    gateway = make_gateway(moto_url, backend="sts-federation", federation_duration_seconds=3600)
    before = dt.datetime.now(dt.UTC)
    cred = gateway.mint("default")
    assert cred.expires_at is not None
    assert abs((cred.expires_at - before).total_seconds() - 3600) < 120


def test_duration_over_36_hours_is_rejected() -> None:
    with pytest.raises(ValueError, match="36 h"):
        MintingConfig(backend="sts-federation", federation_duration_seconds=36 * 3600 + 1)


def test_federated_names_stay_within_32_chars_with_the_longest_prefix(moto_url: str) -> None:
    prefix = "backup.sync@svc-" + "x" * 6  # 22 characters, the longest allowed
    gateway = make_gateway(moto_url, backend="sts-federation", name_prefix=prefix)
    cred = gateway.mint("default")
    assert len(cred.principal_name) == FEDERATED_NAME_MAX
    assert cred.principal_name.startswith(prefix)
