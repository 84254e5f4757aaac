"""MintingConfig/AccountConfig validation, principal-name rules and account picking (no AWS needed)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from issuer.aws.gateway import (
    FEDERATED_NAME_MAX,
    FORBIDDEN_WORDS,
    IAM_USER_NAME_MAX,
    AccountConfig,
    AccountPoolFullError,
    AwsError,
    AwsGateway,
    MintingConfig,
    minting_config_from_mapping,
)

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+=,.@-"
FEDERATED_NAME = re.compile(r"^[\w+=,.@-]{2,32}$", re.ASCII)


def _clean(prefix: str) -> bool:
    return not any(word in prefix.lower() for word in FORBIDDEN_WORDS)


@settings(max_examples=200, deadline=None)
@given(prefix=st.text(alphabet=NAME_CHARS, min_size=1, max_size=IAM_USER_NAME_MAX - 10).filter(_clean))
def test_iam_user_names_follow_the_rules_for_any_valid_prefix(prefix: str) -> None:
    name = AwsGateway(MintingConfig(name_prefix=prefix)).new_principal_name()
    assert name.startswith(prefix)
    assert re.fullmatch(r"[a-z0-9]{10}", name[len(prefix) :])
    assert len(name) <= IAM_USER_NAME_MAX
    assert re.fullmatch(r"[\w+=,.@-]+", name, re.ASCII)
    assert not any(word in name.lower() for word in FORBIDDEN_WORDS)


@settings(max_examples=200, deadline=None)
@given(prefix=st.text(alphabet=NAME_CHARS, min_size=1, max_size=FEDERATED_NAME_MAX - 10).filter(_clean))
def test_federated_names_fit_32_chars_of_the_allowed_set(prefix: str) -> None:
    name = AwsGateway(MintingConfig(backend="sts-federation", name_prefix=prefix)).new_principal_name()
    assert FEDERATED_NAME.fullmatch(name), name
    assert not any(word in name.lower() for word in FORBIDDEN_WORDS)


@settings(max_examples=100, deadline=None)
@given(
    before=st.text(alphabet="abc-_0123", max_size=6),
    word=st.sampled_from(FORBIDDEN_WORDS),
    after=st.text(alphabet="abc-_0123", max_size=6),
    upper=st.booleans(),
)
def test_prefix_with_a_revealing_word_is_rejected_in_any_case(
    before: str, word: str, after: str, upper: bool
) -> None:
    prefix = before + (word.upper() if upper else word) + after
    with pytest.raises(ValueError, match="would reveal the credential"):
        MintingConfig(name_prefix=prefix)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backend": "iam-role"}, "backend 'iam-role' is not one of iam-user, sts-federation"),
        ({"name_prefix": ""}, "must be non-empty"),
        ({"name_prefix": "svc backup-"}, "only A-Z a-z 0-9"),
        ({"name_prefix": "svc-bäckup-"}, "only A-Z a-z 0-9"),
        ({"name_prefix": "svc/backup-"}, "only A-Z a-z 0-9"),
        ({"name_prefix": "x" * 55}, "too long: iam-user names are at most 64"),
        (
            {"backend": "sts-federation", "name_prefix": "x" * 23},
            "too long: sts-federation names are at most 32",
        ),
        ({"iam_path": "service"}, "must start and end with '/'"),
        ({"iam_path": "/service"}, "must start and end with '/'"),
        ({"iam_path": "/honeypot/"}, "iam_path '/honeypot/' contains 'honey'"),
        ({"inline_policy_name": "canary-deny"}, "contains 'canary'"),
        ({"inline_policy_name": "deny all"}, "not a valid policy name"),
        ({"permissions_boundary_arn": "deny-boundary"}, "not an IAM managed policy ARN"),
        ({"federation_duration_seconds": 899}, "between 900 .* and 129600"),
        ({"federation_duration_seconds": 129_601}, "between 900 .* and 129600"),
        ({"federation_duration_seconds": 36 * 3600 + 1}, r"\(36 h\)"),
        ({"max_users_per_account": 0}, "between 1 and 5000"),
        ({"max_users_per_account": 5001}, "between 1 and 5000"),
        ({"accounts": ()}, "at least one account"),
        ({"accounts": (AccountConfig("a"), AccountConfig("b"), AccountConfig("a"))}, "repeated: a"),
        ({"region": ""}, "region must not be empty"),
    ],
)
def test_bad_config_is_refused_with_the_reason(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MintingConfig(**overrides)  # type: ignore[arg-type]


def test_gateway_validates_again_even_if_the_dataclass_was_bypassed() -> None:
    config = MintingConfig()
    object.__setattr__(config, "backend", "root-keys")  # e.g. built by a careless copy
    with pytest.raises(ValueError, match="backend 'root-keys'"):
        AwsGateway(config)


@pytest.mark.parametrize("duration", [900, 3600, 129_600])
def test_federation_durations_inside_the_aws_range_are_accepted(duration: int) -> None:
    assert MintingConfig(backend="sts-federation", federation_duration_seconds=duration)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "1-100 printable"),
        ({"name": "a\nb"}, "1-100 printable"),
        ({"name": "x" * 101}, "1-100 printable"),
        ({"name": "a", "role_arn": "arn:aws:iam::12345:role/x"}, "not an IAM role ARN"),
        ({"name": "a", "role_arn": "arn:aws:iam::123456789012:user/x"}, "not an IAM role ARN"),
        ({"name": "a", "external_id": "e"}, "external_id only makes sense with role_arn"),
        ({"name": "a", "region": ""}, "region must not be empty"),
    ],
)
def test_bad_account_is_refused(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AccountConfig(**kwargs)


def test_good_account_shapes() -> None:
    AccountConfig("prod", role_arn="arn:aws:iam::210987654321:role/issuer", external_id="x-1")
    AccountConfig("gov", role_arn="arn:aws-us-gov:iam::210987654321:role/path/issuer")
    AccountConfig("local", profile="canaries-admin", region="eu-west-1")


def _pool(*names: str, cap: int = 4_900, backend: str = "iam-user") -> AwsGateway:
    return AwsGateway(
        MintingConfig(
            backend=backend, accounts=tuple(AccountConfig(n) for n in names), max_users_per_account=cap
        )
    )


def test_pick_account_prefers_the_least_used_then_config_order() -> None:
    gateway = _pool("a", "b", "c")
    assert gateway.pick_account({}) == "a"
    assert gateway.pick_account({"a": 1}) == "b"
    assert gateway.pick_account({"a": 1, "b": 1}) == "c"
    assert gateway.pick_account({"a": 3, "b": 2, "c": 5}) == "b"
    assert gateway.pick_account({"a": 2, "b": 2, "c": 2}) == "a"
    assert gateway.pick_account({"retired-account": 0, "a": 1, "b": 1, "c": 1}) == "a"


def test_pick_account_spreads_evenly_over_many_mints() -> None:
    gateway = _pool("a", "b", "c")
    counts: dict[str, int] = {}
    for _ in range(300):
        chosen = gateway.pick_account(counts)
        counts[chosen] = counts.get(chosen, 0) + 1
    assert counts == {"a": 100, "b": 100, "c": 100}


def test_default_cap_leaves_headroom_under_the_iam_quota() -> None:
    gateway = _pool("a", "b")
    assert gateway.pick_account({"a": 4_899, "b": 4_950}) == "a"
    with pytest.raises(AccountPoolFullError):
        gateway.pick_account({"a": 4_900, "b": 4_950})


def test_full_pool_is_refused_with_advice() -> None:
    gateway = _pool("a", "b", cap=2)
    assert gateway.pick_account({"a": 2, "b": 1}) == "b"
    with pytest.raises(
        AccountPoolFullError, match=r"every account of the pool \(a, b\) holds 2 or more"
    ) as e:
        gateway.pick_account({"a": 2, "b": 7})
    assert isinstance(e.value, AwsError)
    assert "add an account" in str(e.value)


def test_cap_does_not_apply_to_federation_which_creates_no_users() -> None:
    gateway = _pool("a", "b", cap=2, backend="sts-federation")
    assert gateway.pick_account({"a": 10_000, "b": 9_999}) == "b"


def test_config_from_parsed_toml() -> None:
    config = minting_config_from_mapping(
        {
            "backend": "sts-federation",
            "federation_duration_seconds": 7200,
            "accounts": [
                {"name": "main"},
                {
                    "name": "second",
                    "role_arn": "arn:aws:iam::222222222222:role/issuer",
                    "region": "eu-west-1",
                },
            ],
        }
    )
    assert config.backend == "sts-federation"
    assert config.accounts == (
        AccountConfig("main"),
        AccountConfig("second", role_arn="arn:aws:iam::222222222222:role/issuer", region="eu-west-1"),
    )
    assert minting_config_from_mapping({}) == MintingConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"backnd": "iam-user"}, "unknown minting setting.*backnd"),
        ({"accounts": [{"profile": "x"}]}, "needs at least a name"),
        ({"accounts": ["main"]}, "needs at least a name"),
        ({"accounts": [{"name": "a", "rol_arn": "x"}]}, "account 'a': unknown setting.*rol_arn"),
        ({"accounts": [{"name": "a", "role_arn": "x"}]}, "not an IAM role ARN"),
    ],
)
def test_config_from_mapping_refuses_typos(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        minting_config_from_mapping(data)
