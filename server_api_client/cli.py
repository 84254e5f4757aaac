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
from server_api_client.cli_conventions import (
    BROKEN_PIPE_HELP,
    ArgumentParser,
    HelpFormatter,
    parse_args,
    report_error,
    run_quietly_on_broken_pipe,
)
from server_api_client.client import IssuerClient
from server_api_client.errors import (
    AuthError,
    IssuerUnreachable,
    NotFound,
    ProtocolError,
    RejectedError,
    TripkeyError,
)
from server_api_client.version import __version__

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4
EXIT_SERVER = 5

EPILOG = f"""\
environment:
  --issuer defaults to $TRIPKEY_ISSUER_URL, --token to $TRIPKEY_TOKEN (a responder token from
  `tripkey-issuer token create --role responder`), --ca-bundle to $TRIPKEY_CA_BUNDLE.
  Prefer the environment for the token: command lines are visible to other local users.

exit codes:
  0    success
  1    not found (an empty list is a success: exit 0)
  2    usage or configuration error (missing --issuer/--token, bad argument, request refused as invalid)
  3    authentication / authorization error (bad, revoked or wrong-role token)
  4    issuer unreachable (connection refused, DNS, timeout, TLS failure)
  5    issuer error (5xx), or an answer that is not the issuer's documented JSON (another web server
       at that URL: check --issuer)
  141  {BROKEN_PIPE_HELP}
  With --json, an error is a JSON object {{"error": "...", "exit_code": N}} on stderr (and stdout).

examples:
  tripkey alerts list --status open
  tripkey alerts show alr_123
  tripkey credentials lookup AKIAXXXXXXXXXXXXXXXX
  tripkey reads --device dev_abc --since 7d
  tripkey devices list --stale --json
  tripkey devices retire dev_abc                      # offboarding: revoke its keys, retire it
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


def _leaf(
    sub: Any, name: str, help_text: str, examples: Sequence[str], *, json_flag: bool = True
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog="examples:\n" + "".join(f"  {line}\n" for line in examples),
        formatter_class=HelpFormatter,
    )
    if json_flag:
        parser.add_argument(
            "--json", action="store_true", help="print one JSON object (for scripts; errors too, on stderr)"
        )
    _connection_args(parser, top=False)
    return parser


def _an_id(value: str) -> str:
    """An id argument: an empty one ("$ID" of an unset variable) is a usage error, not a traceback."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="tripkey",
        description="Tripkey responder CLI: triage canary-credential alerts with the host context of who "
        "read the planted file.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tripkey {__version__}")
    _connection_args(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    alerts = commands.add_parser(
        "alerts",
        help="list, show, acknowledge and resolve alerts",
        description="Alerts: one per incident of a canary credential.",
        epilog="examples:\n  tripkey alerts list --status open\n  tripkey alerts show alr_123\n",
        formatter_class=HelpFormatter,
    )
    alert_cmds = alerts.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _leaf(
        alert_cmds,
        "list",
        "list alerts, newest first",
        ["tripkey alerts list --status open", "tripkey alerts list --json | jq -r '.alerts[].id'"],
    )
    p.add_argument("--status", choices=["open", "acknowledged", "resolved"], help="only alerts in this state")
    p.set_defaults(func=cmd_alerts_list)
    p = _leaf(
        alert_cmds,
        "show",
        "the full alert: verdict, placement, AWS activity, readers of the file",
        ["tripkey alerts show alr_123", "tripkey alerts show alr_123 --json > alert.json"],
    )
    p.add_argument("alert_id", metavar="ID", type=_an_id)
    p.set_defaults(func=cmd_alerts_show)
    for action, verb in (("ack", "acknowledge"), ("resolve", "resolve")):
        p = _leaf(
            alert_cmds,
            action,
            f"{verb} an alert",
            [
                f'tripkey alerts {action} alr_123 --note "on it (jdoe)"',
                f"tripkey alerts {action} alr_123 --json",
            ],
        )
        p.add_argument("alert_id", metavar="ID", type=_an_id)
        p.add_argument("--note", help="a note stored with the alert (who/why)")
        p.set_defaults(func=cmd_alerts_transition, transition=action)

    p = _leaf(
        commands,
        "reads",
        "reads of the planted files on one device (who opened them, when, how)",
        [
            "tripkey reads --device dev_abc --since 7d",
            "tripkey reads --device dev_abc --path /home/alice/.aws/credentials --limit 20 --json",
        ],
    )
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
        "credentials",
        help="look up or revoke a canary access key",
        description="Canary credentials.",
        epilog="examples:\n  tripkey credentials lookup AKIAXXXXXXXXXXXXXXXX\n"
        "  tripkey credentials revoke AKIAXXXXXXXXXXXXXXXX\n",
        formatter_class=HelpFormatter,
    )
    cred_cmds = creds.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _leaf(
        cred_cmds,
        "lookup",
        "which host, user, file and profile hold this access key (also retired and revoked keys)",
        [
            "tripkey credentials lookup AKIAXXXXXXXXXXXXXXXX",
            "tripkey credentials lookup AKIAXXXXXXXXXXXXXXXX --json",
        ],
    )
    p.add_argument("access_key_id", metavar="ACCESS_KEY_ID", type=_an_id)
    p.set_defaults(func=cmd_credentials_lookup)
    p = _leaf(
        cred_cmds,
        "revoke",
        "revoke canary keys: delete them (and their IAM users) in AWS; the records stay for lookups. "
        "Revoking an already revoked key is a success. For keys an unplant could not revoke, or a leaked "
        "old key: a key still planted becomes a dead key in its file (it detects nothing) until the "
        "agent rotates it; to offboard a whole host use `tripkey devices retire`.",
        [
            "tripkey credentials revoke AKIAXXXXXXXXXXXXXXXX",
            "tripkey credentials revoke AKIAXXXXXXXXXXXXXXX1 AKIAXXXXXXXXXXXXXXX2 --json",
        ],
    )
    p.add_argument("access_key_ids", metavar="ACCESS_KEY_ID", nargs="+", type=_an_id)
    p.set_defaults(func=cmd_credentials_revoke)

    devices = commands.add_parser(
        "devices",
        help="enrolled devices: coverage and offboarding",
        description="Enrolled devices.",
        epilog="examples:\n  tripkey devices list --stale\n  tripkey devices retire dev_abc\n",
        formatter_class=HelpFormatter,
    )
    device_cmds = devices.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _leaf(
        device_cmds,
        "list",
        "every enrolled device with heartbeat, sensor and planted targets",
        ["tripkey devices list", "tripkey devices list --stale --json"],
    )
    p.add_argument("--stale", action="store_true", help="only devices whose agent stopped reporting")
    p.set_defaults(func=cmd_devices_list)
    p = _leaf(
        device_cmds,
        "show",
        "one device's coverage: heartbeat, sensor health, planted targets, credentials",
        ["tripkey devices show dev_abc", "tripkey devices show dev_abc --json"],
    )
    p.add_argument("device_id", metavar="ID", type=_an_id)
    p.set_defaults(func=cmd_devices_show)
    p = _leaf(
        device_cmds,
        "retire",
        "offboard a device: revoke every key it holds (in AWS) and its device tokens, mark it retired. "
        "Its records stay, so old alerts and lookups still name it; its agent can no longer enroll "
        "with the same state. Run it again to finish if AWS failed part-way.",
        ["tripkey devices retire dev_abc", "tripkey devices retire dev_abc --json"],
    )
    p.add_argument("device_id", metavar="ID", type=_an_id)
    p.set_defaults(func=cmd_devices_retire)

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
        out.write((table(rows) if rows else empty) + "\n")
    return EXIT_OK


