"""`tripkey-issuer`: run the issuer, check its setup, manage its database schema and its API tokens.

Only `serve` and `migrate` may create a database; every other command opens the one it is given
and says which (a stderr line, or a "database" field with --json), so a token is never created in a
database the running issuer does not use. Exit codes: EPILOG below (also `tripkey-issuer --help`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from issuer import __version__
from issuer.cli_help import EPILOG, EXAMPLES
from issuer.detection import ingest_secret
from issuer.settings import Settings, SettingsError, load_settings
from issuer.timefmt import iso, iso_or_none
from server_api_client.cli_conventions import (
    ArgumentParser,
    HelpFormatter,
    parse_args,
    report_error,
    run_quietly_on_broken_pipe,
)

log = logging.getLogger("issuer")

PROG = "tripkey-issuer"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NO_DATABASE = 3
EXIT_LISTEN = 4
# The error object's code for each exit code (--json; docs/schema.md, "Errors").
ERROR_CODES = {
    EXIT_FAILURE: "failed",
    EXIT_USAGE: "usage_error",
    EXIT_NO_DATABASE: "no_database",
    EXIT_LISTEN: "cannot_listen",
}


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _common(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (the one `serve` uses)")
    parser.add_argument(
        "--db", metavar="URL", help="database: sqlite:///PATH, a plain file path, or postgresql://..."
    )
    if json_flag:
        parser.add_argument("--json", action="store_true", help="machine-readable output (errors too)")


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:8700)")
    parser.add_argument("--aws-endpoint", metavar="URL", help="AWS-compatible endpoint for every AWS client")
    parser.add_argument("--sqs-queue-url", metavar="URL", help="SQS queue receiving EventBridge events")
    parser.add_argument(
        "--poll-interval",
        type=float,
        metavar="SECONDS",
        help="GetAccessKeyLastUsed safety net period (0 = off)",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="log verbosity")


def _serve_settings(args: argparse.Namespace) -> Settings:
    return _settings(
        args,
        listen=args.listen,
        aws_endpoint=args.aws_endpoint,
        sqs_queue_url=args.sqs_queue_url,
        poll_interval=args.poll_interval,
        log_level=args.log_level,
    )


def _sub(sub: Any, name: str, help_text: str, description: str, examples: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=examples,
        formatter_class=HelpFormatter,
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Tripkey issuer: mints canary AWS credentials, keeps the registry, raises alerts.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tripkey-issuer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _sub(
        sub,
        "serve",
        "run the HTTP API and detection",
        "Run the issuer: bind the listen address, create or migrate the database, start detection.",
        EXAMPLES["serve"],
    )
    _common(serve, json_flag=False)
    _serve_flags(serve)

    check = _sub(
        sub,
        "check",
        "verify what `serve` needs, without starting it",
        "Check the setup `serve` would run with (give it the same flags).",
        EXAMPLES["check"],
    )
    _common(check)
    _serve_flags(check)
    check.add_argument(
        "--offline", action="store_true", help="no AWS call (the fingerprint check uses registered key ids)"
    )

    migrate = _sub(
        sub,
        "migrate",
        "create the database or bring its schema up to date",
        "Create the database if needed and bring the schema to the latest revision (`serve` does this "
        "on start, too).",
        EXAMPLES["migrate"],
    )
    _common(migrate)

    config = sub.add_parser("config", help="show the effective configuration", description="Configuration.")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = _sub(
        config_sub,
        "show",
        "print the effective settings (secrets hidden)",
        "Print the effective settings after every layer, secrets hidden. Sinks are validated as `serve` "
        "would build them; `tripkey-issuer check` also tries the database, the address and AWS.",
        EXAMPLES["config show"],
    )
    _common(show)

    ingest_secret.register(sub)

    token = sub.add_parser("token", help="create, list and revoke API tokens", description="API tokens.")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = _sub(
        token_sub,
        "create",
        "create a token and print it once",
        "Create an enroll or responder token in the issuer's database (it must exist: give the "
        "--db/--config `serve` uses). The plaintext is printed once and never stored (the issuer keeps "
        "its SHA-256). Device tokens are made by enrollment, not here.",
        EXAMPLES["token create"],
    )
    create.add_argument(
        "--role", required=True, choices=("enroll", "responder"), help="what the token may do"
    )
    create.add_argument("--label", help="a note to recognise the token by (e.g. 'mdm fleet A')")
    _common(create)
    listing = _sub(
        token_sub,
        "list",
        "list tokens (never their values)",
        "List enroll and responder tokens that are not revoked (ids, roles, labels; never values).",
        EXAMPLES["token list"],
    )
    listing.add_argument("--all", action="store_true", help="include device tokens and revoked tokens")
    _common(listing)
    revoke = _sub(
        token_sub,
        "revoke",
        "revoke a token by its id",
        "Revoke a token at once: every later request with it gets 401. Revoking a device token makes "
        "that agent enroll again with its enroll token; to offboard a device use "
        "`tripkey devices retire ID`.",
        EXAMPLES["token revoke"],
    )
    revoke.add_argument("token_id", metavar="ID", help="the token's id (tok_...), from `token list`")
    _common(revoke)
    return parser


# ----------------------------------------------------------------------------------------- helpers


def _settings(args: argparse.Namespace, **flags: Any) -> Settings:
    try:
        return load_settings(args.config, overrides={"db_url": args.db, **flags})
    except SettingsError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


def _database_field(settings: Settings) -> dict[str, str]:
    return {"url": settings.redacted()["db_url"], "source": settings.source_of("db_url")}


def _say_database(args: argparse.Namespace, settings: Settings) -> None:
    """Which database this command uses, for a person (stderr); --json output carries it as a field."""
    if not getattr(args, "json", False):
        print(f"{PROG}: database {settings.database_origin()}", file=sys.stderr)


def _database_error(exc: Exception, settings: Settings) -> CliError:
    from issuer.db import NoSuchDatabase, SchemaMismatch

    if isinstance(exc, NoSuchDatabase | SchemaMismatch):
        return CliError(str(exc), EXIT_NO_DATABASE)
    return CliError(f"cannot open the database {settings.database_origin()}: {exc}", EXIT_FAILURE)


def _existing_database(settings: Settings) -> Any:
    from issuer.db import DatabaseError, open_existing

    try:
        return open_existing(settings.db_url, settings.database_origin())
    except DatabaseError as exc:
        raise _database_error(exc, settings) from None


def _migrated_database(settings: Settings) -> Any:
    """Create (if needed) and migrate: `serve` and `migrate` only."""
    from sqlalchemy.exc import SQLAlchemyError

    from issuer.db import Database, DatabaseUnreachable

    try:
        database = Database(settings.db_url)
    except OSError as exc:  # the SQLite file or its directory cannot be created
        raise CliError(f"cannot create the database {settings.database_origin()}: {exc}") from None
    try:
        database.migrate()
    except (SQLAlchemyError, OSError) as exc:
        database.dispose()
        raise _database_error(DatabaseUnreachable(_first_line(exc)), settings) from None
    return database


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return (str(original).strip().splitlines() or [type(original).__name__])[0]


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


# ----------------------------------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from issuer.api.app import create_app
    from issuer.api.server import server_config
    from issuer.listen import ListenError, bind_listen_socket

    settings = _serve_settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The address first: a busy port is found before the database is touched.
    try:
        sock = bind_listen_socket(settings.listen_host, settings.listen_port)
    except ListenError as exc:
        hint = " (is another tripkey-issuer running?)" if exc.in_use else ""
        raise CliError(f"{exc}{hint}; choose another address with --listen", EXIT_LISTEN) from None
    try:
        _migrated_database(settings).dispose()
        log.info("database %s", settings.database_origin())
        log.info("starting issuer on %s", settings.listen)
        # The issuer's own HTTP protocol class: requests uvicorn cannot parse get JSON errors too.
        config = server_config(create_app(settings, migrate=False), log_level=settings.log_level)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from issuer.checks import FAIL, CheckContext, run_checks
    from issuer.db import DatabaseError, open_existing

    settings = _serve_settings(args)
    database = None
    with contextlib.suppress(DatabaseError):  # the database check says what is wrong with it
        database = open_existing(settings.db_url, settings.database_origin())
    try:
        ctx = CheckContext(
            settings,
            offline=args.offline,
            sessionmaker=database.sessionmaker if database is not None else None,
        )
        results = run_checks(ctx)
    finally:
        if database is not None:
            database.dispose()
    failed = [r for r in results if r.status == FAIL]
    lines = []
    for result in results:
        lines.append(f"{result.status.upper():5} {result.check:10} {result.message}")
        if result.fix and result.status != "ok":
            lines.append(f"{'':16} fix: {result.fix}")
    lines.append(f"{len(failed)} check(s) failed" if failed else "serve has what it needs")
    data = {"ok": not failed, "checks": [r.as_dict() for r in results], "database": _database_field(settings)}
    _emit(args, data, "\n".join(lines))
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from issuer.db import current_revision

    settings = _settings(args)
    database = _migrated_database(settings)
    try:
        revision = current_revision(database.engine)
    finally:
        database.dispose()
    _say_database(args, settings)
    data = {"revision": revision, "database": _database_field(settings)}
    _emit(args, data, f"database schema at revision {revision}")
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    data = _settings(args).redacted()
    _emit(args, data, "\n".join(f"{key} = {json.dumps(value, default=str)}" for key, value in data.items()))
    return EXIT_OK


def _token_row(row: Any) -> dict[str, Any]:
    return {
        "token_id": row.id,
        "role": row.role,
        "label": row.label,
        "device_id": row.device_id,
        "created_at": iso(row.created_at),
        "revoked_at": iso_or_none(row.revoked_at),
    }


def cmd_token(args: argparse.Namespace) -> int:
    from issuer import tokens as auth

    if args.token_command == "create" and args.label is not None and not 0 < len(args.label) <= 200:
        raise CliError("--label must be 1 to 200 characters", EXIT_USAGE)
    settings = _settings(args)
    database = _existing_database(settings)
    _say_database(args, settings)
    where = {"database": _database_field(settings)}
    try:
        with database.session() as session:
            if args.token_command == "create":
                row, raw = auth.create_token(session, args.role, label=args.label)
                data = {**_token_row(row), "token": raw, **where}
                _emit(args, data, f"{raw}\n(id {row.id}, role {row.role}; shown once, store it now)")
            elif args.token_command == "list":
                rows = [
                    r
                    for r in auth.list_tokens(session)
                    if args.all or (r.role != "device" and r.revoked_at is None)
                ]
                lines = [
                    f"{r.id}  {r.role:<9}  {r.created_at:%Y-%m-%d %H:%M}  "
                    f"{'revoked ' if r.revoked_at else ''}{r.label or ''}"
                    for r in rows
                ]
                _emit(
                    args, {"tokens": [_token_row(r) for r in rows], **where}, "\n".join(lines) or "no tokens"
                )
            else:
                revoked = auth.revoke_token(session, args.token_id)
                if revoked is None:
                    raise CliError(
                        f"no token with id {args.token_id!r} (see `tripkey-issuer token list --all`)"
                    )
                _emit(args, {**_token_row(revoked), **where}, f"revoked {revoked.id}")
    finally:
        database.dispose()
    return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    handlers = {
        "serve": cmd_serve,
        "check": cmd_check,
        "migrate": cmd_migrate,
        "token": cmd_token,
        "config": cmd_config_show,
        "ingest-secret": ingest_secret.run,
    }
    try:
        return handlers[args.command](args)
    except CliError as exc:
        return report_error(
            PROG,
            str(exc),
            exc.exit_code,
            as_json=getattr(args, "json", False),
            code=ERROR_CODES.get(exc.exit_code),
        )
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    return run_quietly_on_broken_pipe(lambda: _dispatch(args))


if __name__ == "__main__":
    sys.exit(main())
