"""`tripkey`: the responder's command line over the issuer API (alerts, reads, key lookup, devices)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from server_api_client import formatting as fmt
from server_api_client.client import IssuerClient
from server_api_client.errors import (
    AuthError,
    IssuerUnreachable,
    NotFound,
    ProtocolError,
    RejectedError,
    TripkeyError,
)
from server_api_client.terminal import visible
from server_api_client.version import __version__

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4
EXIT_SERVER = 5

EPILOG = """\
environment:
  --issuer defaults to $TRIPKEY_ISSUER_URL, --token to $TRIPKEY_TOKEN (a responder token from
  `tripkey-issuer token create --role responder`), --ca-bundle to $TRIPKEY_CA_BUNDLE.
  Prefer the environment for the token: command lines are visible to other local users.

exit codes:
  0  success
  1  not found (an empty list is a success: exit 0)
  2  usage or configuration error (missing --issuer/--token, bad argument, request refused as invalid)
  3  authentication / authorization error (bad, revoked or wrong-role token)
  4  issuer unreachable (connection refused, DNS, timeout, TLS verification failure)
  5  issuer error (5xx, or an answer that is not the documented JSON)

examples:
  tripkey alerts list --status open
  tripkey alerts show alr_123
  tripkey credentials lookup AKIAXXXXXXXXXXXXXXXX
  tripkey reads --device dev_abc --since 7d
  tripkey devices list --stale --json
  tripkey dead-letters --source sqs
"""

DEMO_EXTRA_MESSAGE = "tripkey demo needs the issuer extra: pip install 'tripkey[issuer,dev]'"
# Top-level modules of the issuer and dev extras: only their absence means "extra not installed".
_EXTRA_MODULES = {
    "issuer",
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "pydantic",
    "boto3",
    "botocore",
    "moto",
    "psycopg",
    "starlette",
    "awscli",
}


class UsageError(Exception):
    """A problem with the command line or the environment (exit 2)."""


# ------------------------------------------------------------------------------------------ parser


def _connection_args(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On subcommands the defaults are SUPPRESS so that `tripkey alerts list --issuer X` and
    # `tripkey --issuer X alerts list` both work without the later parser erasing the earlier value.
    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--issuer", metavar="URL", default=default(None), help="issuer base URL (env TRIPKEY_ISSUER_URL)"
    )
    group.add_argument(
        "--token", metavar="TOKEN", default=default(None), help="responder token (env TRIPKEY_TOKEN)"
    )
    group.add_argument(
        "--ca-bundle",
        metavar="FILE",
        default=default(None),
        help="PEM file of the CA that signed the issuer's certificate (env TRIPKEY_CA_BUNDLE)",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=default(10.0),
        help="connect and read timeout per request (default 10)",
    )


def _leaf(sub: Any, name: str, help_text: str, *, json_flag: bool = True) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    _connection_args(parser, top=False)
    return parser


def _an_id(value: str) -> str:
    """An id argument: an empty one ("$ID" of an unset variable) is a usage error, not a traceback."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tripkey",
        description="Tripkey responder CLI: triage canary-credential alerts with the host context of who "
        "read the planted file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tripkey {__version__}")
    _connection_args(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    alerts = commands.add_parser(
        "alerts",
        help="list, show, acknowledge and resolve alerts",
        description="Alerts: one per incident of a canary credential.",
    )
    alert_cmds = alerts.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _leaf(alert_cmds, "list", "list alerts, newest first")
    p.add_argument("--status", choices=["open", "acknowledged", "resolved"], help="only alerts in this state")
    p.set_defaults(func=cmd_alerts_list)
    p = _leaf(alert_cmds, "show", "the full alert: verdict, placement, AWS activity, readers of the file")
    p.add_argument("alert_id", metavar="ID", type=_an_id)
    p.set_defaults(func=cmd_alerts_show)
    for action, verb in (("ack", "acknowledge"), ("resolve", "resolve")):
        p = _leaf(alert_cmds, action, f"{verb} an alert")
        p.add_argument("alert_id", metavar="ID", type=_an_id)
        p.add_argument("--note", help="a note stored with the alert (who/why)")
        p.set_defaults(func=cmd_alerts_transition, transition=action)

    p = _leaf(commands, "reads", "reads of the planted files on one device (who opened them, when, how)")
    p.add_argument(
        "--device", required=True, metavar="ID", type=_an_id, help="device id (see `tripkey devices list`)"
    )
    p.add_argument(
        "--since", default="24h", help="a duration (30m, 24h, 7d) or an ISO 8601 time (default 24h)"
    )
    p.add_argument("--path", help="only reads of this file")
    p.add_argument("--limit", type=int, help="at most this many reads (newest first)")
    p.set_defaults(func=cmd_reads)

    creds = commands.add_parser(
        "credentials", help="look up a canary access key", description="Canary credentials."
    )
    cred_cmds = creds.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _leaf(
        cred_cmds,
        "lookup",
        "which host, user, file and profile hold this access key (also retired and revoked keys)",
    )
    p.add_argument("access_key_id", metavar="ACCESS_KEY_ID", type=_an_id)
    p.set_defaults(func=cmd_credentials_lookup)

    devices = commands.add_parser(
        "devices", help="enrolled devices and their coverage", description="Enrolled devices."
    )
    device_cmds = devices.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _leaf(device_cmds, "list", "every enrolled device with heartbeat, sensor and planted targets")
    p.add_argument(
        "--stale",
        action="store_true",
        help="only devices that need attention: no recent heartbeat, a canary not planted (replaced, "
        "unplantable), the sensor not working, or the self-report socket down",
    )
    p.set_defaults(func=cmd_devices_list)
    p = _leaf(
        device_cmds, "show", "one device's coverage: heartbeat, sensor health, planted targets, credentials"
    )
    p.add_argument("device_id", metavar="ID", type=_an_id)
    p.set_defaults(func=cmd_devices_show)

    p = _leaf(
        commands,
        "dead-letters",
        "events the issuer skipped (could not parse or record) and why, with the skipped-input counters",
    )
    p.add_argument("--source", help="only this source: sqs, ingest, lookup_events, last_used, agent_events")
    p.add_argument("--limit", type=int, default=50, help="at most this many, newest first (default 50)")
    p.set_defaults(func=cmd_dead_letters)

    p = commands.add_parser(
        "demo",
        help="run the whole flow on this machine (needs the issuer extra)",
        description="Run the end-to-end demo; arguments after `demo` go to it.",
        add_help=False,
    )
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)
    return parser


