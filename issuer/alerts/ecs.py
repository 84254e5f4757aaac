"""An alert as an Elastic Common Schema document, ECS 8.17.0.

Field names, types and allowed values from the public ECS definitions (github.com/elastic/ecs, tag
v8.17.0: generated/ecs/ecs_flat.yml; also elastic.co/guide/en/ecs/8.17). ECS requires `@timestamp` and
`ecs.version`; `event.kind`, `event.category` and `event.type` take only their allowed values, and
each category only its expected types (intrusion_detection: allowed, denied, info).

What goes where (docs/schema.md, "ECS"):
  event.*        the alert: kind alert, category intrusion_detection, type info, id = alert_id,
                 created/start/end, severity (low 21, medium 47, high 73, critical 99 as Elastic's
                 detection rules score them), reason = the most severe verdict reason's sentence
  host.*         the device that held the canary (id = device_id)
  user.name      the placement's local user (whose file it is)
  process.*      the decisive reader (issuer.alerts.siem): pid, executable, args, start, cwd, SHA-256,
                 its user, its parent's pid
  file.*         the planted credentials file
  source.ip, user_agent.original   the first AWS call's address and user agent
  cloud.*        provider aws, the canary account, the first call's region and service
  threat.*       MITRE ATT&CK techniques, sub-techniques and tactics
  related.*      every address, user name, host name and hash in the alert
  tripkey.*      what ECS has no field for: the verdict (rules, hints, sentences), the `siem` block, the
                 AWS events one by one, the alert's schema version
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from issuer import __version__
from issuer.alerts.siem import (
    ATTACK_TACTICS,
    ATTACK_TECHNIQUES,
    alert_sections,
    as_dict,
    as_list,
    decisive_read,
)

ECS_VERSION = "8.17.0"
SEVERITY = {"low": 21, "medium": 47, "high": 73, "critical": 99}
OS_TYPES = {"linux": "linux", "darwin": "macos", "macos": "macos", "windows": "windows"}


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    """Leave out what is not known: ECS has no null, an absent field says it."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = _compact(value)
        if value is not None and value != [] and value != {}:
            out[key] = value
    return out


def _ip(value: Any) -> str | None:
    """CloudTrail's sourceIPAddress may be "AWS Internal" or a host name; ECS `ip` fields take addresses."""
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        return None


def _threat(techniques: list[str]) -> dict[str, Any]:
    parents = [t.split(".", 1)[0] for t in techniques]
    subs = [t for t in techniques if "." in t]
    return {
        "framework": "MITRE ATT&CK",
        "technique": {
            "id": list(dict.fromkeys(parents)),
            "name": list(dict.fromkeys(ATTACK_TECHNIQUES[t].split(": ", 1)[0] for t in techniques)),
            "subtechnique": {
                "id": subs,
                "name": [ATTACK_TECHNIQUES[t].split(": ", 1)[1] for t in subs],
            },
        },
        "tactic": {
            "id": list(dict.fromkeys(ATTACK_TACTICS[t][0] for t in techniques)),
            "name": list(dict.fromkeys(ATTACK_TACTICS[t][1] for t in techniques)),
        },
    }


def _process(read: dict[str, Any]) -> dict[str, Any]:
    exe = read.get("exe") if isinstance(read.get("exe"), str) else None
    argv = [str(a) for a in as_list(read.get("cmdline"))]
    uid = read.get("uid")
    ppid = read.get("ppid")
    return {
        "pid": read.get("pid"),
        "name": os.path.basename(exe) if exe else None,
        "executable": exe,
        "args": argv,
        "args_count": len(argv) or None,
        "command_line": " ".join(argv) if argv else None,
        "start": read.get("start_time"),
        "working_directory": read.get("cwd"),
        "hash": {"sha256": as_dict(as_dict(read.get("provenance")).get("exe")).get("sha256")},
        "user": {"name": read.get("user"), "id": str(uid) if isinstance(uid, int) else None},
        "parent": {"pid": ppid if isinstance(ppid, int) else None},
    }


def to_ecs(alert: dict[str, Any]) -> dict[str, Any]:
    """The alert (its native JSON, issuer.alerts.serialize) as an ECS 8.17.0 document."""
    _enrichment, device, placement, credential, aws, siem, verdict, update = alert_sections(alert)
    calls = [c for c in as_list(aws.get("calls")) if isinstance(c, dict)]
    reader = decisive_read(alert) or {}
    path = placement.get("path") if isinstance(placement.get("path"), str) else None
    reasons = [as_dict(r) for r in as_list(verdict.get("reasons"))]
    techniques = list(siem.get("attack_technique_ids") or [])
    addresses = [ip for ip in (_ip(v) for v in siem.get("source_ips") or []) if ip]
    severity = SEVERITY.get(str(alert.get("severity")))
    return _compact(
        {
            "@timestamp": (update.get("at") if update else None) or alert.get("updated_at"),
            "ecs": {"version": ECS_VERSION},
            "message": alert.get("title"),
            "tags": [tag for tag in ("tripkey", alert.get("kind"), verdict.get("hint")) if tag],
            "labels": {"verdict_hint": verdict.get("hint"), "alert_status": alert.get("status")},
            "event": {
                "kind": "alert",
                "category": ["intrusion_detection"],
                "type": ["info"],
                "id": alert.get("alert_id"),
                "action": alert.get("kind"),
                "module": "tripkey",
                "dataset": "tripkey.alert",
                "provider": "tripkey-issuer",
                "severity": severity,
                "risk_score": float(severity) if severity is not None else None,
                "created": alert.get("created_at"),
                "start": alert.get("first_seen"),
                "end": alert.get("last_seen"),
                "reason": next((r.get("text") for r in reasons if r.get("hint")), None),
            },
            "rule": {"name": f"tripkey {alert.get('kind')}", "ruleset": "tripkey"},
            "observer": {"vendor": "Tripkey", "product": "tripkey-issuer", "version": __version__},
            "host": {
                "id": device.get("device_id"),
                "name": device.get("hostname"),
                "hostname": device.get("hostname"),
                "os": {
                    "type": OS_TYPES.get(str(device.get("os") or "").lower()),
                    "version": device.get("os_version"),
                },
            },
            "user": {"name": placement.get("local_user")},
            "file": {
                "path": path,
                "name": os.path.basename(path) if path else None,
                "directory": os.path.dirname(path) if path else None,
            },
            "process": _process(reader) if reader else None,
            "source": {"ip": _ip(siem.get("first_source_ip"))},
            "user_agent": {"original": siem.get("first_user_agent")},
            "cloud": {
                "provider": "aws",
                "account": {"id": credential.get("account_id")},
                "region": next((c.get("region") for c in calls if c.get("region")), None),
                "service": {
                    "name": next((c.get("event_source") for c in calls if c.get("event_source")), None)
                },
            },
            "threat": _threat(techniques) if techniques else None,
            "related": {
                "ip": list(dict.fromkeys(addresses)),
                "user": list(
                    dict.fromkeys(u for u in (placement.get("local_user"), reader.get("user")) if u)
                ),
                "hosts": [device["hostname"]] if device.get("hostname") else [],
                "hash": [siem["reader_sha256"]] if siem.get("reader_sha256") else [],
            },
            "tripkey": {
                "schema_version": alert.get("schema_version"),
                "alert_id": alert.get("alert_id"),
                "access_key_id": credential.get("access_key_id"),
                "principal_arn": credential.get("principal_arn"),
                "verdict": verdict,
                "siem": siem,
                "aws_events": calls,
                "update": update or None,
            },
        }
    )


__all__ = ["ECS_VERSION", "to_ecs"]
