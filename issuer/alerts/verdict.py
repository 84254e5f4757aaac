"""Verdict hint: a pure function from the context of an alert — who read the file (with the
provenance of each reader) and what AWS says about the use — to a hint and its reasons.

Several rules can fire; the hint is the most severe one, and every reason is listed so the responder
sees the whole picture. Reasons quote their evidence: the reader's path, owner, package or signer
("none" when nothing owns it), hash prefix; the user-agent family, the calls and where they came
from relative to the device. The hint is a triage aid, never a conclusion.

Readers and AWS facts are read together: a secret scanner's read followed by an identity check is a
scanner verifying its find; the same read followed by enumeration or privilege attempts is not.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from issuer.alerts.awsfacts import (
    ENUMERATION,
    FAMILY_NAMES,
    PRIVILEGE,
    RELATION_NAMES,
    WRITE,
    AwsFacts,
    Call,
)

# Most severe first.
HINTS = (
    "suspicious",
    "key_copied_elsewhere",
    "context_incomplete",
    "curious_user",
    "scanner_verification",
    "likely_benign",
)
_RANK = {hint: index for index, hint in enumerate(HINTS)}

AWS_TOOL = "aws_tool"
SECRET_SCANNER = "secret_scanner"
SHELL_UTILITY = "shell_utility"
UNKNOWN = "unknown"
EDITOR = "editor"
# `tripkey-agent trigger` reading its own canary (the agent labels it from a root-only mark of the
# trigger's pid and start time, never from a name a process chose): expected, never a leak path.
SELF_TEST = "self_test"
MASQUERADING = "masquerading"  # a trusted name whose provenance did not support it (agent/events/trust.py)
# Labels of agent/events/classify.py. Indexers, backups and antivirus are background copiers: they do not use
# the key but may carry the file elsewhere. Editors and shell utilities show the key to a person.
# Any other label (an organisation's own rule) is treated like an unknown reader: named, suspicious.
BACKGROUND_CLASSES = frozenset({"indexer_backup_av", "indexer", "backup", "antivirus"})

# What a person opens a file with. A self-report explains only reads by these: the report comes over a
# local socket that any process of that user can reach (the kernel vouches for the uid, not for the
# human), so malware running as the user must not be able to excuse its own unknown read.
SELF_REPORTABLE_CLASSES = frozenset({SHELL_UTILITY, EDITOR, AWS_TOOL})

SELF_REPORT_BEFORE = dt.timedelta(hours=1)
SELF_REPORT_AFTER = dt.timedelta(minutes=10)


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


@dataclasses.dataclass(frozen=True, slots=True)
class SelfReportFact:
    time: dt.datetime
    user: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class VerdictInput:
    first_use: dt.datetime
    placement_user: str | None
    reads: tuple[ReadFact, ...]  # reads that could have leaked the key: planting .. first use
    self_reports: tuple[SelfReportFact, ...] = ()
    agent_stale: bool = False  # no heartbeat around the first use
    sensor_healthy: bool = True
    lost_events: int = 0
    readlog_failed: int = 0  # reads the agent could not write to its local read log
    selftest: bool = False
    aws: AwsFacts | None = None  # what AWS recorded about the use (issuer.alerts.awsfacts)


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    hint: str
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"hint": self.hint, "reasons": list(self.reasons)}


def _explained_by(read: ReadFact, reports: list[SelfReportFact], placement_user: str | None) -> bool:
    """A read by the self-reporting user, with a tool a person uses, around the time of their report
    is what they reported."""
    if read.classification not in SELF_REPORTABLE_CLASSES:
        return False
    for report in reports:
        user = report.user or placement_user
        if (
            read.user is not None
            and read.user == user
            and report.time - SELF_REPORT_BEFORE <= read.time <= report.time + SELF_REPORT_AFTER
        ):
            return True
    return False


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


def _calls_text(calls: list[Call]) -> str:
    names = list(dict.fromkeys(c.name for c in calls))
    where = list(
        dict.fromkeys(f"{c.source_ip or 'no address'} ({RELATION_NAMES[c.relation]})" for c in calls)
    )
    families = list(dict.fromkeys(c.family for c in calls))
    return (
        f"{', '.join(names[:5])} via {', '.join(FAMILY_NAMES.get(f, f) for f in families)} "
        f"from {', '.join(where[:3])}"
    )


def decide(facts: VerdictInput) -> Verdict:
    own = [read for read in facts.reads if read.classification == SELF_TEST]
    facts = dataclasses.replace(facts, reads=tuple(r for r in facts.reads if r.classification != SELF_TEST))
    fired: list[tuple[str, str]] = []
    if own:
        fired.append(
            (
                "likely_benign",
                f"{len(own)} read(s) by the agent's own self-test (tripkey-agent trigger, pid {own[0].pid}), "
                "which copies the key only into a root-only temporary file: not a way the key left",
            )
        )
    aws = facts.aws
    clause = f"; {aws.clause()}" if aws is not None and aws.calls else ""

    reported = [
        r
        for r in facts.self_reports
        if facts.first_use - SELF_REPORT_BEFORE <= r.time <= facts.first_use + SELF_REPORT_AFTER
    ]
    explained = [read for read in facts.reads if _explained_by(read, reported, facts.placement_user)]
    if reported:
        first = min(reported, key=lambda r: r.time)
        fired.append(
            (
                "likely_benign",
                f"the device user {first.user or facts.placement_user} self-reported opening the file at "
                f"{first.time.isoformat()}, shortly before the first use"
                + (f"; that explains {len(explained)} read(s) by them" if explained else "")
                + clause,
            )
        )

    aws_by_owner: list[ReadFact] = []
    background: list[ReadFact] = []
    scanners: list[ReadFact] = []
    for read in facts.reads:
        if read in explained:
            continue
        if read.classification == MASQUERADING:
            fired.append(
                (
                    "suspicious",
                    f"reader masquerading as {read.claimed or 'a trusted tool'}: {describe_process(read)} "
                    f"read the file at {read.time.isoformat()}"
                    + (f" — {read.trust_reason}" if read.trust_reason else "")
                    + clause,
                )
            )
        elif read.classification in BACKGROUND_CLASSES:
            background.append(read)
        elif read.classification not in (SECRET_SCANNER, AWS_TOOL):
            kind = read.classification or "unclassified"
            fired.append(
                (
                    "suspicious",
                    f"{kind} reader: {describe_process(read)} read the file at {read.time.isoformat()}"
                    + clause,
                )
            )
        elif read.classification == SECRET_SCANNER:
            scanners.append(read)
        elif read.classification == AWS_TOOL:
            if facts.placement_user is not None and read.user == facts.placement_user:
                aws_by_owner.append(read)
            else:
                fired.append(
                    (
                        "suspicious",
                        f"AWS tool run by {read.user or 'an unknown user'}, not the "
                        f"file's owner {facts.placement_user}: {describe_process(read)}{clause}",
                    )
                )

    if scanners:
        fired.append(_scanner_reason(scanners[0], aws, clause))

    if aws_by_owner and all(
        r.classification == AWS_TOOL and r.user == facts.placement_user
        for r in facts.reads
        if r not in background and r not in explained
    ):
        elsewhere = aws.from_elsewhere() if aws is not None else []
        if elsewhere:
            fired.append(
                (
                    "suspicious",
                    f"only AWS tools run by the device's user {facts.placement_user} read the file, but the "
                    f"key was used from outside this device's network: {_calls_text(elsewhere)}",
                )
            )
        else:
            fired.append(
                (
                    "curious_user",
                    f"only AWS tools run by the device's user {facts.placement_user} "
                    f"read the file ({len(aws_by_owner)} read(s)), e.g. {describe_process(aws_by_owner[0])}"
                    + clause,
                )
            )

    if aws is not None:
        privilege = aws.of_kind(PRIVILEGE)
        if privilege:
            fired.append(("suspicious", f"privilege attempt(s) with the key: {_calls_text(privilege)}"))
        for call in aws.quarantines():
            fired.append(
                (
                    "key_copied_elsewhere",
                    f"AWS found this key published: it attached {call.quarantine} to the canary principal "
                    f"at {call.time.isoformat()} (from {call.source_ip or 'AWS'}); the key is public",
                )
            )
        if reported and not any(h == "suspicious" for h, _ in fired) and aws.from_elsewhere():
            fired.append(
                (
                    "suspicious",
                    "a self-report explains a read, not a use from outside this device's network: "
                    + _calls_text(aws.from_elsewhere()),
                )
            )

    context_ok = (
        not facts.agent_stale
        and facts.sensor_healthy
        and facts.lost_events == 0
        and facts.readlog_failed == 0
    )
    if not facts.reads and context_ok and not (facts.selftest and own):
        fired.append(
            (
                "key_copied_elsewhere",
                "no read of the file was recorded since planting while the "
                "agent was healthy: the key probably travelled without being read on this host "
                "(check backups, file sync, disk images, VM snapshots)" + clause,
            )
        )
    for read in background:
        fired.append(
            (
                "key_copied_elsewhere",
                f"{read.classification} process {describe_process(read)} read "
                "the file: the key may have travelled with its copy",
            )
        )

    if facts.agent_stale:
        fired.append(
            (
                "context_incomplete",
                "the agent was offline or stale at the time of use: reads may be missing" + clause,
            )
        )
    if not facts.sensor_healthy:
        fired.append(("context_incomplete", "the agent's sensor reported itself unhealthy"))
    if facts.lost_events:
        fired.append(
            (
                "context_incomplete",
                f"the agent lost {facts.lost_events} read event(s)"
                " (sensor queue, full spool, refused upload or a spool it could not write)",
            )
        )
    if facts.readlog_failed:
        fired.append(
            (
                "context_incomplete",
                f"the agent could not write {facts.readlog_failed} read(s) to its local read log "
                "(full disk or database error): the host's own record is incomplete",
            )
        )

    partial = [read for read in facts.reads if read.partial]
    if partial:
        fired.append(
            (
                "context_incomplete",
                f"{len(partial)} read(s) were only partly captured (e.g. {describe_process(partial[0])}: "
                "started before the agent, or part of its parent chain could not be named)",
            )
        )

    if not fired:
        fired.append(("suspicious", "no rule explains this use" + clause))
    if facts.selftest:
        reasons_prefix = ["a self-test of this credential was active: this use is expected"]
    else:
        reasons_prefix = []
    hint = min((h for h, _ in fired), key=_RANK.__getitem__)
    ordered = sorted(fired, key=lambda item: _RANK[item[0]])
    return Verdict(hint=hint, reasons=tuple(reasons_prefix + [f"{h}: {text}" for h, text in ordered]))


def _scanner_reason(read: ReadFact, aws: AwsFacts | None, clause: str) -> tuple[str, str]:
    """A scanner's read is consistent with an identity check (its verification), not with more."""
    beyond = aws.of_kind(ENUMERATION, PRIVILEGE, WRITE) if aws is not None else []
    if beyond:
        return (
            "suspicious",
            f"a secret scanner read the file ({describe_process(read)}), but the key was then used beyond "
            f"an identity check: {_calls_text(beyond)}; a scanner verifying its find does not do that",
        )
    note = ""
    if aws is not None and aws.attributed():
        verifiers = [c for c in aws.calls if c.family == "secret_scanner_verifier"]
        if verifiers:
            note = f"; consistent: {_calls_text(verifiers)} is the scanner's own verification"
        else:
            note = "; the identity check did not come from a known scanner verifier"
    return ("scanner_verification", f"a secret scanner read the file: {describe_process(read)}{note}{clause}")
