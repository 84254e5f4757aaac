"""`tripkey-issuer check`: problems an operator should fix, found without serving anything.

Each check is a function (settings, context) -> list of CheckResult, registered in CHECKS; the
command runs them all, prints each result and exits 3 when any warns. More checks are welcome: add a
function and register it.

known_canary_accounts: is an account of the pool, or an account a registered key belongs to, on a
public list of known canary accounts (issuer.aws.fingerprint)? Also run at issuer start, as warnings.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from issuer.aws.fingerprint import CanaryListError, account_from_key_id, check_accounts, load_list
from issuer.models import Credential
from issuer.settings import Settings

log = logging.getLogger(__name__)
OK, WARN, ERROR = "ok", "warning", "error"


@dataclasses.dataclass(frozen=True, slots=True)
class CheckResult:
    check: str
    status: str  # ok | warning | error
    message: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CheckContext:
    """What a check may use: the AWS gateway (None offline) and a database session factory."""

    gateway: Any = None
    sessionmaker: Callable[[], Session] | None = None


def known_canary_accounts(settings: Settings, context: CheckContext) -> list[CheckResult]:
    name = "known_canary_accounts"
    try:
        canaries = load_list(settings.known_canary_accounts_file)
    except CanaryListError as exc:
        return [CheckResult(name, ERROR, str(exc))]
    pool: list[tuple[str, str, str]] = []
    unknown: list[str] = []
    if context.gateway is not None:
        for account in settings.accounts:
            try:
                pool.append((account.name, context.gateway.account_id(account.name), "sts:GetCallerIdentity"))
            except Exception as exc:  # AWS, network, credentials: said, not fatal
                unknown.append(f"{account.name} ({type(exc).__name__}: {str(exc)[:200]})")
    if context.sessionmaker is not None:
        with context.sessionmaker() as session:
            rows = session.execute(
                select(Credential.account, Credential.account_id, Credential.access_key_id)
            ).all()
        for pool_account, account_id, key_id in rows:
            if account_id:
                pool.append((str(pool_account), str(account_id), "the registry"))
            decoded = account_from_key_id(str(key_id))
            if decoded:
                pool.append((str(pool_account), decoded, f"decoded from access key id {key_id}"))
    results = [CheckResult(name, WARN, f.message(canaries)) for f in check_accounts(pool, canaries)]
    for text in unknown:
        results.append(CheckResult(name, WARN, f"could not learn the id of pool account {text}"))
    if not results:
        ids = sorted({account_id for _, account_id, _ in pool})
        results.append(
            CheckResult(
                name,
                OK,
                f"no account of the pool is on the list of {len(canaries.accounts)} known canary accounts "
                f"({canaries.describe_source()}); checked {len(ids)} account id(s)",
            )
        )
    return results


CHECKS: dict[str, Callable[[Settings, CheckContext], list[CheckResult]]] = {
    "known_canary_accounts": known_canary_accounts,
}


def run_checks(settings: Settings, context: CheckContext) -> list[CheckResult]:
    results: list[CheckResult] = []
    for name, check in CHECKS.items():
        try:
            results.extend(check(settings, context))
        except Exception as exc:  # one broken check must not hide the others
            log.exception("check %s failed", name)
            results.append(CheckResult(name, ERROR, f"the check itself failed: {type(exc).__name__}"))
    return results


def warn_at_start(settings: Settings, gateway: Any, sessionmaker: Callable[[], Session]) -> list[CheckResult]:
    """The start-up run: every warning is logged (never fatal: the issuer still serves)."""
    results = known_canary_accounts(settings, CheckContext(gateway=gateway, sessionmaker=sessionmaker))
    for result in results:
        if result.status != OK:
            log.warning("fingerprint check: %s", result.message)
    return results


__all__ = ["CHECKS", "ERROR", "OK", "WARN", "CheckContext", "CheckResult", "run_checks", "warn_at_start"]
