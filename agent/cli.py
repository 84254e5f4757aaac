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
from agent.cli_help import EPILOG, EXAMPLES
from agent.clock import utcnow
from agent.config import AgentConfig, ConfigError, load_config, parse_assignment
from agent.events.bounds import visible
from agent.reporting.enroll import EnrollmentError, ensure_enrolled
from agent.reporting.spool import Spool
from agent.state import READLOG_FILE, SPOOL_FILE, DirLock, StateError, StateStore
from agent.status import format_status, open_store, status_data
from server_api_client import IssuerUnreachable, TripkeyError
from server_api_client.cli_conventions import (
    ArgumentParser,
    HelpFormatter,
    error_object,
    parse_args,
    report_error,
    run_quietly_on_broken_pipe,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_UNREACHABLE = 4
EXIT_NOT_ENROLLED = 5
EXIT_NO_AWS_CLI = 6
EXIT_NOT_DENIED = 7
EXIT_AWS_UNREACHABLE = 8


# The error object's code for each exit code (--json; docs/schema.md, "Errors").
ERROR_CODES = {
    EXIT_FAILURE: "failed",
    EXIT_USAGE: "usage_error",
    EXIT_PARTIAL: "partial",
    EXIT_UNREACHABLE: "issuer_unreachable",
    EXIT_NOT_ENROLLED: "not_enrolled",
    EXIT_NO_AWS_CLI: "no_aws_cli",
    EXIT_NOT_DENIED: "not_denied",
    EXIT_AWS_UNREACHABLE: "aws_unreachable",
}


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    common = ArgumentParser(add_help=False)
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

    parser = ArgumentParser(
        prog="tripkey-agent",
        description="Tripkey endpoint agent: plants canary AWS credentials and records who reads them.",
        epilog=EPILOG
        + "\nexamples:\n"
        + "".join(
            f"  {EXAMPLES[name][0]}\n" for name in ("plant-once", "status", "reads", "trigger", "unplant")
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tripkey-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=EPILOG + "\nexamples:\n" + "".join(f"  {line}\n" for line in EXAMPLES[name]),
            formatter_class=HelpFormatter,
        )
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output (errors too)")
        return p

    run = add(
        "run",
        "the service: enroll, plant, sense reads, report, repair, refresh (until SIGTERM)",
        json_flag=False,
    )
    run.add_argument("--sensor", help="override the configured sensor")
    service = add(
        "service",
        "Windows only: the service entry the Service Control Manager starts (in a console use `run`)",
        json_flag=False,
    )
    service.add_argument("--sensor", help="override the configured sensor")
    service.add_argument(
        "--configure-recovery",
        action="store_true",
        help="set the service's restart-on-failure recovery actions (the MSI runs this), then exit",
    )
    add("status", "enrollment, each target (key id, expiry, last check, error), sensor health, spool")
    reads = add("reads", "reads of the planted files recorded on this host (newest first)")
    reads.add_argument("--since", default="24h", help="duration (24h, 7d, 90m) or ISO time; default 24h")
    reads.add_argument("--path", help="only reads of this file")
    reads.add_argument("--limit", type=int, default=None, help="at most N rows")
    unplant = add("unplant", "remove Tripkey's profiles (byte-exact otherwise) and revoke the keys")
    unplant.add_argument("--no-revoke", action="store_true", help="only clean the files")
    add("plant-once", "one plant/repair/refresh pass over every target, then exit (MDM scripts, tests)")
    add("check", "inspect every target without changing anything; exit 3 unless all are planted")
    sensors = add("sensors", "which read sensors can run here, and which one the config picks and why")
    sensors.add_argument(
        "--live", action="store_true", help="also start it on a scratch file and have a child `cat` read it"
    )
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
    flags = {
        "state_dir": args.state_dir,
        "issuer_url": args.issuer_url,
        "profile": args.profile,
        "sensor": getattr(args, "sensor", None),
    }
    # A flag given wins over --set; a flag not given must not erase a --set of the same key.
    overrides.update({key: value for key, value in flags.items() if value is not None})
    return load_config(args.config, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """`tripkey-agent`; a closed output pipe (`| head`) ends it quietly with exit 141."""
    args = parse_args(build_parser(), argv)
    return run_quietly_on_broken_pipe(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if args.command == "run" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "tray":
        return cmd_tray(args)
    if args.command == "service":
        from agent.runtime.winservice import run_windows_service

        return run_windows_service(lambda: config_from_args(args), configure=args.configure_recovery)
    try:
        config = config_from_args(args)
        if args.command == "run":
            logging.getLogger().setLevel(logging.DEBUG if args.verbose else config.log_level.upper())
        handler = COMMANDS[args.command]
        return handler(args, config)
    except BrokenPipeError:
        raise  # the output's reader went away: quiet exit 141 (main), not an error to print
    except ConfigError as exc:
        return _fail(args, f"configuration error: {exc}", EXIT_USAGE, error_code="config_error")
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


def _fail(
    args: argparse.Namespace,
    message: str,
    code: int,
    *,
    also_stdout: bool = True,
    error_code: str | None = None,
) -> int:
    """The error sentence on stderr (control characters made visible: a message may quote a hostile
    name); with --json the error object (docs/schema.md) on stderr and stdout instead, exact."""
    as_json = bool(getattr(args, "json", False))
    word = error_code or ERROR_CODES.get(code)
    if as_json and not also_stdout:  # stdout already carries the command's own JSON report
        sys.stderr.write(json.dumps(error_object(message, code, word), sort_keys=True) + "\n")
        return code
    return report_error(
        "tripkey-agent", message if as_json else visible(message), code, as_json=as_json, label="", code=word
    )


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:  # the formatters escape each value; this is the last line of defence for the terminal
        print(visible(text, keep_newlines=True))


# ---------------------------------------------------------------------------------------------- run


def _preflight(config: AgentConfig, command: str) -> None:
    """Before anything is enrolled or minted: can this process do the job at all?"""
    from agent.planting.planter import resolve_targets
    from agent.runtime.preflight import PreflightError, check_can_plant

    try:
        targets, _errors = resolve_targets(config)
    except OSError as exc:  # e.g. an unreadable passwd_file
        raise CliError(f"cannot list the targets: {exc}") from None
    try:
        check_can_plant(config, targets, command)
    except PreflightError as exc:
        raise CliError(str(exc)) from None


def cmd_run(args: argparse.Namespace, config: AgentConfig) -> int:
    """The service, with its external deadman: the systemd watchdog when the unit has one, else a
    supervisor process (agent.runtime.supervisor) that kills and restarts a stopped or wedged agent."""
    from agent import osflags
    from agent.runtime.deadman import Deadman, systemd_watchdog
    from agent.service import run_service

    config.require_issuer()
    _preflight(config, "run")
    watchdog = systemd_watchdog()
    if watchdog is not None:
        logging.getLogger(__name__).info("deadman: systemd watchdog, %.1f s", watchdog.timeout)
        return run_service(config, deadman=watchdog)
    if not osflags.LINUX:  # eslogger and the event log never hold a reader
        return run_service(config, deadman=Deadman(reason="not needed: no sensor here holds a reader"))
    if config.deadman_seconds == 0:
        logging.getLogger(__name__).warning(
            "deadman_seconds = 0: a stopped agent would hold readers of the planted files (fanotify) "
            "until it is killed"
        )
        return run_service(config, deadman=Deadman(reason="turned off (deadman_seconds = 0)"))
    from agent.runtime.supervisor import supervise

    return supervise(lambda deadman: run_service(config, deadman=deadman), config.deadman_seconds)


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
    _preflight(config, "plant-once")
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
    data = {"profile": config.profile, "targets": [_check_target(p, s) for p, s in sorted(found.items())]}
    text = "\n".join(f"{s:10}  {p}" for p, s in sorted(found.items())) or "no targets"
    _emit(args, data, text)
    return EXIT_OK if found and all(s == "ours" for s in found.values()) else EXIT_PARTIAL


def _check_target(path: str, state: str) -> dict[str, Any]:
    """One target as `check --json` reports it: its state word, and the error apart from it."""
    if state.startswith("error: "):
        return {"path": path, "state": "error", "error": state.removeprefix("error: ")}
    return {"path": path, "state": state, "error": None}


def cmd_sensors(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent.sensors.selfcheck import availability, live_check

    data = availability(config.sensor)
    lines = [
        f"{name:16} {'available' if why is None else 'unavailable: ' + why}"
        for name, why in data["sensors"].items()
    ]
    lines.append(f"sensor = {config.sensor!r} -> {data['pick'] or 'none'}: {data['reason']}")
    code = EXIT_OK if data["pick"] else EXIT_FAILURE
    if args.live and data["pick"]:
        data["live"] = live = live_check(config.sensor)
        if live["ok"]:
            read = live["read"]
            lines.append(
                f"live: {live['sensor']} recorded {read['exe']} (pid {read['pid']}) in {live['seconds']} s"
            )
        else:
            lines.append(f"live: FAILED: {live['error']}")
            code = EXIT_FAILURE
    _emit(args, data, "\n".join(lines))
    return code


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
    left_active = [r for r in results if args.no_revoke and r["removed"] and r.get("access_key_id")]
    lines = []
    for r in results:
        what = "removed" if r["removed"] else "nothing of ours"
        if r["revoked"]:
            what += ", key revoked"
        lines.append(f"{what:30}  {r['path']}" + (f"  ({r['error']})" if r["error"] else ""))
    if not results:
        lines.append("nothing planted")
    data: dict[str, Any] = {"results": results}
    if unrevoked or left_active:
        finish = _finish_revoking(unrevoked or left_active, store.state.device_id)
        data["finish_with"] = finish
        if unrevoked:
            lines.append(
                "the issuer could not be reached (or refused): the keys above are removed from the files "
                "but NOT revoked. Finish the job later with one of:"
            )
        else:
            lines.append(
                "--no-revoke: these keys are removed from the files but still exist. Revoke them with:"
            )
        lines.extend(f"  {command}" for command in finish)
    _emit(args, data, "\n".join(lines))
    if failed:
        return EXIT_PARTIAL
    return EXIT_UNREACHABLE if unrevoked else EXIT_OK


def _finish_revoking(results: list[dict[str, Any]], device_id: str | None) -> list[str]:
    """The exact commands that revoke what unplant could not: on this host (it remembers the keys
    it could not revoke), or from a responder's workstation, by key or, when offboarding, by device."""
    keys = " ".join(str(r["access_key_id"]) for r in results if r.get("access_key_id"))
    commands = []
    if any(r["error"] for r in results):
        commands.append("sudo tripkey-agent unplant   # on this host, once the issuer is reachable")
    if keys:
        commands.append(f"tripkey credentials revoke {keys}   # with a responder token")
    if device_id:
        commands.append(f"tripkey devices retire {device_id}   # if this host is being offboarded")
    return commands


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
    problem = report.problem()
    if problem is None:
        return EXIT_OK
    code = {"not_denied": EXIT_NOT_DENIED, "aws_unreachable": EXIT_AWS_UNREACHABLE}.get(
        report.outcome, EXIT_FAILURE
    )
    return _fail(args, problem, code, also_stdout=False)


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
    "sensors": cmd_sensors,
    "trigger": cmd_trigger,
}

__all__ = ["EPILOG", "build_parser", "format_status", "main", "status_data", "utcnow"]
