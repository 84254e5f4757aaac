"""The `tripkey` subcommands: each takes the client, the parsed arguments and the output stream and
returns the exit status; output is a table or report, `--json`, or for lists `--jsonl`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from typing import Any, TextIO

from server_api_client import fleet_format
from server_api_client import formatting as fmt
from server_api_client.client import IssuerClient
from server_api_client.coverage_format import coverage_report
from server_api_client.terminal import visible

EXIT_OK = 0

Out = TextIO


def _emit_json(out: Out, data: Any) -> None:
    json.dump(data, out, indent=2, sort_keys=True, default=str)
    out.write("\n")


def _emit_list(
    out: Out, args: argparse.Namespace, key: str, rows: Iterable[dict[str, Any]], table: Any, empty: str
) -> int:
    """--jsonl: one line per row as it arrives; --json: `{key: rows}`; else the table, or `empty`
    when there is nothing (still exit 0)."""
    if getattr(args, "jsonl", False):
        for row in rows:
            out.write(json.dumps(row, sort_keys=True, default=str) + "\n")
            out.flush()  # a pipe downstream (jq, a SIEM loader) sees each page as it arrives
        return EXIT_OK
    collected = list(rows)
    if args.json:
        _emit_json(out, {key: collected})
    else:
        _emit_text(out, table(collected) if collected else empty)
    return EXIT_OK


def _emit_text(out: Out, text: str) -> None:
    # The formatters escape every value; this is the last line of defence for anything they missed
    # (JSON output is exact and never passes here).
    out.write(visible(text, keep_newlines=True) + "\n")


def _paging(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_items": args.limit, "page_size": args.page_size}


def _emit_one(out: Out, args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    if args.json:
        _emit_json(out, data)
    else:
        _emit_text(out, text)
    return EXIT_OK


def cmd_alerts_list(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    alerts = (
        a.raw
        for a in client.iter_alerts(
            status=args.status,
            severity=args.severity,
            kind=args.kind,
            since=args.since,
            until=args.until,
            device_id=args.device,
            **_paging(args),
        )
    )
    empty = f"no {args.status + ' ' if args.status else ''}alerts"
    return _emit_list(out, args, "alerts", alerts, fmt.alerts_table, empty)


def cmd_alerts_show(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    alert = client.get_alert(args.alert_id).raw
    return _emit_one(out, args, alert, fmt.alert_report(alert))


def cmd_alerts_transition(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    act = client.ack_alert if args.transition == "ack" else client.resolve_alert
    alert = act(args.alert_id, note=args.note)
    return _emit_one(out, args, alert.raw, f"alert {alert.alert_id} is now {alert.status}")


def cmd_reads(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    reads = (
        r.raw
        for r in client.iter_device_reads(args.device, since=args.since, path=args.path, **_paging(args))
    )
    empty = f"no reads on device {args.device} since {args.since}"
    return _emit_list(out, args, "reads", reads, fmt.reads_table, empty)


def cmd_credentials_lookup(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    cred = client.lookup_credential(args.access_key_id).raw
    return _emit_one(out, args, cred, fleet_format.credential_report(cred))


def cmd_credentials_list(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    credentials = (
        c.raw
        for c in client.iter_credentials(
            device_id=args.device,
            status=args.status,
            backend=args.backend,
            account=args.account,
            **_paging(args),
        )
    )
    return _emit_list(out, args, "credentials", credentials, fleet_format.credentials_table, "no credentials")


def cmd_devices_list(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    devices = (
        d.raw
        for d in client.iter_devices(
            stale=True if args.stale else None,
            sensor_healthy=False if args.unhealthy else None,
            planted=False if args.not_planted else None,
            os=args.os,
            agent_version=args.agent_version,
            sensor=args.sensor,
            q=args.search,
            **_paging(args),
        )
    )
    filtered = args.stale or args.unhealthy or args.not_planted or args.os or args.search
    empty = "no stale devices" if args.stale else "no matching devices" if filtered else "no enrolled devices"
    return _emit_list(out, args, "devices", devices, fleet_format.devices_table, empty)


def cmd_devices_show(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    device = client.get_device(args.device_id).raw
    credentials = [c.raw for c in client.list_credentials(args.device_id)]
    text = fleet_format.device_report(device, credentials)
    return _emit_one(out, args, {**device, "credentials": credentials}, text)


def cmd_coverage(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    report = client.coverage()
    return _emit_one(out, args, report, coverage_report(report))


def cmd_dead_letters(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    if not 1 <= args.limit <= 1000:
        raise CommandUsageError("--limit must be between 1 and 1000")
    report = client.dead_letters(source=args.source, limit=args.limit)
    return _emit_one(out, args, report.raw, fleet_format.dead_letters_report(report.counters, report.entries))


class CommandUsageError(ValueError):
    """The user's arguments cannot be carried out (the CLI reports it as a usage error, exit 2)."""


def cmd_credentials_revoke(client: IssuerClient, args: argparse.Namespace, out: Out) -> int:
    """Look each key up (for its device and credential id), then revoke it. Stops at the first error;
    revoking is idempotent, so running the same command again finishes the job."""
    revoked = []
    for access_key_id in args.access_key_ids:
        found = client.lookup_credential(access_key_id)
        if found.device_id is None:
            raise CommandUsageError(f"the issuer did not say which device holds {access_key_id}")
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
