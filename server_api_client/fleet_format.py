"""Plain-text rendering of the fleet for the `tripkey` responder CLI: devices (coverage, sensor,
deadman, self-report, mint budget), credentials and dead letters. Built on the primitives of
server_api_client.formatting, which escape every value."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from server_api_client.formatting import as_dict, as_list, clip, fields, section, table, text


def _deadman_text(value: Any) -> str | None:
    """'armed (systemd, 1500 ms)' / 'NOT armed (why)' / None (an agent that does not say)."""
    deadman = as_dict(value)
    if not deadman:
        return None
    if deadman.get("armed"):
        return f"armed ({text(deadman.get('kind'))}, {text(deadman.get('timeout_ms'))} ms)"
    return f"NOT armed ({text(deadman.get('detail'))})"


def _targets(device: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [as_dict(t) for t in as_list(as_dict(device.get("health")).get("targets"))]


def _sensor(device: Mapping[str, Any]) -> dict[str, Any]:
    return as_dict(as_dict(device.get("health")).get("sensor"))


def coverage_state(device: Mapping[str, Any]) -> str:
    """The device's coverage state (issuer/coverage.py); an older issuer only says whether it is stale."""
    state = as_dict(device.get("coverage")).get("state")
    if isinstance(state, str) and state:
        return state
    return "stale" if device.get("stale") else "ok"


def _mints(device: Mapping[str, Any]) -> str | None:
    minting = as_dict(device.get("minting"))
    if not minting:
        return None
    shown = f"{text(minting.get('minted_in_window'))}/{text(minting.get('window_limit'))}"
    refused = minting.get("refused")
    return f"{shown} ({refused} REFUSED)" if refused else shown


