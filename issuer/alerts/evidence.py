"""Verdict reasons and what they quote, twice: as words for the sentence a person reads, and as a
structured object a SIEM can query (docs/schema.md, "Verdict reasons"). Both are made from the same
facts here so they never disagree. The rules themselves are in issuer.alerts.verdict.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from issuer.alerts.awsfacts import FAMILY_NAMES, RELATION_NAMES, Call
from issuer.timefmt import iso

# A reason names at most this many AWS events by id (the alert's `enrichment.aws.calls` has them all).
MAX_EVENT_REFS = 20


@dataclasses.dataclass(frozen=True, slots=True)
class ReadFact:
    time: dt.datetime
    classification: str | None
    user: str | None
    exe: str | None
    cmdline: tuple[str, ...] = ()
    pid: int | None = None
    partial: bool = False  # the sensor could not capture all of this read's context when it happened
    provenance: dict[str, Any] | None = None  # as the agent sent it (docs/api.md)
    claimed: str | None = None  # the label its name claimed, when it is masquerading
    trust_reason: str | None = None  # the agent's evidence for the label, or against the claim
    event_id: str | None = None  # the agent's id of the read event


@dataclasses.dataclass(frozen=True, slots=True)
class Reason:
    """One rule that fired. `hint` is None for context that sets no hint (a self-test was active, the
    alert's own kind); `text` is the sentence, which always starts with the hint when there is one."""

    rule: str
    hint: str | None
    text: str
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)
    read_event_id: str | None = None
    aws_event_ids: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "hint": self.hint,
            "text": self.text,
            "evidence": self.evidence,
            "read_event_id": self.read_event_id,
            "aws_event_ids": list(self.aws_event_ids),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    hint: str
    reasons: tuple[Reason, ...]

    @property
    def texts(self) -> list[str]:
        """The reasons' sentences, most severe first."""
        return [reason.text for reason in self.reasons]

    def as_dict(self) -> dict[str, object]:
        return {"hint": self.hint, "reasons": [reason.as_dict() for reason in self.reasons]}


def context_reason(rule: str, text: str) -> Reason:
    """A reason that explains the alert without setting the hint (issuer.alerts.service)."""
    return Reason(rule=rule, hint=None, text=text)


def fire(
    rule: str,
    hint: str,
    text: str,
    *,
    read: ReadFact | None = None,
    calls: tuple[Call, ...] | list[Call] = (),
    **evidence: Any,
) -> Reason:
    facts: dict[str, Any] = {}
    if read is not None:
        facts["read"] = read_evidence(read)
    if calls:
        facts["aws"] = calls_evidence(calls)
    facts.update(evidence)
    return Reason(
        rule=rule,
        hint=hint,
        text=f"{hint}: {text}",
        evidence=facts,
        read_event_id=read.event_id if read is not None else None,
        aws_event_ids=event_refs(calls),
    )


def _text(value: Any) -> str:
    return str(value) if value not in (None, "") else "?"


def describe_file(prov: Any) -> str:
    """A provenance file entry in a few words: owner, writability, place, package or none, hash."""
    if not isinstance(prov, dict):
        return "not examined"
    if prov.get("error"):
        return f"not examined ({prov['error']})"
    owner = prov.get("owner") or prov.get("uid")
    parts = [f"owner {_text(owner)}"]
    if prov.get("user_writable"):
        parts.append(f"writable by a non-root user ({_text(prov.get('writable_via'))})")
    if prov.get("user_place"):
        parts.append(f"in {prov['user_place']}")
    if prov.get("package_db") is not None or prov.get("package"):
        package = prov.get("package") or "none"
        if prov.get("package") and prov.get("package_verified") is False:
            package += ", CONTENT DIFFERS"
        parts.append(f"package {package}")
    sha = prov.get("sha256")
    parts.append(
        f"sha256 {sha[:12]}…"
        if isinstance(sha, str) and sha
        else f"sha256 ? ({_text(prov.get('hash_error'))})"
    )
    if prov.get("replaced"):
        parts.append("replaced after it started")
    return ", ".join(parts)


