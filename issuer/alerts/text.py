"""The alert as text for people: the headline and body of the text-only sinks (Slack, email).

Every line is one value or more, none of them ours: each passes through issuer.textsafe.visible, so a
hostname, a reader's command line or a CloudTrail user agent cannot drive a terminal or fold a header.
"""

from __future__ import annotations

from typing import Any

from issuer.textsafe import visible


def headline(alert: dict[str, Any]) -> str:
    verdict = alert.get("verdict") or {}
    update = alert.get("update") if isinstance(alert.get("update"), dict) else None
    marker = f" UPDATE {update.get('revision')}" if update else ""
    severity = str(alert.get("severity") or "?").upper()
    return visible(f"[Tripkey {severity}{marker}] {alert.get('title')} — hint: {verdict.get('hint')}")


def _reason_text(reason: Any) -> str:
    return str(reason.get("text")) if isinstance(reason, dict) else str(reason)


def _siem_lines(siem: dict[str, Any]) -> list[str]:
    """The fields a SOC queries (the alert's `siem` block), for text-only sinks (Slack, email)."""
    reader = (
        f"reader: {siem.get('reader_exe')} pid {siem.get('reader_pid')} user {siem.get('reader_user')} "
        f"started {siem.get('reader_start_time') or '?'} sha256 {siem.get('reader_sha256') or '?'}"
        if siem.get("reader_exe") or siem.get("reader_pid")
        else "reader: none recorded before the first use"
    )
    return [
        f"key: {siem.get('access_key_id')}  principal: {siem.get('principal_arn')}"
        f"  account: {siem.get('account_id')}",
        f"first source: {siem.get('first_source_ip')} ({siem.get('first_user_agent')})",
        f"last source: {siem.get('last_source_ip')} ({siem.get('last_user_agent')})",
        reader,
        f"ATT&CK: {', '.join(siem.get('attack_technique_ids') or []) or 'none'}",
    ]


def text_body(alert: dict[str, Any]) -> str:
    summary = alert.get("summary") or {}
    enrichment = alert.get("enrichment") or {}
    device = enrichment.get("device") or {}
    placement = enrichment.get("placement") or {}
    raw_siem = alert.get("siem")
    siem: dict[str, Any] = raw_siem if isinstance(raw_siem, dict) else {}
    lines = [
        headline(alert),
        f"alert: {alert.get('alert_id')}  kind: {alert.get('kind')}  selftest: {alert.get('selftest')}",
        f"first seen: {alert.get('first_seen')}  events: {alert.get('event_count')}",
        f"host: {device.get('hostname')} ({device.get('device_id')})"
        f"  local user: {placement.get('local_user')}  file: {placement.get('path')}"
        f"  profile: {placement.get('profile')}",
        *[f"what changed: {change}" for change in ((alert.get("update") or {}).get("changes") or [])],
        f"calls: {', '.join(summary.get('event_names') or [])}",
        f"source IPs: {', '.join(summary.get('source_ips') or [])}",
        f"user agents: {', '.join(summary.get('user_agents') or [])}",
        *_siem_lines(siem),
        "reasons:",
        *[f"  - {_reason_text(reason)}" for reason in (alert.get("verdict") or {}).get("reasons", [])],
    ]
    for read in (enrichment.get("reads") or [])[:10]:
        lines.append(
            f"read {read.get('time')}: {read.get('exe')} {' '.join(map(str, read.get('cmdline') or []))} "
            f"user={read.get('user')} class={read.get('classification')}"
        )
    # Each line is one value or more, none of them ours: a newline inside a value is spelled out too.
    return "\n".join(visible(line) for line in lines)


__all__ = ["headline", "text_body"]
