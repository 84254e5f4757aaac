"""`tripkey-agent`: the endpoint agent's command line.

Every subcommand takes --config FILE (plus --set KEY=VALUE and a few shortcut flags, which win over
TRIPKEY_* environment variables, which win over the file). Output for humans by default, `--json`
for scripts. The canary secret is never printed by any command.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.clock import utcnow
from agent.config import AgentConfig, ConfigError, load_config, parse_assignment
from agent.events.bounds import visible
from agent.reporting.enroll import EnrollmentError, ensure_enrolled
from agent.reporting.spool import Spool
from agent.state import READLOG_FILE, SPOOL_FILE, DirLock, StateError, StateStore
from agent.status import format_status, open_store, status_data
from server_api_client import IssuerUnreachable, TripkeyError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_UNREACHABLE = 4
EXIT_NOT_ENROLLED = 5
EXIT_NO_AWS_CLI = 6

EPILOG = """\
exit codes:
  0  success
  1  failure (enrollment refused, state unusable, unexpected error)
  2  usage or configuration error (the message names the key)
  3  partly done: at least one target is not planted / not removed / in conflict
  4  the issuer is unreachable (unplant: files cleaned but keys NOT revoked)
  5  not enrolled, or no planted credential to use (trigger)
  6  trigger: the AWS CLI (`aws`) is not installed