def describe_provenance(prov: dict[str, Any] | None) -> str:
    if not isinstance(prov, dict):
        return "provenance not recorded"
    if prov.get("exe") is None and prov.get("error"):
        return f"provenance unavailable: {prov['error']}"
    parts = [describe_file(prov.get("exe"))]
    signing = prov.get("signing")
    if isinstance(signing, dict):
        if signing.get("platform_binary"):
            parts.append(f"signer Apple ({_text(signing.get('signing_id'))})")
        elif signing.get("signer"):
            parts.append(f"signer {signing['signer']}")
        elif signing.get("team_id") and not signing.get("adhoc"):
            parts.append(f"signer team {signing['team_id']} ({_text(signing.get('signing_id'))})")
        else:
            parts.append(f"signer none ({_text(signing.get('signing_id'))}, ad-hoc or unsigned)")
    elif isinstance(prov.get("exe"), dict) and prov["exe"].get("package_db") is None:
        parts.append("package/signer unknown")  # no package database, no signature reported (Windows)
    script = prov.get("script")
    if isinstance(script, dict):
        parts.append(f"script {_text(script.get('path'))}: {describe_file(script)}")
    elif prov.get("script_kind") == "inline":
        parts.append("inline code")
    return "; ".join(parts)


def describe_process(read: ReadFact) -> str:
    cmd = " ".join(read.cmdline) if read.cmdline else "?"
    return (
        f"{read.exe or '?'} (cmdline: {cmd}; user: {read.user or '?'}; pid: {read.pid or '?'}; "
        f"{describe_provenance(read.provenance)})"
    )


def calls_text(calls: Sequence[Call]) -> str:
    names = list(dict.fromkeys(c.name for c in calls))
    where = list(
        dict.fromkeys(f"{c.source_ip or 'no address'} ({RELATION_NAMES[c.relation]})" for c in calls)
    )
    families = list(dict.fromkeys(c.family for c in calls))
    return (
        f"{', '.join(names[:5])} via {', '.join(FAMILY_NAMES.get(f, f) for f in families)} "
        f"from {', '.join(where[:3])}"
    )


# ---- the same facts, structured -------------------------------------------------------------------


def _file_evidence(prov: Any) -> dict[str, Any] | None:
    if not isinstance(prov, dict):
        return None
    return {
        "path": prov.get("path"),
        "owner": prov.get("owner"),
        "user_writable": prov.get("user_writable"),
        "user_place": prov.get("user_place"),
        "package": prov.get("package"),
        "package_verified": prov.get("package_verified"),
        "sha256": prov.get("sha256"),
        "error": prov.get("error"),
    }


def read_evidence(read: ReadFact) -> dict[str, Any]:
    """The reader a reason is about: who, when, and where its code came from."""
    prov = read.provenance if isinstance(read.provenance, dict) else {}
    signing = prov.get("signing") if isinstance(prov.get("signing"), dict) else None
    return {
        "event_id": read.event_id,
        "time": iso(read.time),
        "pid": read.pid,
        "exe": read.exe,
        "cmdline": list(read.cmdline),
        "user": read.user,
        "classification": read.classification,
        "claimed_label": read.claimed,
        "trust_reason": read.trust_reason,
        "partial": read.partial,
        "exe_file": _file_evidence(prov.get("exe")),
        "script_file": _file_evidence(prov.get("script")),
        "signer": (signing.get("signer") or signing.get("team_id")) if signing else None,
    }


def calls_evidence(calls: Sequence[Call]) -> dict[str, Any]:
    """The AWS calls a reason is about: what, from where, with what."""
    return {
        "calls": list(dict.fromkeys(c.name for c in calls)),
        "call_kinds": list(dict.fromkeys(c.kind for c in calls)),
        "source_addresses": [
            {"address": ip, "relation": relation}
            for ip, relation in dict.fromkeys((c.source_ip, c.relation) for c in calls if c.source_ip)
        ],
        "user_agent_families": list(dict.fromkeys(c.family for c in calls if c.family != "none")),
        "error_codes": list(dict.fromkeys(c.error_code for c in calls if c.error_code)),
    }


def event_refs(calls: Sequence[Call]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c.event_id for c in calls if c.event_id))[:MAX_EVENT_REFS]


__all__ = [
    "ReadFact",
    "Reason",
    "Verdict",
    "calls_evidence",
    "calls_text",
    "context_reason",
    "describe_file",
    "describe_process",
    "describe_provenance",
    "event_refs",
    "fire",
    "read_evidence",
]
