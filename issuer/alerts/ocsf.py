"""An alert as an OCSF Detection Finding (class_uid 2004), OCSF schema 1.8.0.

Mapped from the public OCSF schema (github.com/ocsf/ocsf-schema, tag 1.8.0: events/findings/
detection_finding.json, events/findings/finding.json, events/base_event.json, the objects/ it names and
dictionary.json for types and enums; also browsable at schema.ocsf.io/1.8.0). Profiles applied (named in
`metadata.profiles`): cloud (the key is an AWS credential), host (the device that held it),
security_control (ATT&CK in `attacks`).

What goes where (docs/schema.md, "OCSF"):
  finding_info       the alert: uid = alert_id, title, types = [kind], first/last seen, ATT&CK
  device             the host that held the canary (uid = device_id), its local user as owner
  actor.process      the decisive reader (issuer.alerts.siem), with its file (exe, SHA-256) and user
  evidences[]        one per read of the file (process + the planted file) and one per AWS event
                     (api.operation/service/request.uid, src_endpoint.ip, http_request.user_agent,
                     user.credential_uid = the access key id)
  cloud              provider AWS, the canary account
  observables[]      hostname, source addresses, user names, the key, the reader's hash
  unmapped.tripkey   the alert's own `siem` block and verdict (rules, hints, sentences)

Times are OCSF timestamps (milliseconds since the epoch, UTC).
"""

from __future__ import annotations

import datetime as dt
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

OCSF_VERSION = "1.8.0"
CLASS_UID = 2004  # Detection Finding
CATEGORY_UID = 2  # Findings
ACTIVITY = {1: "Create", 2: "Update"}
SEVERITY = {"low": (2, "Low"), "medium": (3, "Medium"), "high": (4, "High"), "critical": (5, "Critical")}
STATUS = {"open": (1, "New"), "acknowledged": (2, "In Progress"), "resolved": (4, "Resolved")}
OS_TYPES = {"linux": 200, "darwin": 300, "macos": 300, "windows": 100}
MAX_EVIDENCES = 100
# Observable type ids (dictionary.json `types` and attributes with an `observable` number).
OBS_HOSTNAME, OBS_IP, OBS_USER_NAME, OBS_HASH, OBS_FILE_PATH, OBS_CREDENTIAL = 1, 2, 4, 8, 45, 19


def _ms(value: Any) -> int | None:
    """An RFC 3339 time of the alert as an OCSF timestamp."""
    if not isinstance(value, str) or not value:
        return None
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return int(parsed.timestamp() * 1000)


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    """Drop absent values: OCSF omits an attribute rather than sending null."""
    return {k: v for k, v in data.items() if v is not None and v != [] and v != {}}


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def _attacks(techniques: list[str]) -> list[dict[str, Any]]:
    attacks = []
    for tid in techniques:
        parent, _, _sub = tid.partition(".")
        full = ATTACK_TECHNIQUES[tid]
        parent_name, _, sub_name = full.partition(": ")
        tactic_uid, tactic_name = ATTACK_TACTICS[tid]
        attack: dict[str, Any] = {
            "technique": {"uid": parent, "name": parent_name},
            "tactic": {"uid": tactic_uid, "name": tactic_name},
        }
        if sub_name:
            attack["sub_technique"] = {"uid": tid, "name": sub_name}
        attacks.append(attack)
    return attacks


def _user(name: Any, uid: Any = None) -> dict[str, Any] | None:
    if name is None and uid is None:
        return None
    return _compact({"name": name, "uid": str(uid) if uid is not None else None})


