"""`python -m bench.fleet [--devices N] [--duration S] [--replicas R] ...`: run and print the report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from bench.fleet.cluster import ClusterError
from bench.fleet.run import FleetOptions, run_fleet


def format_report(report: dict[str, Any]) -> str:
    o = report["options"]
    lines = [
        f"fleet: {o['devices']:,} devices (+{report['enroll']['count']} enrolled through the API), "
        f"{o['replicas']} replicas behind HAProxy, PostgreSQL; {o['duration']:.0f} s of steady traffic; "
        f"heartbeat every {o['heartbeat_interval']:.0f} s, {o['events_per_batch']} read events every "
        f"{o['event_interval']:.0f} s per device, {o['mint_rate']} mints/s",
        "",
        f"{'route':<10} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        f" {'retries':>8} {'errors':>7}",
    ]
    for name, r in report["routes"].items():
        lines.append(
            f"{name:<10} {r['requests']:>9} {r['per_second']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
            f"{r['max_ms']:>8.0f} {r['retries']:>8} {r['errors']:>7}"
        )
        if r["error_kinds"]:
            lines.append(f"{'':<10} errors: {r['error_kinds']}")
    e, i, d = report["events"], report["incidents"], report["database"]
    enroll = report["enroll"]
    lines += [
        f"{'total':<10} {'':>9} {report['total_per_second']:>8.1f}",
        "",
        f"enroll through the LB: {enroll['count']} devices, p50 {enroll['p50_ms']:.0f} ms,"
        f" p99 {enroll['p99_ms']:.0f} ms, {enroll['errors']} errors;"
        f" seeding {o['devices']:,} devices took {report['seed_seconds']:.1f} s",
        f"requests started > 1 s late: {report['late_starts']:,}; still queued in the generator a minute"
        f" after the end (cancelled, their events drained from the spools): {report['cancelled_at_end']:,}",
        f"killed replica 1 at: {report['killed_at_s']:.0f} s"
        if report["killed_at_s"] is not None
        else "no replica killed",
        f"read events: {e['generated']:,} generated, {e['stored']:,} stored,"
        f" {e['still_in_agent_spools']:,} still in agent spools, {e['lost']:,} lost",
        f"canary uses: {i['canary_uses']} (each sent twice) -> {i['alerts']} alerts,"
        f" {i['detections']} detections, "
        f"{i['webhook_deliveries']} webhook deliveries ({i['alerts_delivered_more_than_once']} duplicated, "
        f"{i['alerts_not_delivered']} missing)",
        "alert latency (SQS send -> signed webhook): "
        + ", ".join(f"{v:.1f} s" for v in i["alert_latency_s"]),
        f"database: {d['db_bytes'] / 2**20:.0f} MiB, {d['db_bytes_per_device']:.0f} bytes per device "
        f"({d['devices']:,} devices, {d['agent_events']:,} events, {d['credentials']:,} credentials)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = FleetOptions()
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    for field in dataclasses.fields(FleetOptions):
        default = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        kind: Any = float if isinstance(default, float) or field.name == "kill_at" else int
        if isinstance(default, str):
            kind = str
        parser.add_argument(flag, type=kind, default=default, help=f"default {default}")
    parser.add_argument("--no-kill", action="store_true", help="do not kill a replica")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FleetOptions)}
    if args.no_kill:
        values["kill_at"] = None
    try:
        report = run_fleet(FleetOptions(**values), log=lambda m: print(m, file=sys.stderr, flush=True))
    except ClusterError as exc:
        print(f"bench.fleet: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