configuration: --config FILE (TOML; default $TRIPKEY_CONFIG or /etc/tripkey/agent.toml),
TRIPKEY_<KEY> environment variables, then flags (flags win).
"""


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="agent config file (TOML)")
    common.add_argument(
        "--state-dir", metavar="DIR", help="state directory (default /var/lib/tripkey as root)"
    )
    common.add_argument("--issuer-url", metavar="URL", help="issuer base URL")
    common.add_argument("--profile", help="AWS CLI profile name to plant")
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config key (TOML value), e.g. --set all_users=false; repeatable",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = argparse.ArgumentParser(
        prog="tripkey-agent",
        description="Tripkey endpoint agent: plants canary AWS credentials and records who reads them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tripkey-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    run = add(
        "run",
        "the service: enroll, plant, sense reads, report, repair, refresh (until SIGTERM)",
        json_flag=False,
    )
    run.add_argument("--sensor", help="override the configured sensor")
    add("status", "enrollment, each target (key id, expiry, last check, error), sensor health, spool")
    reads = add("reads", "reads of the planted files recorded on this host (newest first)")
    reads.add_argument("--since", default="24h", help="duration (24h, 7d, 90m) or ISO time; default 24h")
    reads.add_argument("--path", help="only reads of this file")
    reads.add_argument("--limit", type=int, default=None, help="at most N rows")
    unplant = add("unplant", "remove Tripkey's profiles (byte-exact otherwise) and revoke the keys")
    unplant.add_argument("--no-revoke", action="store_true", help="only clean the files")
    add("plant-once", "one plant/repair/refresh pass over every target, then exit (MDM scripts, tests)")
    add("check", "inspect every target without changing anything; exit 3 unless all are planted")
    trigger = add("trigger", "self-test: tell the issuer, then use this device's canary against AWS")
    trigger.add_argument("--target", metavar="PATH", help="which planted file (default: the first)")
    tray = add(
        "tray", "the per-user tray app (explains the canary; 'I opened it by mistake')", json_flag=False
    )
    tray.add_argument("--show", action="store_true", help="open the explanation window at once")
    return parser


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, value = parse_assignment(item)
        overrides[key] = value
    overrides.update(
        state_dir=args.state_dir,
        issuer_url=args.issuer_url,
        profile=args.profile,
        sensor=getattr(args, "sensor", None),
    )
    return load_config(args.config, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if args.command == "run" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "tray":
        return cmd_tray(args)
    try:
        config = config_from_args(args)
        if args.command == "run":
            logging.getLogger().setLevel(logging.DEBUG if args.verbose else config.log_level.upper())
        handler = COMMANDS[args.command]
        return handler(args, config)
    except ConfigError as exc:
        return _fail(args, f"configuration error: {exc}", EXIT_USAGE)
    except CliError as exc:
        return _fail(args, str(exc), exc.code)
    except StateError as exc:  # AgentBusy included
        return _fail(args, str(exc), EXIT_FAILURE)
    except PermissionError as exc:
        return _fail(args, f"permission denied: {exc.filename or exc} (the agent runs as root)", EXIT_FAILURE)
    except OSError as exc:  # a full disk, a read-only state directory: a sentence, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(args, f"{exc.strerror or exc}{where}", EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """The error sentence on stderr; with --json also {"error", "exit_code"} on stdout for scripts."""
    print(f"tripkey-agent: {visible(message)}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "exit_code": code}, sort_keys=True))
    return code


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:  # the formatters escape each value; this is the last line of defence for the terminal
        print(visible(text, keep_newlines=True))


# ---------------------------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent.service import run_service

    config.require_issuer()
    return run_service(config)


# ---------------------------------------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace, config: AgentConfig) -> int:
    data = status_data(config)
    _emit(args, data, format_status(data))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- reads


def cmd_reads(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent.events.readlog import ReadLog, ReadLogError, format_table, parse_since

    try:
        since = parse_since(args.since)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    path = os.path.join(config.state_dir, READLOG_FILE)
    if not os.path.exists(path):
        rows: list[dict[str, Any]] = []
    else:
        try:
            readlog = ReadLog(Path(path), readonly=True)  # never creates, prunes or writes
        except ReadLogError as exc:
            raise CliError(str(exc)) from None
        try:
            rows = readlog.query(since=since, path=args.path, limit=args.limit)
        finally:
            readlog.close()
    _emit(args, {"reads": rows}, format_table(rows))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- planting


def _enrolled_client(config: AgentConfig, store: StateStore, users: list[str], *, enroll: bool) -> Any:
    from agent.service import make_client

    client = make_client(config)
    if enroll:
        try:
            ensure_enrolled(store, client, config, users, max_attempts=3)
        except EnrollmentError as exc:
            code = EXIT_UNREACHABLE if exc.unreachable else EXIT_FAILURE
            raise CliError(f"cannot enroll: {exc}", code) from None
    elif store.state.enrolled:
        client.token = store.state.device_token
    else:
        return None
    return client


def cmd_plant_once(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent.planting.planter import Planter, resolve_targets
    from agent.reporting.uploader import FlushResult, Uploader

    config.require_issuer()
    with DirLock(config.state_dir):
        store = StateStore(config.state_dir)
        targets, errors = resolve_targets(config)
        client = _enrolled_client(config, store, [t.owner.name for t in targets], enroll=True)
        with Spool(store.dir / SPOOL_FILE, config.spool_max_events) as spool:
            planter = Planter(config, store, client, emit=spool.put)
            planter.sync(targets, errors)
            try:
                flushed = Uploader(client, spool, store.state.device_id or "").flush()
            except TripkeyError as exc:  # e.g. the device token was refused: events stay spooled
                flushed = FlushResult(error=str(exc))
            pending = spool.pending()
    data = status_data(config)
    data["upload"] = {"sent": flushed.sent, "error": flushed.error, "pending": pending}
    text = format_status(data)
    if flushed.error:
        text += f"\nupload: {flushed.error} ({pending} event(s) wait in the spool)"
    _emit(args, data, text)
    bad = [t for t in data["targets"] if t["status"] != "planted"] or list(errors)
    return EXIT_PARTIAL if bad else EXIT_OK


def cmd_check(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent.planting.planter import resolve_targets
    from agent.planting.targets import inspect_targets

    store = open_store(config)
    targets, errors = resolve_targets(config)
    paths = sorted({t.path for t in targets} | (set(store.state.targets) if store else set()))
    owned = store.state.owned_key_ids if store else set()
    found = inspect_targets(paths, config.profile, owned, {t.path: t.owner for t in targets})
    found.update({path: f"error: {message}" for path, message in errors.items()})
    data = {"profile": config.profile, "targets": [{"path": p, "state": s} for p, s in sorted(found.items())]}
    text = "\n".join(f"{s:10}  {p}" for p, s in sorted(found.items())) or "no targets"
    _emit(args, data, text)
    return EXIT_OK if found and all(s == "ours" for s in found.values()) else EXIT_PARTIAL


def cmd_unplant(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent.planting.planter import Planter, resolve_targets

    with DirLock(config.state_dir):
        store = StateStore(config.state_dir)
        try:
            targets, _errors = resolve_targets(config)
        except OSError:
            targets = []
        client = None
        if not config.issuer_url and store.state.issuer_url:  # enrolled earlier: revoke there
            config = dataclasses.replace(config, issuer_url=store.state.issuer_url)
        if not args.no_revoke and config.issuer_url:
            client = _enrolled_client(config, store, [], enroll=False)
        planter = Planter(config, store, client)
        results = planter.unplant_all([t.path for t in targets], revoke=not args.no_revoke)
    failed = [r for r in results if r["error"] and not r["error"].startswith("removed locally")]
    unrevoked = [r for r in results if r["error"] and r["error"].startswith("removed locally")]
    lines = []
    for r in results:
        what = "removed" if r["removed"] else "nothing of ours"
        if r["revoked"]:
            what += ", key revoked"
        lines.append(f"{what:30}  {r['path']}" + (f"  ({r['error']})" if r["error"] else ""))
    if not results:
        lines.append("nothing planted")
    if unrevoked:
        lines.append(
            "the issuer could not be reached (or refused): the keys above were NOT revoked; "
            "run `tripkey-agent unplant` again later or revoke them from the issuer"
        )
    _emit(args, {"results": results}, "\n".join(lines))
    if failed:
        return EXIT_PARTIAL
    return EXIT_UNREACHABLE if unrevoked else EXIT_OK


# ---------------------------------------------------------------------------------------------- trigger


def cmd_trigger(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent.trigger import TriggerError, run_trigger

    store = open_store(config)
    if store is None or not store.state.enrolled:
        raise CliError("not enrolled: run `tripkey-agent run` or `plant-once` first", EXIT_NOT_ENROLLED)
    config.require_issuer()
    client = _enrolled_client(config, store, [], enroll=False)
    try:
        report = run_trigger(config, store, client, target=args.target)
    except TriggerError as exc:
        raise CliError(str(exc), exc.code) from None
    except IssuerUnreachable as exc:
        raise CliError(
            f"the issuer is unreachable, so the self-test was not started: {exc}", EXIT_UNREACHABLE
        ) from None
    except TripkeyError as exc:
        raise CliError(f"the issuer refused the self-test: {exc}") from None
    _emit(args, report.to_dict(), report.text())
    return EXIT_OK if report.used else EXIT_FAILURE


# ---------------------------------------------------------------------------------------------- tray


def cmd_tray(args: argparse.Namespace) -> int:
    """Runs as the logged-in user: the root-only agent config may be unreadable, so it is optional."""
    socket_path = "/run/tripkey/selfreport.sock"
    try:
        socket_path = config_from_args(args).selfreport_socket
    except ConfigError as exc:
        if args.config:
            print(f"tripkey-agent: configuration error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        module = importlib.import_module("agent.tray.app")
    except ImportError as exc:
        print(
            f"tripkey-agent: the tray app cannot start: {exc} (install the tray extra: "
            "pip install 'tripkey[tray]')",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return int(module.main(Path(socket_path), show_now=args.show) or 0)


COMMANDS = {
    "run": cmd_run,
    "status": cmd_status,
    "reads": cmd_reads,
    "unplant": cmd_unplant,
    "plant-once": cmd_plant_once,
    "check": cmd_check,
    "trigger": cmd_trigger,
}

__all__ = ["EPILOG", "build_parser", "format_status", "main", "status_data", "utcnow"]