def devices_table(devices: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for d in devices:
        sensor = _sensor(d)
        targets = _targets(d)
        planted = sum(1 for t in targets if t.get("planted"))
        sensor_state = None
        if sensor:
            sensor_state = f"{text(sensor.get('name'))} {'ok' if sensor.get('healthy') else 'UNHEALTHY'}"
        state = coverage_state(d)
        shown = state if state == "ok" else state.replace("_", " ").upper()
        if d.get("retired_at"):
            shown = "RETIRED"
        rows.append(
            [
                d.get("device_id"),
                d.get("hostname"),
                d.get("os"),
                d.get("agent_version"),
                d.get("last_heartbeat_at"),
                sensor_state,
                f"{planted}/{len(targets)}" if targets else "0/0",
                _mints(d),
                shown,
            ]
        )
    return table(
        [
            "DEVICE ID",
            "HOSTNAME",
            "OS",
            "AGENT",
            "LAST HEARTBEAT",
            "SENSOR",
            "PLANTED",
            "MINTS/WINDOW",
            "STATE",
        ],
        rows,
    )


def _selfreport(health: Mapping[str, Any]) -> str | None:
    selfreport = as_dict(health.get("selfreport"))
    if not selfreport:
        return None
    if not selfreport.get("enabled"):
        return "disabled"
    if selfreport.get("running"):
        restarts = f", restarted {text(selfreport.get('restarts'))}x" if selfreport.get("restarts") else ""
        refused, busy = text(selfreport.get("refused")), text(selfreport.get("busy"))
        return f"running ({refused} refused, {busy} busy{restarts})"
    return f"DOWN: {text(selfreport.get('error'))}"


def device_report(device: Mapping[str, Any], credentials: Sequence[Mapping[str, Any]] | None) -> str:
    health = as_dict(device.get("health"))
    sensor = _sensor(device)
    targets = _targets(device)
    parts = [
        f"DEVICE {text(device.get('device_id'))}: {text(device.get('hostname'))}"
        + ("  [STALE: no recent heartbeat]" if device.get("stale") else "")
        + (f"  [RETIRED at {text(device.get('retired_at'))}]" if device.get("retired_at") else ""),
        fields(
            [
                ("os", " ".join(x for x in (device.get("os"), device.get("os_version")) if x) or None),
                ("serial", device.get("serial")),
                ("users", device.get("users")),
                ("agent version", device.get("agent_version")),
                ("enrolled at", device.get("enrolled_at")),
                ("last heartbeat", device.get("last_heartbeat_at")),
                ("stale", device.get("stale")),
                ("retired at", device.get("retired_at")),
            ]
        ),
        section(
            "SENSOR",
            fields(
                [
                    ("name", sensor.get("name")),
                    ("mode", sensor.get("mode")),
                    ("healthy", sensor.get("healthy")),
                    ("error", sensor.get("error")),
                    ("lost events", sensor.get("lost_events")),
                    ("last event at", health.get("last_event_at")),
                    ("spool pending", health.get("spool_pending")),
                    ("spool dropped", health.get("spool_dropped")),
                    ("refused by the issuer", health.get("spool_rejected")),
                    ("not written to the read log", health.get("readlog_failed")),
                    ("not written to the spool", health.get("spool_failed")),
                    ("deadman", _deadman_text(health.get("deadman"))),
                    ("self-report socket", _selfreport(health)),
                ]
            )
            if sensor or health
            else "",
        ),
        section(
            f"COVERAGE: {coverage_state(device).replace('_', ' ').upper()}",
            "\n".join(f"  - {text(r)}" for r in as_list(as_dict(device.get("coverage")).get("reasons"))),
        ),
        section(
            "MINTING (this device's token)",
            fields(
                [
                    ("minted this window", as_dict(device.get("minting")).get("minted_in_window")),
                    ("window limit", as_dict(device.get("minting")).get("window_limit")),
                    ("window ends at", as_dict(device.get("minting")).get("window_ends_at")),
                    ("refused (total)", as_dict(device.get("minting")).get("refused")),
                    ("last refused at", as_dict(device.get("minting")).get("last_refused_at")),
                ]
            )
            if device.get("minting")
            else "",
        ),
        section(
            f"PLANTED TARGETS ({sum(1 for t in targets if t.get('planted'))}/{len(targets)} planted)",
            table(
                ["PATH", "USER", "PROFILE", "ACCESS KEY", "PLANTED", "ERROR"],
                [
                    [
                        t.get("path"),
                        t.get("local_user"),
                        t.get("profile"),
                        t.get("access_key_id"),
                        t.get("planted"),
                        t.get("error"),
                    ]
                    for t in targets
                ],
            )
            if targets
            else "",
        ),
    ]
    if credentials is not None:
        parts.append(section("CREDENTIALS", credentials_table(credentials) if credentials else ""))
    return "\n\n".join(parts)


def credentials_table(credentials: Sequence[Mapping[str, Any]]) -> str:
    return table(
        ["CREDENTIAL ID", "ACCESS KEY", "STATUS", "USER", "PATH", "PROFILE", "CREATED"],
        [
            [
                c.get("credential_id"),
                c.get("access_key_id"),
                c.get("status"),
                c.get("local_user"),
                c.get("path"),
                c.get("profile"),
                c.get("created_at"),
            ]
            for c in credentials
        ],
    )


def credential_report(cred: Mapping[str, Any]) -> str:
    device = as_dict(cred.get("device"))
    status = text(cred.get("status"))
    warning = ""
    if status in ("retired", "revoked", "expired"):
        warning = f"  [{status.upper()}: no longer in the file, still a canary]"
    return "\n\n".join(
        [
            f"ACCESS KEY {text(cred.get('access_key_id'))}: {status}{warning}",
            section(
                "WHERE IT WAS PLANTED",
                fields(
                    [
                        ("host", device.get("hostname")),
                        ("device id", cred.get("device_id") or device.get("device_id")),
                        (
                            "os",
                            " ".join(x for x in (device.get("os"), device.get("os_version")) if x) or None,
                        ),
                        ("user", cred.get("local_user")),
                        ("path", cred.get("path")),
                        ("profile", cred.get("profile")),
                        ("device last heartbeat", device.get("last_heartbeat_at")),
                        ("device stale", device.get("stale")),
                    ]
                ),
            ),
            section(
                "CREDENTIAL",
                fields(
                    [
                        ("credential id", cred.get("credential_id")),
                        ("backend", cred.get("backend")),
                        ("account", cred.get("account")),
                        ("principal", cred.get("principal_arn") or cred.get("principal_name")),
                        ("created at", cred.get("created_at")),
                        ("expires at", cred.get("expires_at")),
                        ("retired at", cred.get("retired_at")),
                        ("revoked at", cred.get("revoked_at")),
                    ]
                ),
            ),
        ]
    )


def dead_letters_report(counters: Mapping[str, int], entries: Sequence[Mapping[str, Any]]) -> str:
    """Skipped-input counters, then each dead letter: when, source, why, and what it was."""
    skipped = [(name, value) for name, value in sorted(counters.items()) if value]
    parts = [section("SKIPPED INPUT (counters)", fields(skipped))]
    lines = []
    for entry in entries:
        where = f" device {text(entry.get('device_id'))}" if entry.get("device_id") else ""
        when, source = text(entry.get("received_at")), text(entry.get("source"))
        lines.append(f"  #{text(entry.get('dead_letter_id'))}  {when}  {source}{where}")
        lines.append(f"      why:  {text(entry.get('reason'))}")
        lines.append(f"      what: {clip(text(entry.get('payload')), 200)}")
    parts.append(section(f"DEAD LETTERS ({len(entries)}, newest first)", "\n".join(lines)))
    return "\n\n".join(parts)