def _process(read: dict[str, Any]) -> dict[str, Any]:
    exe = read.get("exe")
    sha = as_dict(as_dict(read.get("provenance")).get("exe")).get("sha256")
    argv = [str(a) for a in as_list(read.get("cmdline"))]
    file = None
    if isinstance(exe, str) and exe:
        file = _compact(
            {
                "name": os.path.basename(exe) or exe,
                "path": exe,
                "type_id": 1,
                "type": "Regular File",
                "hashes": [{"algorithm_id": 3, "algorithm": "SHA-256", "value": sha}] if sha else None,
            }
        )
    ppid = read.get("ppid")
    return _compact(
        {
            "pid": read.get("pid"),
            "name": os.path.basename(exe) if isinstance(exe, str) and exe else None,
            "cmd_line": " ".join(argv) if argv else None,
            "created_time": _ms(read.get("start_time")),
            "working_directory": read.get("cwd"),
            "file": file,
            "user": _user(read.get("user"), read.get("uid")),
            "parent_process": {"pid": ppid} if isinstance(ppid, int) else None,
        }
    )


def _planted_file(placement: dict[str, Any]) -> dict[str, Any] | None:
    path = placement.get("path")
    if not isinstance(path, str) or not path:
        return None
    return _compact(
        {
            "name": os.path.basename(path) or path,
            "path": path,
            "type_id": 1,
            "type": "Regular File",
            "owner": _user(placement.get("local_user")),
        }
    )


def _read_evidence(read: dict[str, Any], planted: dict[str, Any] | None) -> dict[str, Any]:
    return _compact({"name": "read", "uid": read.get("event_id"), "process": _process(read), "file": planted})


def _call_evidence(call: dict[str, Any], credential: dict[str, Any]) -> dict[str, Any]:
    operation = call.get("event_name") or call.get("call") or "unknown"
    source_ip = call.get("source_ip")
    return _compact(
        {
            "name": "aws_call",
            "uid": call.get("event_id"),
            "api": _compact(
                {
                    "operation": operation,
                    "service": _compact({"name": call.get("event_source")}) or None,
                    "request": {"uid": call["event_id"]} if call.get("event_id") else None,
                    "response": _compact({"error": call.get("error_code")}) or None,
                }
            ),
            "src_endpoint": {"ip": source_ip} if _is_ip(source_ip) else None,
            "http_request": _compact({"user_agent": call.get("user_agent")}) or None,
            "user": _compact(
                {
                    "name": credential.get("principal_name"),
                    "uid": credential.get("principal_arn"),
                    "credential_uid": credential.get("access_key_id"),
                    "type_id": 1,
                    "type": "User",
                    "account": _compact(
                        {"uid": credential.get("account_id"), "type_id": 10, "type": "AWS Account"}
                    )
                    or None,
                }
            ),
        }
    )