def _emit_one(out: Out, args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    if args.json:
        _emit_json(out, data)
    else:
        out.write(text + "\n")
    return EXIT_OK


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


def cmd_credentials_revoke(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    """Look each key up (for its device and credential id), then revoke it. Stops at the first error;
    revoking is idempotent, so running the same command again finishes the job."""
    revoked = []
    for access_key_id in args.access_key_ids:
        found = client.lookup_credential(access_key_id)
        if found.device_id is None:
            raise UsageError(f"the issuer did not say which device holds {access_key_id}")
        revoked.append(client.revoke_credential(found.device_id, found.credential_id).raw)
    lines = [
        f"revoked {c.get('access_key_id')} ({c.get('credential_id')}: {c.get('local_user')} "
        f"{c.get('path')} [{c.get('profile')}] on {c.get('device_id')})"
        for c in revoked
    ]
    return _emit_one(out, args, {"credentials": revoked}, "\n".join(lines))


def cmd_devices_retire(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    retired = client.retire_device(args.device_id)
    device = retired.device
    keys = ", ".join(c.access_key_id for c in retired.revoked) or "none left to revoke"
    text = (
        f"device {device.device_id} ({device.hostname}) retired at {fmt.text(device.raw.get('retired_at'))}: "
        f"device tokens revoked; keys revoked now: {keys}"
    )
    return _emit_one(out, args, retired.raw, text)


def cmd_devices_list(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    devices = [d.raw for d in client.list_devices() if d.stale or not args.stale]
    empty = "no stale devices" if args.stale else "no enrolled devices"
    return _emit_list(out, args, "devices", devices, fmt.devices_table, empty)


def cmd_devices_show(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    device = client.get_device(args.device_id).raw
    credentials = [c.raw for c in client.list_credentials(args.device_id)]
    text = fmt.device_report(device, credentials)
    return _emit_one(out, args, {**device, "credentials": credentials}, text)


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
    """Advice only where it fits the failure: a CA hint for an untrusted certificate, not for every
    TLS problem (https:// to a plain-HTTP port is not solved by --ca-bundle)."""
    if isinstance(exc, AuthError):
        if exc.status_code == 401:
            return " (is the token right and not revoked?)"
        return " (this needs a responder token)"
    if isinstance(exc, IssuerUnreachable):
        if exc.kind == "tls_verify":
            return " (the issuer's certificate is not trusted here: for a private CA pass --ca-bundle FILE)"
        if exc.kind == "tls":
            return " (is the issuer really speaking https:// on that port? use http:// if it is not TLS)"
    return ""


def main(argv: Sequence[str] | None = None, *, stdout: Out | None = None, stderr: Out | None = None) -> int:
    """`tripkey`; a closed output pipe (`| head`) ends it quietly with exit 141."""
    return run_quietly_on_broken_pipe(lambda: _main(argv, stdout, stderr))


def _main(argv: Sequence[str] | None, stdout: Out | None, stderr: Out | None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `demo` takes its own options: hand everything after it over untouched.
    if argv[:1] == ["demo"]:
        return _run_demo(argv[1:], err)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parse_args(parser, argv)
    except SystemExit as exc:  # argparse already printed the usage error (or --help / --version)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "demo":
        return _run_demo(list(args.demo_args), err)
    func: Callable[[IssuerClient, argparse.Namespace, Out], int] = args.func
    as_json = bool(getattr(args, "json", False))

    def fail(message: str, code: int, label: str = "error") -> int:
        return report_error("tripkey", message, code, as_json=as_json, stdout=out, stderr=err, label=label)

    try:
        with _make_client(args) as client:
            return func(client, args, out)
    except UsageError as exc:
        return fail(str(exc), EXIT_USAGE)
    except NotFound as exc:
        return fail(exc.message, EXIT_NOT_FOUND, label="not found")
    except TripkeyError as exc:
        return fail(f"{exc}{_hint(exc)}", _exit_code_for(exc))


if __name__ == "__main__":
    sys.exit(main())
