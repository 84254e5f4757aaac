"""The issuer's only door to AWS: minting, revoking and per-account boto3 clients.

This is the one module of the issuer that imports boto3 (a test enforces it). Everything else talks
to AWS through `AwsGateway`:

- `mint(account)` creates one canary credential in one account of the pool:
  * ``iam-user`` (default): an IAM user with an inline policy that explicitly denies every action,
    plus one access key. Long-term; `GetAccessKeyLastUsed` works on it as a safety net.
  * ``sts-federation`` (opt-in for large fleets): `GetFederationToken` with a deny-all session
    policy; short-term (≤ 36 h), nothing is created in IAM, so the 5,000-users quota does not apply.
- `revoke(...)` deletes what `mint` created (idempotent).
- `client(service, account)` hands detection pollers a cached boto3 client for an account.

Principal names are a plausible prefix plus a random id: never the hostname, never the user name,
never a word that gives the canary away. The secret access key lives only in the returned
`MintedCredential` (hidden from its repr) and is scrubbed from botocore's debug log (issuer/aws/scrub.py).

The configuration dataclasses, `MintedCredential` and the exception tree live in issuer/aws/config.py
(plain data, importable without boto3) and are re-exported here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError

from issuer.aws.config import (
    BACKENDS,
    DENY_ALL_POLICY,
    FEDERATED_NAME_MAX,
    FEDERATION_MAX_SECONDS,
    FEDERATION_MIN_SECONDS,
    FORBIDDEN_WORDS,
    IAM_USER_NAME_MAX,
    IAM_USER_QUOTA,
    NAME_CHARS,
    RANDOM_ID_ALPHABET,
    RANDOM_ID_LENGTH,
    AccountConfig,
    AccountPoolFullError,
    AwsError,
    MintedCredential,
    MintingConfig,
    UnknownAccountError,
    minting_config_from_mapping,
    reject_forbidden_words,
    validate_config,
)
from issuer.aws.scrub import install_secret_scrubber

__all__ = [
    "BACKENDS",
    "DENY_ALL_POLICY",
    "FEDERATED_NAME_MAX",
    "FEDERATION_MAX_SECONDS",
    "FEDERATION_MIN_SECONDS",
    "FORBIDDEN_WORDS",
    "IAM_USER_NAME_MAX",
    "AccountConfig",
    "AccountPoolFullError",
    "AwsError",
    "AwsGateway",
    "MintedCredential",
    "MintingConfig",
    "UnknownAccountError",
    "minting_config_from_mapping",
    "validate_config",
]

log = logging.getLogger(__name__)

_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=30)
_ROLE_SESSION_NAME = "credential-issuer"


@contextlib.contextmanager
def _aws_call(what: str, account: str) -> Iterator[None]:
    """Turn botocore's exceptions into AwsError with a message a person can act on."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        detail = str(error.get("Message") or "").strip()
        raise AwsError(
            f"{what} in account {account!r} failed: {code}" + (f": {detail}" if detail else ""),
            code=code,
            account=account,
        ) from exc
    except BotoCoreError as exc:
        raise AwsError(f"{what} in account {account!r} failed: {exc}", account=account) from exc


def random_id() -> str:
    """RANDOM_ID_LENGTH lowercase letters and digits from the OS's CSPRNG (36^10 ≈ 3.7e15 names)."""
    return "".join(secrets.choice(RANDOM_ID_ALPHABET) for _ in range(RANDOM_ID_LENGTH))


def _account_id_from_arn(arn: str | None) -> str | None:
    parts = (arn or "").split(":")
    return parts[4] if len(parts) > 5 and parts[4].isdigit() else None