def _observables(alert: dict[str, Any], siem: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def add(name: str, type_id: int, type_name: str, value: Any) -> None:
        if value not in (None, ""):
            found.append({"name": name, "type_id": type_id, "type": type_name, "value": str(value)})

    add("device.hostname", OBS_HOSTNAME, "Hostname", siem.get("host"))
    add("device.owner.name", OBS_USER_NAME, "User Name", siem.get("local_user"))
    add("actor.process.user.name", OBS_USER_NAME, "User Name", siem.get("reader_user"))
    add("actor.process.file.hashes.value", OBS_HASH, "Hash", siem.get("reader_sha256"))
    add("evidences.file.path", OBS_FILE_PATH, "File Path", siem.get("file_path"))
    add("evidences.user.credential_uid", OBS_CREDENTIAL, "User Credential ID", siem.get("access_key_id"))
    for ip in dict.fromkeys(siem.get("source_ips") or []):
        if _is_ip(ip):
            add("evidences.src_endpoint.ip", OBS_IP, "IP Address", ip)
    return found


def to_ocsf(alert: dict[str, Any]) -> dict[str, Any]:
    """The alert (its native JSON, issuer.alerts.serialize) as an OCSF 1.8.0 Detection Finding."""
    enrichment, device, placement, credential, aws, siem, verdict, update = alert_sections(alert)
    activity_id = 2 if update else 1
    severity_id, severity = SEVERITY.get(str(alert.get("severity")), (0, "Unknown"))
    status_id, status = STATUS.get(str(alert.get("status")), (99, str(alert.get("status"))))
    attacks = _attacks(list(siem.get("attack_technique_ids") or []))
    os_name = str(device.get("os") or "").lower()
    planted = _planted_file(placement)
    reader = decisive_read(alert)
    reads = [r for r in as_list(enrichment.get("reads")) if isinstance(r, dict)]
    calls = [c for c in as_list(aws.get("calls")) if isinstance(c, dict)]
    evidences = [_read_evidence(r, planted) for r in reads[-MAX_EVIDENCES // 2 :]]
    evidences += [_call_evidence(c, credential) for c in calls[: MAX_EVIDENCES // 2]]
    region = next((c.get("region") for c in calls if c.get("region")), None)
    reasons = [as_dict(r) for r in as_list(verdict.get("reasons"))]
    when = update.get("at") if update else alert.get("created_at")
    return _compact(
        {
            "class_uid": CLASS_UID,
            "class_name": "Detection Finding",
            "category_uid": CATEGORY_UID,
            "category_name": "Findings",
            "activity_id": activity_id,
            "activity_name": ACTIVITY[activity_id],
            "type_uid": CLASS_UID * 100 + activity_id,
            "type_name": f"Detection Finding: {ACTIVITY[activity_id]}",
            "time": _ms(when) or _ms(alert.get("last_seen")),
            "start_time": _ms(alert.get("first_seen")),
            "end_time": _ms(alert.get("last_seen")),
            "count": alert.get("event_count"),
            "severity_id": severity_id,
            "severity": severity,
            "status_id": status_id,
            "status": status,
            "message": alert.get("title"),
            "is_alert": not alert.get("selftest"),
            "metadata": {
                "version": OCSF_VERSION,
                "product": {"name": "Tripkey", "vendor_name": "Tripkey", "version": __version__},
                "profiles": ["cloud", "host", "security_control"],
                "uid": f"{alert.get('alert_id')}:{update.get('revision') or 0}",
                "correlation_uid": alert.get("alert_id"),
                "log_name": "tripkey.alert",
                "original_time": alert.get("first_seen"),
            },
            "finding_info": _compact(
                {
                    "uid": alert.get("alert_id"),
                    "title": alert.get("title"),
                    "desc": next((r.get("text") for r in reasons if r.get("hint")), None),
                    "types": [alert.get("kind")] if alert.get("kind") else None,
                    "created_time": _ms(alert.get("created_at")),
                    "modified_time": _ms(alert.get("updated_at")),
                    "first_seen_time": _ms(alert.get("first_seen")),
                    "last_seen_time": _ms(alert.get("last_seen")),
                    "analytic": {"name": f"tripkey {alert.get('kind')}", "type_id": 1, "type": "Rule"},
                    "attacks": attacks or None,
                    "data_sources": as_list(as_dict(alert.get("summary")).get("detection_sources")) or None,
                }
            ),
            "attacks": attacks or None,
            "cloud": _compact(
                {
                    "provider": "AWS",
                    "region": region,
                    "account": _compact(
                        {"uid": credential.get("account_id"), "type_id": 10, "type": "AWS Account"}
                    ),
                }
            ),
            "device": _compact(
                {
                    "uid": device.get("device_id"),
                    "hostname": device.get("hostname"),
                    "name": device.get("hostname"),
                    "type_id": 0,
                    "type": "Unknown",
                    "os": _compact(
                        {
                            "name": device.get("os") or "unknown",
                            "type_id": OS_TYPES.get(os_name, 0),
                            "version": device.get("os_version"),
                        }
                    ),
                    "owner": _user(placement.get("local_user")),
                }
            ),
            "actor": {"process": _process(reader)} if reader else None,
            "evidences": evidences or None,
            "observables": _observables(alert, siem) or None,
            "unmapped": {
                "tripkey": {
                    "schema_version": alert.get("schema_version"),
                    "siem": siem,
                    "verdict": verdict,
                    "update": update or None,
                }
            },
        }
    )


__all__ = ["OCSF_VERSION", "to_ocsf"]
