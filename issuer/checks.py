"""`tripkey-issuer check`: what `serve` needs, verified without starting it.

A check is a function `(CheckContext) -> Iterable[CheckResult]`; `CHECKS` lists them in the order
they run. To add one, write the function and append `("name", function)` to `CHECKS`; a check that
needs what an earlier one could not provide yields `skip`. A check that raises is reported as a
failure of that check, never a traceback. The settings themselves (sinks included) are validated
when they load, before any check runs.

Nothing here changes anything: no database is created or migrated, no socket is left open, AWS is
asked only `sts:GetCallerIdentity` (which needs no permission).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from issuer.db import DatabaseUnreachable, inspect_database, sqlite_file
from issuer.listen import ListenError, bind_listen_socket
from issuer.settings import Settings

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


CHECKS: list[tuple[str, Check]] = [
    ("settings", check_settings),
    ("database", check_database),
    ("listen", check_listen),
    ("aws", check_aws),
    ("detection", check_detection),
]


def run_checks(ctx: CheckContext, checks: Iterable[tuple[str, Check]] | None = None) -> list[CheckResult]:
    results: list[CheckResult] = []
    for name, check in CHECKS if checks is None else checks:
        try:
            results.extend(check(ctx))
        except Exception as exc:  # a broken check is a failed check, never a traceback
            results.append(CheckResult(name, FAIL, f"the check itself failed: {type(exc).__name__}: {exc}"))
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
]
