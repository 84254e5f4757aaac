"""Configuration, results and errors of AWS minting: plain data, no boto3 (see issuer/aws/gateway.py).

Exceptions: `AwsError` (every failure talking to AWS; its message never contains a secret)
├── `UnknownAccountError`  the account name is not in the configured pool
└── `AccountPoolFullError`  every account of the pool is at its per-account cap
Configuration mistakes raise `ValueError` when the config is built.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from dataclasses import dataclass, field
from typing import Any

BACKENDS = ("iam-user", "sts-federation")
# A principal name containing any of these tells an attacker the key is a trap.
FORBIDDEN_WORDS = ("canary", "honey", "trap", "tripkey", "decoy")
RANDOM_ID_LENGTH = 10
RANDOM_ID_ALPHABET = string.ascii_lowercase + string.digits
IAM_USER_NAME_MAX = 64
FEDERATED_NAME_MAX = 32
FEDERATION_MIN_SECONDS = 900
FEDERATION_MAX_SECONDS = 129_600  # 36 h, the AWS maximum for GetFederationToken
IAM_USER_QUOTA = 5_000
DEFAULT_PER_ACCOUNT_CAP = 4_900  # headroom under the quota for the account's real users
# IAM's own rule for user names, federated names, policy names: ASCII letters, digits and +=,.@_-
NAME_CHARS = re.compile(r"^[A-Za-z0-9_+=,.@-]+$")
_IAM_PATH = re.compile(r"^/(?:[\x21-\x7e]*/)?$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\x21-\x7e]+$")
_POLICY_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(?:\d{12}|aws):policy/[\x21-\x7e]+$")

# The whole point of the canary: any use is denied, explicitly, so no other policy can grant it.
DENY_ALL_POLICY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}],
}


def reject_forbidden_words(what: str, value: str) -> None:
    lowered = value.lower()
    for word in FORBIDDEN_WORDS:
        if word in lowered:
            raise ValueError(f"{what} {value!r} contains {word!r}, which would reveal the credential")


@dataclass(frozen=True)
class AccountConfig:
    """One AWS account of the pool and how the issuer reaches it.

    `profile`: a named profile of the issuer host's AWS config; `role_arn`: assume this role (from
    the profile's or the ambient credentials), refreshed before it expires; neither: ambient
    credentials (environment, instance role). `region` is the default region of `client()`.
    """

    name: str
    profile: str | None = None
    role_arn: str | None = None
    region: str = "us-east-1"
    external_id: str | None = None

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 100 or not self.name.isprintable():
            raise ValueError(f"account name {self.name!r} must be 1-100 printable characters")
        if self.role_arn is not None and not _ROLE_ARN.match(self.role_arn):
            raise ValueError(f"account {self.name!r}: role_arn {self.role_arn!r} is not an IAM role ARN")
        if self.external_id is not None and self.role_arn is None:
            raise ValueError(f"account {self.name!r}: external_id only makes sense with role_arn")
        if not self.region:
            raise ValueError(f"account {self.name!r}: region must not be empty")


@dataclass(frozen=True)
class MintingConfig:
    """How canary credentials are minted. Validated on construction (ValueError with the reason).

    `region` is where the minting calls (IAM, STS) are signed; `endpoint_url` points every client at
    an AWS-compatible endpoint (moto server in tests and the demo). `max_users_per_account` caps the
    canary IAM users of one account below the 5,000-users quota (`iam-user` only: federated sessions
    create nothing in IAM).
    """

    backend: str = "iam-user"
    name_prefix: str = "svc-backup-"
    permissions_boundary_arn: str | None = None
    iam_path: str = "/"
    federation_duration_seconds: int = FEDERATION_MAX_SECONDS
    accounts: tuple[AccountConfig, ...] = (AccountConfig("default"),)
    endpoint_url: str | None = None
    region: str = "us-east-1"
    max_users_per_account: int = DEFAULT_PER_ACCOUNT_CAP
    inline_policy_name: str = "backup-access-scope"

    def __post_init__(self) -> None:
        validate_config(self)


def validate_config(config: MintingConfig) -> None:
    """Raise ValueError naming the first problem of `config`."""
    if config.backend not in BACKENDS:
        raise ValueError(f"backend {config.backend!r} is not one of {', '.join(BACKENDS)}")
    max_name = IAM_USER_NAME_MAX if config.backend == "iam-user" else FEDERATED_NAME_MAX
    prefix = config.name_prefix
    if not prefix or not NAME_CHARS.match(prefix):
        raise ValueError(f"name_prefix {prefix!r} must be non-empty and use only A-Z a-z 0-9 _+=,.@-")
    if len(prefix) + RANDOM_ID_LENGTH > max_name:
        raise ValueError(
            f"name_prefix {prefix!r} is too long: {config.backend} names are at most {max_name} characters"
            f" and {RANDOM_ID_LENGTH} go to the random id"
        )
    reject_forbidden_words("name_prefix", prefix)
    if len(config.iam_path) > 512 or not _IAM_PATH.match(config.iam_path):
        raise ValueError(f"iam_path {config.iam_path!r} must start and end with '/' (e.g. '/' or '/svc/')")
    reject_forbidden_words("iam_path", config.iam_path)
    if not NAME_CHARS.match(config.inline_policy_name) or len(config.inline_policy_name) > 128:
        raise ValueError(f"inline_policy_name {config.inline_policy_name!r} is not a valid policy name")
    reject_forbidden_words("inline_policy_name", config.inline_policy_name)
    boundary = config.permissions_boundary_arn
    if boundary is not None and not _POLICY_ARN.match(boundary):
        raise ValueError(f"permissions_boundary_arn {boundary!r} is not an IAM managed policy ARN")
    duration = config.federation_duration_seconds
    if not FEDERATION_MIN_SECONDS <= duration <= FEDERATION_MAX_SECONDS:
        raise ValueError(
            f"federation_duration_seconds {duration} must be between {FEDERATION_MIN_SECONDS} (15 min)"
            f" and {FEDERATION_MAX_SECONDS} (36 h)"
        )
    if not 1 <= config.max_users_per_account <= IAM_USER_QUOTA:
        raise ValueError(f"max_users_per_account must be between 1 and {IAM_USER_QUOTA}")
    if not config.accounts:
        raise ValueError("accounts must name at least one account")
    names = [account.name for account in config.accounts]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"account names must be unique; repeated: {', '.join(duplicates)}")
    if not config.region:
        raise ValueError("region must not be empty")


@dataclass(frozen=True)
class MintedCredential:
    """A freshly minted canary. The secret and session token are hidden from repr and str."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(repr=False)
    expires_at: dt.datetime | None
    backend: str
    account: str
    account_id: str | None
    principal_name: str
    principal_arn: str | None