class AwsGateway:
    """Mints and revokes canaries across an account pool; hands out cached boto3 clients."""

    def __init__(self, config: MintingConfig) -> None:
        validate_config(config)
        self.config = config
        self._accounts = {account.name: account for account in config.accounts}
        self._lock = threading.RLock()
        self._sessions: dict[str, boto3.Session] = {}
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._account_ids: dict[str, str] = {}
        install_secret_scrubber()

    @property
    def account_names(self) -> tuple[str, ...]:
        return tuple(self._accounts)

    # ----------------------------------------------------------------- account pool

    def pick_account(self, active_counts: dict[str, int]) -> str:
        """The least-used account of the pool (ties: configuration order).

        `active_counts` maps account name → live canary credentials there (missing names count 0).
        With `iam-user`, accounts at or over `max_users_per_account` are skipped; if none is left,
        AccountPoolFullError says to add an account or raise the cap.
        """
        cap = self.config.max_users_per_account if self.config.backend == "iam-user" else None
        candidates = [
            (active_counts.get(name, 0), index, name)
            for index, name in enumerate(self._accounts)
            if cap is None or active_counts.get(name, 0) < cap
        ]
        if not candidates:
            raise AccountPoolFullError(
                f"every account of the pool ({', '.join(self._accounts)}) holds {cap} or more canary "
                f"IAM users (the per-account cap, under AWS's {IAM_USER_QUOTA}-user quota): add an "
                f"account to the pool, revoke unused credentials, or switch to sts-federation"
            )
        return min(candidates)[2]

    def _account(self, name: str) -> AccountConfig:
        try:
            return self._accounts[name]
        except KeyError:
            raise UnknownAccountError(
                f"account {name!r} is not in the configured pool ({', '.join(self._accounts)})", account=name
            ) from None

    # ----------------------------------------------------------------- sessions and clients

    def client(self, service: str, account: str | None = None, region: str | None = None) -> Any:
        """A cached boto3 client for `service` in `account` (default: the first of the pool).

        Honors `endpoint_url`. Role accounts use credentials that re-assume the role before expiry.
        """
        acct = self._account(account if account is not None else next(iter(self._accounts)))
        key = (acct.name, service, region or acct.region)
        with self._lock:
            cached = self._clients.get(key)
            if cached is None:
                session = self._session(acct)
                with _aws_call(f"creating a {service} client", acct.name):
                    cached = session.client(
                        service,
                        region_name=key[2],
                        endpoint_url=self.config.endpoint_url,
                        config=_CLIENT_CONFIG,
                    )
                self._clients[key] = cached
            return cached

    def _session(self, acct: AccountConfig) -> boto3.Session:
        session = self._sessions.get(acct.name)
        if session is None:
            with _aws_call(f"loading credentials (profile {acct.profile!r})", acct.name):
                base = boto3.Session(profile_name=acct.profile, region_name=acct.region)
            session = base if acct.role_arn is None else self._assumed_role_session(acct, base)
            self._sessions[acct.name] = session
        return session

    def _assumed_role_session(self, acct: AccountConfig, base: boto3.Session) -> boto3.Session:
        assert acct.role_arn is not None
        sts = base.client("sts", endpoint_url=self.config.endpoint_url, config=_CLIENT_CONFIG)

        def assume() -> dict[str, str]:
            kwargs: dict[str, Any] = {"RoleArn": acct.role_arn, "RoleSessionName": _ROLE_SESSION_NAME}
            if acct.external_id:
                kwargs["ExternalId"] = acct.external_id
            with _aws_call(f"sts:AssumeRole {acct.role_arn}", acct.name):
                creds = sts.assume_role(**kwargs)["Credentials"]
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": creds["Expiration"].astimezone(dt.UTC).isoformat(),
            }

        # botocore refreshes these 15 minutes before expiry by calling `assume` again.
        credentials = RefreshableCredentials.create_from_metadata(
            metadata=assume(), refresh_using=assume, method="sts-assume-role"
        )
        core = botocore.session.get_session()
        core._credentials = credentials  # botocore has no public setter for refreshable credentials
        return boto3.Session(botocore_session=core, region_name=acct.region)

    def account_id(self, account: str) -> str:
        """The 12-digit id of `account` (sts:GetCallerIdentity, cached)."""
        acct = self._account(account)
        with self._lock:
            if acct.name not in self._account_ids:
                sts = self.client("sts", acct.name, self.config.region)
                with _aws_call("sts:GetCallerIdentity", acct.name):
                    self._account_ids[acct.name] = str(sts.get_caller_identity()["Account"])
            return self._account_ids[acct.name]

    # ----------------------------------------------------------------- minting

    def new_principal_name(self) -> str:
        """Prefix + random lowercase id; retried until no forbidden word appears across the seam."""
        while True:
            name = self.config.name_prefix + random_id()
            try:
                reject_forbidden_words("principal name", name)
            except ValueError:
                continue
            return name

    def mint(self, account: str) -> MintedCredential:
        """Mint one canary credential in `account` with the configured backend."""
        acct = self._account(account)
        if self.config.backend == "iam-user":
            return self._mint_iam_user(acct)
        return self._mint_federation_token(acct)

    def _mint_iam_user(self, acct: AccountConfig) -> MintedCredential:
        iam = self.client("iam", acct.name, self.config.region)
        for _attempt in range(5):
            name = self.new_principal_name()
            params: dict[str, Any] = {"UserName": name, "Path": self.config.iam_path}
            if self.config.permissions_boundary_arn:
                params["PermissionsBoundary"] = self.config.permissions_boundary_arn
            try:
                with _aws_call(f"iam:CreateUser {name}", acct.name):
                    user = iam.create_user(**params)["User"]
                break
            except AwsError as exc:
                if exc.code != "EntityAlreadyExists":
                    raise
        else:
            raise AwsError(f"iam:CreateUser kept colliding with existing names in account {acct.name!r}")
        try:
            with _aws_call(f"iam:PutUserPolicy on {name}", acct.name):
                iam.put_user_policy(
                    UserName=name,
                    PolicyName=self.config.inline_policy_name,
                    PolicyDocument=json.dumps(DENY_ALL_POLICY),
                )
            with _aws_call(f"iam:CreateAccessKey for {name}", acct.name):
                key = iam.create_access_key(UserName=name)["AccessKey"]
        except BaseException as exc:
            # Never leave a half-made user behind: without its deny policy it would be a live principal.
            try:
                self._delete_iam_user(iam, acct.name, name, access_key_id=None)
            except AwsError as cleanup:
                log.error(
                    "could not remove half-made IAM user %s in account %s: %s", name, acct.name, cleanup
                )
                raise AwsError(
                    f"{exc}; cleaning up failed too: delete IAM user {name!r} in account"
                    f" {acct.name!r} by hand",
                    code=getattr(exc, "code", None),
                    account=acct.name,
                ) from exc
            raise
        arn = user.get("Arn")
        log.info("minted iam-user %s (key %s) in account %s", name, key["AccessKeyId"], acct.name)
        return MintedCredential(
            access_key_id=key["AccessKeyId"],
            secret_access_key=key["SecretAccessKey"],
            session_token=None,
            expires_at=None,
            backend="iam-user",
            account=acct.name,
            account_id=_account_id_from_arn(arn),
            principal_name=name,
            principal_arn=arn,
        )

    def _mint_federation_token(self, acct: AccountConfig) -> MintedCredential:
        """GetFederationToken with a deny-all session policy.

        AWS only issues federation tokens to long-term IAM user credentials (not to a role session;
        the root user is limited to 1 h), so a federation account needs a `profile` or ambient
        credentials of an IAM user allowed `sts:GetFederationToken`, and no `role_arn`. The effective
        permissions are the intersection of that user's policies and the session policy: nothing.
        """
        sts = self.client("sts", acct.name, self.config.region)
        name = self.new_principal_name()
        with _aws_call(f"sts:GetFederationToken {name}", acct.name):
            response = sts.get_federation_token(
                Name=name,
                Policy=json.dumps(DENY_ALL_POLICY),
                DurationSeconds=self.config.federation_duration_seconds,
            )
        creds = response["Credentials"]
        arn = response.get("FederatedUser", {}).get("Arn")
        log.info("minted sts-federation %s (key %s) in account %s", name, creds["AccessKeyId"], acct.name)
        return MintedCredential(
            access_key_id=creds["AccessKeyId"],
            secret_access_key=creds["SecretAccessKey"],
            session_token=creds["SessionToken"],
            expires_at=creds["Expiration"].astimezone(dt.UTC),
            backend="sts-federation",
            account=acct.name,
            account_id=_account_id_from_arn(arn),
            principal_name=name,
            principal_arn=arn,
        )

    # ----------------------------------------------------------------- revoking

    def revoke(self, *, backend: str, account: str, principal_name: str, access_key_id: str) -> None:
        """Make a minted credential unusable, idempotently.

        ``iam-user``: delete the user's access keys, inline and attached policies, group memberships
        and login profile, then the user; a user that is already gone is success. Refuses (AwsError)
        to delete a user that still holds keys but not `access_key_id`: that is not our canary.
        ``sts-federation``: nothing to delete. AWS cannot revoke one federated session; it expires
        by itself (at most 36 h), and its deny-all session policy makes it useless until then.
        """
        if backend == "sts-federation":
            return
        if backend != "iam-user":
            raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        acct = self._account(account)
        if not NAME_CHARS.match(principal_name or ""):
            raise ValueError(f"principal name {principal_name!r} is not a valid IAM user name")
        iam = self.client("iam", acct.name, self.config.region)
        self._delete_iam_user(iam, acct.name, principal_name, access_key_id=access_key_id)
        log.info("revoked iam-user %s (key %s) in account %s", principal_name, access_key_id, acct.name)

    def _delete_iam_user(self, iam: Any, account: str, name: str, *, access_key_id: str | None) -> None:
        try:
            with _aws_call(f"iam:ListAccessKeys for {name}", account):
                keys = [
                    meta["AccessKeyId"]
                    for page in iam.get_paginator("list_access_keys").paginate(UserName=name)
                    for meta in page["AccessKeyMetadata"]
                ]
            if access_key_id is not None and keys and access_key_id not in keys:
                raise AwsError(
                    f"refusing to delete IAM user {name!r} in account {account!r}: it does not own access "
                    f"key {access_key_id} (keys: {', '.join(keys)})",
                    account=account,
                )
            for key_id in keys:
                with _aws_call(f"iam:DeleteAccessKey {key_id}", account):
                    iam.delete_access_key(UserName=name, AccessKeyId=key_id)
            with _aws_call(f"iam:ListUserPolicies for {name}", account):
                inline = [
                    policy
                    for page in iam.get_paginator("list_user_policies").paginate(UserName=name)
                    for policy in page["PolicyNames"]
                ]
            for policy in inline:
                with _aws_call(f"iam:DeleteUserPolicy {policy} of {name}", account):
                    iam.delete_user_policy(UserName=name, PolicyName=policy)
            with _aws_call(f"iam:ListAttachedUserPolicies for {name}", account):
                attached = [
                    policy["PolicyArn"]
                    for page in iam.get_paginator("list_attached_user_policies").paginate(UserName=name)
                    for policy in page["AttachedPolicies"]
                ]
            for arn in attached:
                with _aws_call(f"iam:DetachUserPolicy {arn} from {name}", account):
                    iam.detach_user_policy(UserName=name, PolicyArn=arn)
            with _aws_call(f"iam:ListGroupsForUser {name}", account):
                groups = [g["GroupName"] for g in iam.list_groups_for_user(UserName=name)["Groups"]]
            for group in groups:
                with _aws_call(f"iam:RemoveUserFromGroup {name} {group}", account):
                    iam.remove_user_from_group(UserName=name, GroupName=group)
            with contextlib.suppress(AwsError), _aws_call(f"iam:DeleteLoginProfile {name}", account):
                iam.delete_login_profile(UserName=name)  # canaries have none; a human may have added one
            with _aws_call(f"iam:DeleteUser {name}", account):
                iam.delete_user(UserName=name)
        except AwsError as exc:
            if exc.code == "NoSuchEntity":
                return  # already gone (or gone half-way through): that is what we wanted
            raise
