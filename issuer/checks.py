"""`tripkey-issuer check`: what `serve` needs, verified without starting it.

A check is a function `(CheckContext) -> Iterable[CheckResult]`; `CHECKS` lists them in the order
they run. To add one, write the function and append `("name", function)` to `CHECKS`; a check that
needs what an earlier one could not provide yields `skip`. A check that raises is reported as a
failure of that check, never a traceback. The settings themselves (sinks included) are validated
when they load, before any check runs.

Nothing here changes anything: no database is created or migrated, no socket is left open, AWS is
asked only `sts:GetCallerIdentity` (which needs no permission).

known_canary_accounts: is an account of the pool, or an account a registered key belongs to, on a
public list of known canary accounts (issuer.aws.fingerprint)? Also run at issuer start, as warnings.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from issuer.aws.fingerprint import CanaryListError, account_from_key_id, check_accounts, load_list
from issuer.db import DatabaseUnreachable, inspect_database, sqlite_file
from issuer.listen import ListenError, bind_listen_socket
from issuer.models import Credential
from issuer.settings import Settings

log = logging.getLogger(__name__)

OK = "ok"
WARN = "warn"
FAIL = "fail"
SKIP = "skip"


@dataclasses.dataclass(frozen=True)
class CheckResult:
    check: str
    status: str  # ok | warn | fail | skip
    message: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CheckContext:
    """What checks share. `gateway()` builds the AWS gateway once, on first use."""

    settings: Settings
    gateway_factory: Callable[[Settings], Any] | None = None
    offline: bool = False  # `check --offline`: no AWS call, the registry's key ids only
    sessionmaker: Callable[[], Session] | None = None  # the registry, when its database is usable
    _gateway: Any = None

    def gateway(self) -> Any:
        if self._gateway is None:
            if self.gateway_factory is not None:
                self._gateway = self.gateway_factory(self.settings)
            else:
                from issuer.aws.gateway import AwsGateway

                self._gateway = AwsGateway(self.settings.minting_config())
        return self._gateway


Check = Callable[[CheckContext], Iterable[CheckResult]]


def check_settings(ctx: CheckContext) -> Iterator[CheckResult]:
    settings = ctx.settings
    sinks = ", ".join(f"{s.get('name') or s['type']} ({s['type']})" for s in settings.sinks) or "none"
    yield CheckResult(
        "settings",
        OK,
        f"settings load; minting {settings.minting.backend} over {len(settings.accounts)} account(s); "
        f"sinks: {sinks}",
    )


def check_database(ctx: CheckContext) -> Iterator[CheckResult]:
    settings = ctx.settings
    shown = settings.database_origin()
    try:
        state = inspect_database(settings.db_url)
    except DatabaseUnreachable as exc:
        yield CheckResult(
            "database",
            FAIL,
            f"cannot open {shown}: {exc}",
            "check db_url (--db, TRIPKEY_DB_URL or the config file), the server and its credentials",
        )
        return
    if not state.exists:
        path = sqlite_file(settings.db_url)
        parent = next((p for p in (path.parents if path else ()) if p.exists()), None)
        if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
            yield CheckResult(
                "database",
                FAIL,
                f"{shown} does not exist and {parent} is not writable, so `serve` cannot create it",
                "run as the issuer's service user, or choose another data_dir / db_url",
            )
            return
        yield CheckResult(
            "database",
            WARN,
            f"{shown} does not exist yet: `serve` (or `migrate`) will create it. If the issuer already "
            "runs, this is the wrong database",
            "pass the --db/--config that `serve` uses",
        )
    elif state.revision is None:
        yield CheckResult(
            "database", WARN, f"{shown} is reachable and empty: `serve` will create the Tripkey schema"
        )
    elif not state.known_revision:
        yield CheckResult(
            "database",
            FAIL,
            f"{shown} has schema revision {state.revision}, unknown to this tripkey-issuer",
            "run the tripkey-issuer version that wrote it",
        )
    elif not state.current:
        yield CheckResult(
            "database",
            WARN,
            f"{shown} is at schema revision {state.revision}; `serve` will migrate it to {state.head}",
        )
    else:
        yield CheckResult("database", OK, f"{shown} is reachable, schema at revision {state.head}")


def check_listen(ctx: CheckContext) -> Iterator[CheckResult]:
    settings = ctx.settings
    try:
        sock = bind_listen_socket(settings.listen_host, settings.listen_port)
    except ListenError as exc:
        status = WARN if exc.in_use else FAIL
        note = " (fine if that is this issuer, already running)" if exc.in_use else ""
        yield CheckResult("listen", status, f"{exc}{note}", "choose another address with --listen")
        return
    sock.close()
    yield CheckResult("listen", OK, f"{settings.listen} can be bound")


def check_aws(ctx: CheckContext) -> Iterator[CheckResult]:
    settings = ctx.settings
    endpoint = f" at {settings.aws_endpoint}" if settings.aws_endpoint else ""
    try:
        gateway = ctx.gateway()
    except Exception as exc:
        yield CheckResult("aws", FAIL, f"cannot set up AWS clients{endpoint}: {exc}")
        return
    for account in settings.accounts:
        how = (
            f"role {account.role_arn}"
            if account.role_arn
            else f"profile {account.profile}"
            if account.profile
            else "the host's ambient credentials"
        )
        try:
            account_id = gateway.account_id(account.name)
        except Exception as exc:
            yield CheckResult(
                "aws",
                FAIL,
                f"account {account.name!r} ({how}){endpoint}: {exc}",
                "give the issuer AWS credentials (README: how the issuer gets its AWS credentials) and "
                "check aws_endpoint",
            )
            continue
        yield CheckResult("aws", OK, f"account {account.name!r} ({how}){endpoint}: AWS account {account_id}")


def check_detection(ctx: CheckContext) -> Iterator[CheckResult]:
    settings = ctx.settings
    sources = [
        name
        for name, on in (
            ("EventBridge→SQS", bool(settings.sqs_queue_url)),
            ("ingest endpoint", bool(settings.ingest_destinations)),
            ("CloudTrail LookupEvents", bool(settings.lookup_events_regions)),
            ("GetAccessKeyLastUsed safety net", settings.poll_interval > 0),
        )
        if on
    ]
    if not sources:
        yield CheckResult(
            "detection",
            FAIL,
            "no detection source is configured: a used canary would raise no alert",
            "set sqs_queue_url (README: EventBridge → SQS), ingest_destinations, lookup_events_regions "
            "or poll_interval > 0",
        )
    elif sources == ["GetAccessKeyLastUsed safety net"]:
        yield CheckResult(
            "detection",
            WARN,
            "only the GetAccessKeyLastUsed safety net is on: alerts come minutes to hours late",
            "add sqs_queue_url (EventBridge → SQS) for alerts within seconds",
        )
    else:
        yield CheckResult("detection", OK, "detection sources: " + ", ".join(sources))
    if not settings.sinks:
        yield CheckResult(
            "detection",
            WARN,
            "no alert sinks: alerts are only seen with `tripkey alerts list`",
            "add a [[sinks]] table (webhook, slack, pagerduty, smtp, jsonl)",
        )


def check_known_canary_accounts(ctx: CheckContext) -> Iterator[CheckResult]:
    """Secret scanners recognise canaries offline from the account id encoded in an access key id:
    warn when an account of the pool is on the public list they use."""
    name = "fingerprint"
    settings = ctx.settings
    try:
        canaries = load_list(settings.known_canary_accounts_file)
    except CanaryListError as exc:
        yield CheckResult(name, FAIL, str(exc), "fix or remove known_canary_accounts_file")
        return
    pool: list[tuple[str, str, str]] = []
    unknown: list[str] = []
    if not ctx.offline:
        for account in settings.accounts:
            try:
                pool.append((account.name, ctx.gateway().account_id(account.name), "sts:GetCallerIdentity"))
            except Exception as exc:  # AWS, network, credentials: said (the aws check says more)
                unknown.append(f"{account.name} ({type(exc).__name__}: {str(exc)[:200]})")
    if ctx.sessionmaker is not None:
        with ctx.sessionmaker() as session:
            query = select(Credential.account, Credential.account_id, Credential.access_key_id)
            rows = session.execute(query).all()
        for pool_account, account_id, key_id in rows:
            if account_id:
                pool.append((str(pool_account), str(account_id), "the registry"))
            decoded = account_from_key_id(str(key_id))
            if decoded:
                pool.append((str(pool_account), decoded, f"decoded from access key id {key_id}"))
    found = check_accounts(pool, canaries)
    for finding in found:
        # A failure, not a warning: scanners skip such keys offline, so an attacker who runs one
        # never uses the canary and the detection is defeated before it starts.
        yield CheckResult(
            name,
            FAIL,
            finding.message(canaries),
            "mint from an account that is not on the list (a new canary account)",
        )
    for text in unknown:
        yield CheckResult(name, SKIP, f"could not learn the id of pool account {text}")
    if not found:
        ids = sorted({account_id for _, account_id, _ in pool})
        yield CheckResult(
            name,
            OK,
            f"no account of the pool is on the list of {len(canaries.accounts)} known canary accounts "
            f"({canaries.describe_source()}); checked {len(ids)} account id(s)",
        )


CHECKS: list[tuple[str, Check]] = [
    ("settings", check_settings),
    ("database", check_database),
    ("listen", check_listen),
    ("aws", check_aws),
    ("detection", check_detection),
    ("fingerprint", check_known_canary_accounts),
]


def run_checks(ctx: CheckContext, checks: Iterable[tuple[str, Check]] | None = None) -> list[CheckResult]:
    results: list[CheckResult] = []
    for name, check in CHECKS if checks is None else checks:
        try:
            results.extend(check(ctx))
        except Exception as exc:  # a broken check is a failed check, never a traceback
            results.append(CheckResult(name, FAIL, f"the check itself failed: {type(exc).__name__}: {exc}"))
    return results


def warn_at_start(settings: Settings, gateway: Any, sessionmaker: Callable[[], Session]) -> list[CheckResult]:
    """The fingerprint check at issuer start: every warning is logged (never fatal: it still serves)."""
    ctx = CheckContext(settings, gateway_factory=lambda _settings: gateway, sessionmaker=sessionmaker)
    results = run_checks(ctx, [("fingerprint", check_known_canary_accounts)])
    for result in results:
        if result.status not in (OK, SKIP):
            log.warning("fingerprint check: %s", result.message)
    return results


__all__ = [
    "CHECKS",
    "FAIL",
    "OK",
    "SKIP",
    "WARN",
    "Check",
    "CheckContext",
    "CheckResult",
    "run_checks",
    "warn_at_start",
]
