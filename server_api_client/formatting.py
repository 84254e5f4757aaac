"""Plain-text rendering for the `tripkey` responder CLI: tables and multi-section reports.

Everything renders from the issuer's JSON dicts with ``.get()``: a field the issuer does not send
shows as ``-`` instead of crashing the responder's terminal in the middle of an incident. Every value
goes through `text()`, which spells out control and bidirectional characters
(server_api_client.terminal): a crafted command line or user agent cannot drive the terminal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from server_api_client.terminal import visible

MAX_CELL = 60
NONE = "-"


def text(value: Any) -> str:
    """One value as a short human string (lists joined, None as '-', times without the 'T'), with
    control and bidirectional characters spelled out."""
    if value is None or value == "" or value == [] or value == {}:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(text(item) for item in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{visible(str(k))}={text(v)}" for k, v in value.items())
    value = str(value)
    if len(value) >= 19 and value[4:5] == "-" and value[10:11] == "T":
        # ISO time: a space instead of the T and whole seconds read easier; --json keeps the precision.
        head, tail = value[:19].replace("T", " "), value[19:]
        if tail.startswith("."):
            tail = tail.lstrip(".0123456789")
        return visible(head + ("Z" if tail in ("Z", "+00:00") else tail))
    return visible(value)


def clip(value: str, width: int) -> str:
    """At most `width` characters, the cut marked."""
    value = value.replace("\n", " ")
    return value if len(value) <= width else value[: width - 1] + "…"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], max_cell: int = MAX_CELL) -> str:
    """A left-aligned text table; long cells are clipped with '…' (use --json for everything)."""
    cells = [[clip(text(cell), max_cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def fields(pairs: Iterable[tuple[str, Any]], indent: str = "  ") -> str:
    """Aligned 'label: value' lines."""
    items = [(label, text(value)) for label, value in pairs]
    width = max((len(label) for label, _ in items), default=0)
    return "\n".join(f"{indent}{(label + ':').ljust(width + 1)} {value}" for label, value in items)


def section(title: str, body: str) -> str:
    return f"{title}\n{body}" if body else f"{title}\n  (none)"


def as_dict(value: Any) -> dict[str, Any]:
    """A part of the issuer's JSON that may be absent (an older issuer) as a dict."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def cmdline(value: Any) -> str:
    return " ".join(visible(str(part)) for part in value) if isinstance(value, list) else text(value)


# ------------------------------------------------------------------------------------------ alerts


def alerts_table(alerts: Sequence[Mapping[str, Any]]) -> str:
    return table(
        ["ID", "STATUS", "SEVERITY", "KIND", "HOST", "ACCESS KEY", "LAST SEEN", "EVENTS", "VERDICT", "TITLE"],
        [
            [
                a.get("alert_id"),
                a.get("status"),
                a.get("severity"),
                a.get("kind"),
                a.get("hostname"),
                a.get("access_key_id"),
                a.get("last_seen"),
                a.get("event_count"),
                a.get("verdict_hint") or as_dict(a.get("verdict")).get("hint"),
                a.get("title"),
            ]
            for a in alerts
        ],
    )


def _same_reader(read: Mapping[str, Any]) -> tuple[Any, ...]:
    return (read.get("pid"), read.get("exe"), str(read.get("cmdline")), bool(read.get("after_first_use")))


def _reason_text(reason: Any) -> Any:
    """A verdict reason's sentence (reasons are objects since alert schema 1.0)."""
    return reason.get("text") if isinstance(reason, dict) else reason


