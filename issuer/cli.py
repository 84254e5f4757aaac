"""`tripkey-issuer`: run the issuer, manage its database schema and its API tokens.

Exit status: 0 success, 1 runtime failure (database, network), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from issuer import __version__
from issuer.detection import ingest_secret
from issuer.settings import Settings, SettingsError, load_settings

log = logging.getLogger("issuer")


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _common(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument("--db", metavar="URL", help="database URL (sqlite:///path or postgresql://...)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tripkey-issuer",
        description="Tripkey issuer: mints canary AWS credentials, keeps the registry, raises alerts.",
        epilog="Settings come from defaults < --config FILE < TRIPKEY_* environment < flags.",
    )
    parser.add_argument("--version", action="version", version=f"tripkey-issuer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP API and detection", description="Run the issuer.")
    _common(serve, json_flag=False)
    serve.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:8700)")
    serve.add_argument("--aws-endpoint", metavar="URL", help="AWS-compatible endpoint for every AWS client")
    serve.add_argument("--sqs-queue-url", metavar="URL", help="SQS queue receiving EventBridge events")
    serve.add_argument(
        "--poll-interval",
        type=float,
        metavar="SECONDS",
        help="GetAccessKeyLastUsed safety net period (0 = off)",
    )
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="log verbosity")

    migrate = sub.add_parser(
        "migrate",
        help="apply database migrations",
        description="Bring the database schema to the latest revision.",
    )
    _common(migrate)

    config = sub.add_parser("config", help="show the effective configuration", description="Configuration.")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser("show", help="print the effective settings (secrets hidden)")
    _common(show)

    ingest_secret.register(sub)

    token = sub.add_parser("token", help="create, list and revoke API tokens", description="API tokens.")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = token_sub.add_parser(
        "create",
        help="create a token and print it once",
        description="Create an enroll or responder token. The plaintext is printed once and never stored "
        "(the issuer keeps its SHA-256). Device tokens are made by enrollment, not here.",
    )
    create.add_argument(
        "--role", required=True, choices=("enroll", "responder"), help="what the token may do"
    )
    create.add_argument("--label", help="a note to recognise the token by (e.g. 'mdm fleet A')")
    _common(create)
    listing = token_sub.add_parser("list", help="list tokens (never their values)")
    listing.add_argument("--all", action="store_true", help="include device tokens and revoked tokens")
    _common(listing)
    revoke = token_sub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id", metavar="ID", help="the token's id (tok_...), from `token list`")
    _common(revoke)
    return parser


def _settings(args: argparse.Namespace, **flags: Any) -> Settings:
    try:
        return load_settings(args.config, overrides={"db_url": args.db, **flags})
    except SettingsError as exc:
        raise CliError(str(exc), exit_code=2) from exc


def _database(settings: Settings) -> Any:
    from issuer.db import Database

    database = Database(settings.db_url)
    try:
        database.migrate()
    except Exception as exc:
        database.dispose()
        raise CliError(f"cannot open the database {settings.redacted()['db_url']}: {exc}") from exc
    return database


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from issuer.api.app import create_app
    from issuer.api.server import server_config

    settings = _settings(
        args,
        listen=args.listen,
        aws_endpoint=args.aws_endpoint,
        sqs_queue_url=args.sqs_queue_url,
        poll_interval=args.poll_interval,
        log_level=args.log_level,
    )
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.info("starting issuer on %s (database %s)", settings.listen, settings.redacted()["db_url"])
    config = server_config(
        create_app(settings),
        host=settings.listen_host,
        port=settings.listen_port,
        log_level=settings.log_level,
    )
    uvicorn.Server(config).run()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from issuer.db import current_revision

    database = _database(_settings(args))
    try:
        revision = current_revision(database.engine)
    finally:
        database.dispose()
    _emit(args, {"revision": revision}, f"database schema at revision {revision}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    data = _settings(args).redacted()
    _emit(args, data, "\n".join(f"{key} = {json.dumps(value, default=str)}" for key, value in data.items()))
    return 0


def _token_row(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "role": row.role,
        "label": row.label,
        "device_id": row.device_id,
        "created_at": row.created_at.isoformat(),
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


def cmd_token(args: argparse.Namespace) -> int:
    from issuer import tokens as auth

    database = _database(_settings(args))
    try:
        with database.session() as session:
            if args.token_command == "create":
                if args.label is not None and not 0 < len(args.label) <= 200:
                    raise CliError("--label must be 1 to 200 characters", exit_code=2)
                row, raw = auth.create_token(session, args.role, label=args.label)
                data = {**_token_row(row), "token": raw}
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
                _emit(args, {"tokens": [_token_row(r) for r in rows]}, "\n".join(lines) or "no tokens")
            else:
                revoked = auth.revoke_token(session, args.token_id)
                if revoked is None:
                    raise CliError(
                        f"no token with id {args.token_id!r} (see `tripkey-issuer token list --all`)"
                    )
                _emit(args, _token_row(revoked), f"revoked {revoked.id}")
    finally:
        database.dispose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "serve": cmd_serve,
        "migrate": cmd_migrate,
        "token": cmd_token,
        "config": cmd_config_show,
        "ingest-secret": ingest_secret.run,
    }
    try:
        return handlers[args.command](args)
    except CliError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc)}))
        print(f"tripkey-issuer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
