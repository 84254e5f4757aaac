"""`tripkey coverage` as text: the fleet at a glance, from the issuer's /v1/coverage JSON.

Rendered with `.get()` throughout, like formatting.py: a section the issuer does not send shows
as empty instead of failing in front of the responder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server_api_client.formatting import fields, section, table, text


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _percent(part: Any, whole: Any) -> str:
    if not isinstance(part, int) or not isinstance(whole, int) or whole <= 0:
        return ""
    return f" ({100 * part / whole:.1f}%)"


def _counts(counts: Mapping[str, Any], total: Any, header: str) -> str:
    rows = sorted(counts.items(), key=lambda item: (-int(item[1] or 0), str(item[0])))
    return table([header, "DEVICES", "SHARE"], [[k, v, _percent(v, total).strip(" ()")] for k, v in rows])


def coverage_report(report: Mapping[str, Any]) -> str:
    devices = _dict(report.get("devices"))
    targets = _dict(report.get("targets"))
    sensors = _dict(report.get("sensors"))
    lost = _dict(report.get("lost_events"))
    credentials = _dict(report.get("credentials"))
    alerts = _dict(report.get("alerts"))
    total = devices.get("total")
    stale_hours = report.get("stale_after_seconds")
    stale_label = "stale"
    if isinstance(stale_hours, int | float):
        stale_label = f"stale (no heartbeat for {stale_hours / 3600:g} h)"
    sensor_rows = [
        [name, _dict(c).get("healthy"), _dict(c).get("unhealthy"), _dict(c).get("unknown")]
        for name, c in sorted(_dict(sensors.get("by_name")).items())
    ]
    parts = [
        f"FLEET COVERAGE at {text(report.get('generated_at'))}",
        fields(
            [
                ("devices", total),
                (stale_label, f"{text(devices.get('stale'))}{_percent(devices.get('stale'), total)}"),
                ("never reported", devices.get("never_reported")),
                ("sensor unhealthy", sensors.get("unhealthy_devices")),
                (
                    "targets planted",
                    f"{text(targets.get('planted'))} of {text(targets.get('expected'))} expected"
                    f"{_percent(targets.get('planted'), targets.get('expected'))}",
                ),
                ("devices fully planted", targets.get("devices_fully_planted")),
                ("devices not planted", targets.get("devices_not_planted")),
                ("devices without targets", targets.get("devices_without_targets")),
            ]
        ),
        section("BY OS", _counts(_dict(devices.get("by_os")), total, "OS")),
        section("BY AGENT VERSION", _counts(_dict(devices.get("by_agent_version")), total, "VERSION")),
        section(
            "SENSORS",
            table(["SENSOR", "HEALTHY", "UNHEALTHY", "UNKNOWN"], sensor_rows) if sensor_rows else "",
        ),
        section(
            "LOST EVENTS (reads the issuer will never see)",
            fields(
                [
                    ("lost by sensors", lost.get("sensor_lost")),
                    ("dropped from full spools", lost.get("spool_dropped")),
                    ("refused by the issuer", lost.get("refused_by_issuer")),
                    ("devices with losses", lost.get("devices_with_losses")),
                ]
            ),
        ),
        section(
            "CREDENTIALS",
            fields(
                [
                    ("by status", _dict(credentials.get("by_status"))),
                    ("by backend", _dict(credentials.get("by_backend"))),
                ]
            ),
        ),
        section("ALERTS", fields([("by status", _dict(alerts.get("by_status")))])),
    ]
    skipped = _dict(report.get("skipped_aws_events"))
    if skipped:
        parts.append(section("SKIPPED AWS EVENTS", fields(sorted(skipped.items()))))
    return "\n\n".join(parts)