class AwsError(Exception):
    """A call to AWS failed. The message says what, where and why; it never contains a secret."""

    def __init__(self, message: str, *, code: str | None = None, account: str | None = None) -> None:
        super().__init__(message)
        self.code = code  # the AWS error code (e.g. "AccessDenied"), when AWS sent one
        self.account = account


class UnknownAccountError(AwsError):
    """The account name is not in the configured pool."""


class AccountPoolFullError(AwsError):
    """Every account of the pool holds as many canary users as its cap allows."""


def minting_config_from_mapping(data: dict[str, Any]) -> MintingConfig:
    """Build a MintingConfig from parsed TOML/JSON (accounts as a list of tables); unknown keys are errors."""
    known = set(MintingConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown minting setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    values = dict(data)
    if "accounts" in values:
        accounts = []
        account_keys = set(AccountConfig.__dataclass_fields__)
        for entry in values["accounts"]:
            if not isinstance(entry, dict) or "name" not in entry:
                raise ValueError(f"each account needs at least a name, got {entry!r}")
            extra = sorted(set(entry) - account_keys)
            if extra:
                raise ValueError(f"account {entry['name']!r}: unknown setting(s) {', '.join(extra)}")
            accounts.append(AccountConfig(**entry))
        values["accounts"] = tuple(accounts)
    return MintingConfig(**values)
