"""The alert's `siem` block: one flat object with the fields a SOC queries, on the full alert and on
every sink payload (docs/schema.md, "The siem block").

Why one object of scalars rather than fields spread over the top level: SIEM pipelines extract JSON
by path, and one stable prefix (`siem.host`, `siem.reader_exe`) becomes flat columns everywhere
(Splunk spath, Elastic's dotted fields, Sentinel's parse_json) without a mapping, while the alert's own
top-level keys keep their meaning. Inside the block every value is a string, number, boolean, null or
a list of strings, never a nested object or a list of objects, which SIEMs index poorly.

The decisive reader is the read the verdict rests on: the read of the most severe reason that names
one, else the last read of the file before the key's first use (the most likely way it left). None when
no read explains the use (the key travelled without being read on this host).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from issuer.alerts.service import AWS_KEY_PUBLISHED, CANARY_USE, PRINCIPAL_TAMPER

# MITRE ATT&CK (Enterprise), https://attack.mitre.org/techniques/<id>/
ATTACK_TECHNIQUES = {
    "T1552.001": "Unsecured Credentials: Credentials In Files",
    "T1078.004": "Valid Accounts: Cloud Accounts",
    "T1098": "Account Manipulation",
}
# The tactic each technique is reported under here (a technique can serve several).
ATTACK_TACTICS = {
    "T1552.001": ("TA0006", "Credential Access"),
    "T1078.004": ("TA0001", "Initial Access"),
    "T1098": ("TA0003", "Persistence"),
}
# A canary key was taken from a credentials file (T1552.001) and used as a valid cloud account
# (T1078.004); tampering with the canary principal in IAM is account manipulation (T1098). A self-test
# is no attack.
TECHNIQUES_BY_KIND = {
    CANARY_USE: ("T1552.001", "T1078.004"),
    AWS_KEY_PUBLISHED: ("T1552.001", "T1078.004"),
    PRINCIPAL_TAMPER: ("T1552.001", "T1078.004", "T1098"),
}

SELF_TEST_LABEL = "self_test"


def as_dict(value: Any) -> dict[str, Any]:
    """A section of an alert's JSON that may be absent or malformed (an older alert), as a dict."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class AlertSections(NamedTuple):
    """The sections of an alert's JSON every rendering reads (SIEM block, OCSF, ECS); absent ones empty."""

    enrichment: dict[str, Any]
    device: dict[str, Any]
    placement: dict[str, Any]
    credential: dict[str, Any]
    aws: dict[str, Any]
    siem: dict[str, Any]
    verdict: dict[str, Any]
    update: dict[str, Any]


def alert_sections(alert: dict[str, Any]) -> AlertSections:
    enrichment = as_dict(alert.get("enrichment"))
    return AlertSections(
        enrichment,
        as_dict(enrichment.get("device")),
        as_dict(enrichment.get("placement")),
        as_dict(enrichment.get("credential")),
        as_dict(enrichment.get("aws")),
        as_dict(alert.get("siem")),
        as_dict(alert.get("verdict")),
        as_dict(alert.get("update")),
    )


def decisive_read(alert: dict[str, Any]) -> dict[str, Any] | None:
    """The read the verdict rests on (module docstring), from the alert's JSON."""
    enrichment = as_dict(alert.get("enrichment"))
    reads = [r for r in as_list(enrichment.get("reads")) if isinstance(r, dict)]
    by_id = {r.get("event_id"): r for r in reads if r.get("event_id")}
    for reason in as_list(as_dict(alert.get("verdict")).get("reasons")):
        if isinstance(reason, dict) and reason.get("hint") and reason.get("read_event_id") in by_id:
            return by_id[reason["read_event_id"]]
    before = [r for r in reads if not r.get("after_first_use") and r.get("classification") != SELF_TEST_LABEL]
    return before[-1] if before else None


def _sha256(read: dict[str, Any]) -> str | None:
    exe = as_dict(as_dict(read.get("provenance")).get("exe"))
    sha = exe.get("sha256")
    return sha if isinstance(sha, str) and sha else None


def _strings(values: Any) -> list[str]:
    return [str(v) for v in as_list(values) if v is not None]


def siem_block(alert: dict[str, Any]) -> dict[str, Any]:
    """The flat block, from the alert's JSON (everything it says is said elsewhere in the alert)."""
    enrichment = as_dict(alert.get("enrichment"))
    device = as_dict(enrichment.get("device"))
    placement = as_dict(enrichment.get("placement"))
    credential = as_dict(enrichment.get("credential"))
    aws = as_dict(enrichment.get("aws"))
    summary = as_dict(alert.get("summary"))
    read = decisive_read(alert) or {}
    cmdline = _strings(read.get("cmdline"))
    techniques = list(TECHNIQUES_BY_KIND.get(str(alert.get("kind")), ()))
    return {
        "alert_id": alert.get("alert_id"),
        "alert_kind": alert.get("kind"),
        "severity": alert.get("severity"),
        "status": alert.get("status"),
        "title": alert.get("title"),
        "selftest": bool(alert.get("selftest")),
        "first_seen": alert.get("first_seen"),
        "last_seen": alert.get("last_seen"),
        "event_count": alert.get("event_count"),
        "verdict_hint": as_dict(alert.get("verdict")).get("hint"),
        "host": device.get("hostname"),
        "device_id": device.get("device_id"),
        "os": device.get("os"),
        "local_user": placement.get("local_user"),
        "file_path": placement.get("path"),
        "profile": placement.get("profile"),
        "credential_id": credential.get("credential_id"),
        "access_key_id": credential.get("access_key_id"),
        "principal_name": credential.get("principal_name"),
        "principal_arn": credential.get("principal_arn"),
        "account_id": credential.get("account_id"),
        "first_source_ip": aws.get("first_source_ip"),
        "last_source_ip": aws.get("last_source_ip"),
        "first_user_agent": aws.get("first_user_agent"),
        "last_user_agent": aws.get("last_user_agent"),
        "source_ips": _strings(summary.get("source_ips")),
        "user_agents": _strings(summary.get("user_agents")),
        "event_names": _strings(summary.get("event_names")),
        "error_codes": _strings(summary.get("error_codes")),
        "reader_event_id": read.get("event_id"),
        "reader_read_at": read.get("time"),
        "reader_pid": read.get("pid"),
        "reader_ppid": read.get("ppid"),
        "reader_start_time": read.get("start_time"),
        "reader_exe": read.get("exe"),
        "reader_argv": cmdline,
        "reader_cmdline": " ".join(cmdline) if cmdline else None,
        "reader_cwd": read.get("cwd"),
        "reader_user": read.get("user"),
        "reader_uid": read.get("uid"),
        "reader_sha256": _sha256(read) if read else None,
        "reader_classification": read.get("classification"),
        "attack_technique_ids": techniques,
        "attack_technique_names": [ATTACK_TECHNIQUES[t] for t in techniques],
        "attack_tactic_ids": [ATTACK_TACTICS[t][0] for t in techniques],
    }


__all__ = ["ATTACK_TACTICS", "ATTACK_TECHNIQUES", "TECHNIQUES_BY_KIND", "decisive_read", "siem_block"]