def _reads_block(reads: list[Any]) -> str:
    """One entry per reader: an AWS tool opens the file several times in one run, and a responder
    wants to see each process once (with how many opens), not a wall of repeats."""
    groups: list[tuple[dict[str, Any], int]] = []
    for read in (as_dict(r) for r in reads):
        if groups and _same_reader(groups[-1][0]) == _same_reader(read):
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((read, 1))
    lines = []
    for read, opens in groups:
        marker = " (after first use)" if read.get("after_first_use") else ""
        repeat = f"  x{opens} opens" if opens > 1 else ""
        lines.append(
            f"  {text(read.get('time'))}  pid {text(read.get('pid'))}  user {text(read.get('user'))}"
            f"  [{text(read.get('classification'))}]{marker}{repeat}"
        )
        lines.append(f"      exe: {text(read.get('exe'))}")
        lines.append(f"      cmdline: {cmdline(read.get('cmdline'))}")
        if read.get("cwd") or read.get("start_time"):
            lines.append(f"      cwd: {text(read.get('cwd'))}  started: {text(read.get('start_time'))}")
        provenance = _provenance_line(read)
        if provenance:
            lines.append(f"      provenance: {provenance}")
        ancestors = [as_dict(a) for a in as_list(read.get("ancestors"))]
        if ancestors:
            chain = " <- ".join(
                f"{text(a.get('exe'))}[{text(a.get('pid'))}"
                + (f" {text(a.get('user'))}" if a.get("user") else "")
                + "]"
                for a in ancestors
            )
            lines.append(f"      parents: {chain}")
    return "\n".join(lines)


def _provenance_line(read: Mapping[str, Any]) -> str:
    """Where the reader's executable came from, in one line (and a claim it did not support)."""
    exe = as_dict(as_dict(read.get("provenance")).get("exe"))
    parts = []
    if exe.get("error"):
        parts.append(str(exe["error"]))
    elif exe:
        parts.append(f"owner {text(exe.get('owner') or exe.get('uid'))}")
        if exe.get("user_writable"):
            parts.append(f"user-writable ({text(exe.get('writable_via'))})")
        if exe.get("user_place"):
            parts.append(f"in {exe['user_place']}")
        if exe.get("package_db") or exe.get("package"):
            parts.append(f"package {exe.get('package') or 'none'}")
        if exe.get("sha256"):
            parts.append(f"sha256 {str(exe['sha256'])[:12]}…")
    if read.get("claimed_label"):
        parts.append(f"claims to be {read['claimed_label']}: masquerading")
    return ", ".join(parts)


def _addresses(aws: Mapping[str, Any]) -> list[str]:
    return [
        f"{text(as_dict(a).get('address'))} ({text(as_dict(a).get('meaning'))})"
        for a in as_list(aws.get("source_addresses"))
    ]


def _note_line(note: Any) -> str:
    if isinstance(note, Mapping):
        who = note.get("by") or note.get("actor") or note.get("token") or ""
        what = note.get("action") or note.get("status") or ""
        body = note.get("note") or note.get("text") or ""
        parts = [text(note.get("time") or note.get("at")), text(what), text(who), text(body)]
        return "  " + "  ".join(p for p in parts if p and p != NONE)
    return f"  {text(note)}"