# ------------------------------------------------------------------------------------------ commands

Out = TextIO


def _emit_json(out: Out, data: Any) -> None:
    json.dump(data, out, indent=2, sort_keys=True, default=str)
    out.write("\n")


def _emit_list(
    out: Out, args: argparse.Namespace, key: str, rows: list[dict[str, Any]], table: Any, empty: str
) -> int:
    """`{key: rows}` with --json; else the table, or `empty` when there is nothing (still exit 0)."""
    if args.json:
        _emit_json(out, {key: rows})
    else:
        _emit_text(out, table(rows) if rows else empty)
    return EXIT_OK


def _emit_one(out: Out, args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    if args.json:
        _emit_json(out, data)
    else:
        _emit_text(out, text)
    return EXIT_OK


def _emit_text(out: Out, text: str) -> None:
    # The formatters escape every value; this is the last line of defence for anything they missed
    # (JSON output is exact and never passes here).
    out.write(visible(text, keep_newlines=True) + "\n")


def cmd_alerts_list(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    alerts = [a.raw for a in client.list_alerts(status=args.status)]
    empty = f"no {args.status + ' ' if args.status else ''}alerts"
    return _emit_list(out, args, "alerts", alerts, fmt.alerts_table, empty)


def cmd_alerts_show(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    alert = client.get_alert(args.alert_id).raw
    return _emit_one(out, args, alert, fmt.alert_report(alert))


def cmd_alerts_transition(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    act = client.ack_alert if args.transition == "ack" else client.resolve_alert
    alert = act(args.alert_id, note=args.note)
    return _emit_one(out, args, alert.raw, f"alert {alert.id} is now {alert.status}")


def cmd_reads(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    reads = [
        r.raw for r in client.device_reads(args.device, since=args.since, path=args.path, limit=args.limit)
    ]
    empty = f"no reads on device {args.device} since {args.since}"
    return _emit_list(out, args, "reads", reads, fmt.reads_table, empty)


def cmd_credentials_lookup(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    cred = client.lookup_credential(args.access_key_id).raw
    return _emit_one(out, args, cred, fmt.credential_report(cred))


def cmd_devices_list(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    devices = [d.raw for d in client.list_devices()]
    if args.stale:
        devices = [d for d in devices if fmt.coverage_state(d) != "ok"]
    empty = (
        "every device is covered: none stale, none with a canary missing"
        if args.stale
        else "no enrolled devices"
    )
    return _emit_list(out, args, "devices", devices, fmt.devices_table, empty)


def cmd_devices_show(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    device = client.get_device(args.device_id).raw
    credentials = [c.raw for c in client.list_credentials(args.device_id)]
    text = fmt.device_report(device, credentials)
    return _emit_one(out, args, {**device, "credentials": credentials}, text)


def cmd_dead_letters(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    if not 1 <= args.limit <= 1000:
        raise UsageError("--limit must be between 1 and 1000")
    report = client.dead_letters(source=args.source, limit=args.limit)
    return _emit_one(out, args, report.raw, fmt.dead_letters_report(report.counters, report.entries))


# ------------------------------------------------------------------------------------------ main


def _run_demo(demo_args: list[str], err: Out) -> int:
    try:
        from demo.run import main as demo_main
        from demo.run import require_modules

        require_modules()
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _EXTRA_MODULES:
            raise  # a bug inside the demo, not a missing extra: show it
        err.write(f"{DEMO_EXTRA_MESSAGE}\n(missing module: {exc.name})\n")
        return EXIT_USAGE
    return int(demo_main(demo_args) or 0)


def _make_client(args: argparse.Namespace) -> IssuerClient:
    issuer = args.issuer or os.environ.get("TRIPKEY_ISSUER_URL")
    token = args.token or os.environ.get("TRIPKEY_TOKEN")
    ca_bundle = args.ca_bundle or os.environ.get("TRIPKEY_CA_BUNDLE") or None
    if not issuer:
        raise UsageError("no issuer URL: pass --issuer URL or set TRIPKEY_ISSUER_URL")
    if not token:
        raise UsageError("no token: pass --token TOKEN or set TRIPKEY_TOKEN (a responder token)")
    if args.timeout is None or args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    if ca_bundle and not os.path.isfile(ca_bundle):
        raise UsageError(f"--ca-bundle {ca_bundle}: no such file")
    try:
        # A person is waiting: retry briefly rather than the agent's patient schedule.
        return IssuerClient(issuer, token, timeout=args.timeout, ca_bundle=ca_bundle, retries=2, backoff=0.3)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _exit_code_for(exc: TripkeyError) -> int:
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, AuthError):
        return EXIT_AUTH
    if isinstance(exc, RejectedError):
        return EXIT_USAGE
    if isinstance(exc, IssuerUnreachable):
        return EXIT_UNREACHABLE
    if isinstance(exc, ProtocolError):
        return EXIT_SERVER
    return EXIT_SERVER


def _hint(exc: TripkeyError) -> str:
    if isinstance(exc, AuthError):
        if exc.status_code == 401:
            return " (is the token right and not revoked?)"
        return " (this needs a responder token)"
    if isinstance(exc, IssuerUnreachable) and "TLS" in exc.reason:
        return " (use --ca-bundle for a private CA)"
    return ""


def main(argv: Sequence[str] | None = None, *, stdout: Out | None = None, stderr: Out | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `demo` takes its own options: hand everything after it over untouched.
    if argv[:1] == ["demo"]:
        return _run_demo(argv[1:], err)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error (or --help / --version)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "demo":
        return _run_demo(list(args.demo_args), err)
    func: Callable[[IssuerClient, argparse.Namespace, Out], int] = args.func
    try:
        with _make_client(args) as client:
            return func(client, args, out)
    except UsageError as exc:
        err.write(f"tripkey: error: {visible(str(exc))}\n")
        return EXIT_USAGE
    except NotFound as exc:  # the issuer's messages quote what was asked for: escape them too
        err.write(f"tripkey: not found: {visible(exc.message)}\n")
        return EXIT_NOT_FOUND
    except TripkeyError as exc:
        err.write(f"tripkey: error: {visible(str(exc))}{_hint(exc)}\n")
        return _exit_code_for(exc)


if __name__ == "__main__":
    sys.exit(main())