def alert_report(alert: Mapping[str, Any]) -> str:
    """The full alert as a responder reads it, from headline to delivery status."""
    summary = as_dict(alert.get("summary"))
    enrichment = as_dict(alert.get("enrichment"))
    verdict = as_dict(alert.get("verdict"))
    device = as_dict(enrichment.get("device"))
    placement = as_dict(enrichment.get("placement"))
    credential = as_dict(enrichment.get("credential"))
    health = as_dict(enrichment.get("agent_health"))
    sensor = as_dict(health.get("sensor"))
    reads = as_list(enrichment.get("reads"))
    window = as_dict(enrichment.get("reads_window"))
    aws = as_dict(enrichment.get("aws"))
    selftest = " [SELFTEST]" if alert.get("selftest") else ""

    parts = [
        f"ALERT {text(alert.get('alert_id'))}{selftest}: {text(alert.get('title'))}",
        fields(
            [
                ("severity", alert.get("severity")),
                ("status", alert.get("status")),
                ("kind", alert.get("kind")),
                ("first seen", alert.get("first_seen")),
                ("last seen", alert.get("last_seen")),
                ("events", alert.get("event_count")),
                ("ATT&CK", as_dict(alert.get("siem")).get("attack_technique_ids") or None),
            ]
        ),
        section(
            f"VERDICT HINT: {text(verdict.get('hint'))}",
            "\n".join(f"  - {text(_reason_text(r))}" for r in as_list(verdict.get("reasons"))),
        ),
        section(
            "CREDENTIAL AND PLACEMENT",
            fields(
                [
                    ("host", f"{text(device.get('hostname'))} ({text(device.get('device_id'))})"),
                    ("os", " ".join(x for x in (device.get("os"), device.get("os_version")) if x) or None),
                    ("serial", device.get("serial")),
                    ("local user", placement.get("local_user")),
                    ("path", placement.get("path")),
                    ("profile", placement.get("profile")),
                    ("access key id", credential.get("access_key_id")),
                    ("credential id", credential.get("credential_id")),
                    ("principal", credential.get("principal_arn") or credential.get("principal_name")),
                    ("planted at", credential.get("created_at")),
                    ("retired at", credential.get("retired_at")),
                    ("revoked at", credential.get("revoked_at")),
                ]
            ),
        ),
        section(
            "AWS ACTIVITY",
            fields(
                [
                    ("first seen", alert.get("first_seen")),
                    ("last seen", alert.get("last_seen")),
                    ("event count", alert.get("event_count")),
                    ("source IPs", _addresses(aws) or summary.get("source_ips")),
                    ("user agents", summary.get("user_agents")),
                    ("agent families", aws.get("user_agent_families")),
                    ("API calls", summary.get("event_names")),
                    ("kinds of calls", aws.get("call_kinds")),
                    ("regions", summary.get("regions")),
                    ("error codes", summary.get("error_codes")),
                    ("detected via", summary.get("detection_sources")),
                ]
            ),
        ),
        section(
            f"READS OF THE FILE ({len(reads)}; window {text(window.get('from'))}"
            f" .. {text(window.get('to'))})",
            _reads_block(reads),
        ),
        section(
            "SELF-REPORTS",
            "\n".join(
                f"  {text(report.get('time'))}  {text(report.get('user'))}: {text(report.get('note'))}"
                for report in map(as_dict, as_list(enrichment.get("self_reports")))
            ),
        ),
        section(
            "AGENT HEALTH",
            fields(
                [
                    ("last heartbeat", health.get("last_heartbeat_at")),
                    ("stale at first use", health.get("stale_at_use")),
                    ("stale now", health.get("stale_now")),
                    (
                        "sensor",
                        " ".join(str(x) for x in (sensor.get("name"), sensor.get("mode")) if x) or None,
                    ),
                    ("sensor healthy", health.get("sensor_healthy")),
                    ("sensor error", sensor.get("error")),
                    ("lost events", health.get("lost_events")),
                    ("not in the host's read log", health.get("readlog_failed") or None),
                ]
            )
            if health
            else "",
        ),
        section(
            "DELIVERIES",
            "\n".join(
                f"  {text(d.get('sink'))}"
                + (f" (update #{d['revision']})" if d.get("revision") else "")
                + f": {text(d.get('status'))}"
                f" (attempts {text(d.get('attempts'))}, delivered {text(d.get('delivered_at'))}"
                f", last error {text(d.get('last_error'))})"
                for d in map(as_dict, as_list(alert.get("deliveries")))
            ),
        ),
    ]
    updates = [as_dict(u) for u in as_list(alert.get("updates"))]
    if updates:
        parts.append(
            section(
                "UPDATES SENT",
                "\n".join(
                    f"  #{text(u.get('revision'))} {text(u.get('at'))}: "
                    + "; ".join(str(change) for change in as_list(u.get("changes")))
                    for u in updates
                ),
            )
        )
    notes = as_list(alert.get("notes"))
    if notes:
        parts.append(section("NOTES", "\n".join(_note_line(n) for n in notes)))
    return "\n\n".join(parts)


def format_alert(alert: Mapping[str, Any]) -> str:
    """The alert report (`tripkey alerts show`); the name demo/run.py imports."""
    return alert_report(alert)


# ------------------------------------------------------------------------------------------ reads


def reads_table(reads: Sequence[Mapping[str, Any]]) -> str:
    return table(
        ["TIME", "PID", "USER", "CLASSIFICATION", "EXE", "CMDLINE", "PATH"],
        [
            [
                r.get("time"),
                r.get("pid"),
                r.get("user") if r.get("user") is not None else r.get("uid"),
                r.get("classification"),
                r.get("exe"),
                cmdline(r.get("cmdline")),
                r.get("path"),
            ]
            for r in reads
        ],
    )
