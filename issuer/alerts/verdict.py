"""Verdict hint: a pure function from the context of an alert — who read the file (with the
provenance of each reader) and what AWS says about the use — to a hint and its reasons.

Several rules can fire; the hint is the most severe one, and every reason is listed so the responder
sees the whole picture. Reasons quote their evidence: the reader's path, owner, package or signer
("none" when nothing owns it), hash prefix; the user-agent family, the calls and where they came
from relative to the device. The hint is a triage aid, never a conclusion.

Each reason is a structured object (docs/schema.md): the rule that fired, the hint it points to, the
sentence a person reads, the evidence as data, and the read and AWS events it refers to.

Readers and AWS facts are read together: a secret scanner's read followed by an identity check is a
scanner verifying its find; the same read followed by enumeration or privilege attempts is not.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from issuer.alerts.awsfacts import ENUMERATION, PRIVILEGE, WRITE, AwsFacts, Call
from issuer.alerts.evidence import (
    ReadFact,
    Reason,
    Verdict,
    calls_text,
    context_reason,
    describe_process,
    fire,
)
from issuer.timefmt import iso

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
class SelfReportFact:
    time: dt.datetime
    user: str | None
    event_id: str | None = None


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


def decide(facts: VerdictInput) -> Verdict:
    own = [read for read in facts.reads if read.classification == SELF_TEST]
    facts = dataclasses.replace(facts, reads=tuple(r for r in facts.reads if r.classification != SELF_TEST))
    fired: list[Reason] = []
    if own:
        fired.append(
            fire(
                "self_test_read",
                "likely_benign",
                f"{len(own)} read(s) by the agent's own self-test (tripkey-agent trigger, pid {own[0].pid}), "
                "which copies the key only into a root-only temporary file: not a way the key left",
                read=own[0],
                reads=len(own),
            )
        )
    aws = facts.aws
    clause = f"; {aws.clause()}" if aws is not None and aws.calls else ""
    # The calls a reason quoting `clause` refers to.
    every_call: tuple[Call, ...] = aws.calls if aws is not None else ()

    reported = [
        r
        for r in facts.self_reports
        if facts.first_use - SELF_REPORT_BEFORE <= r.time <= facts.first_use + SELF_REPORT_AFTER
    ]
    explained = [read for read in facts.reads if _explained_by(read, reported, facts.placement_user)]
    if reported:
        first = min(reported, key=lambda r: r.time)
        fired.append(
            fire(
                "self_report",
                "likely_benign",
                f"the device user {first.user or facts.placement_user} self-reported opening the file at "
                f"{iso(first.time)}, shortly before the first use"
                + (f"; that explains {len(explained)} read(s) by them" if explained else "")
                + clause,
                calls=every_call,
                self_report={
                    "event_id": first.event_id,
                    "time": iso(first.time),
                    "user": first.user or facts.placement_user,
                },
                explained_read_event_ids=[r.event_id for r in explained if r.event_id],
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
                fire(
                    "masquerading_reader",
                    "suspicious",
                    f"reader masquerading as {read.claimed or 'a trusted tool'}: {describe_process(read)} "
                    f"read the file at {iso(read.time)}"
                    + (f" — {read.trust_reason}" if read.trust_reason else "")
                    + clause,
                    read=read,
                    calls=every_call,
                )
            )
        elif read.classification in BACKGROUND_CLASSES:
            background.append(read)
        elif read.classification not in (SECRET_SCANNER, AWS_TOOL):
            kind = read.classification or "unclassified"
            fired.append(
                fire(
                    "untrusted_reader",
                    "suspicious",
                    f"{kind} reader: {describe_process(read)} read the file at {iso(read.time)}" + clause,
                    read=read,
                    calls=every_call,
                )
            )
        elif read.classification == SECRET_SCANNER:
            scanners.append(read)
        elif read.classification == AWS_TOOL:
            if facts.placement_user is not None and read.user == facts.placement_user:
                aws_by_owner.append(read)
            else:
                fired.append(
                    fire(
                        "aws_tool_not_owner",
                        "suspicious",
                        f"AWS tool run by {read.user or 'an unknown user'}, not the "
                        f"file's owner {facts.placement_user}: {describe_process(read)}{clause}",
                        read=read,
                        calls=every_call,
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
                fire(
                    "owner_aws_tool_used_elsewhere",
                    "suspicious",
                    f"only AWS tools run by the device's user {facts.placement_user} read the file, but the "
                    f"key was used from outside this device's network: {calls_text(elsewhere)}",
                    read=aws_by_owner[0],
                    calls=elsewhere,
                )
            )
        else:
            fired.append(
                fire(
                    "owner_aws_tool",
                    "curious_user",
                    f"only AWS tools run by the device's user {facts.placement_user} "
                    f"read the file ({len(aws_by_owner)} read(s)), e.g. {describe_process(aws_by_owner[0])}"
                    + clause,
                    read=aws_by_owner[0],
                    calls=every_call,
                    reads=len(aws_by_owner),
                )
            )

    if aws is not None:
        privilege = aws.of_kind(PRIVILEGE)
        if privilege:
            fired.append(
                fire(
                    "privilege_attempt",
                    "suspicious",
                    f"privilege attempt(s) with the key: {calls_text(privilege)}",
                    calls=privilege,
                )
            )
        for call in aws.quarantines():
            fired.append(
                fire(
                    "aws_found_key_published",
                    "key_copied_elsewhere",
                    f"AWS found this key published: it attached {call.quarantine} to the canary principal "
                    f"at {iso(call.time)} (from {call.source_ip or 'AWS'}); the key is public",
                    calls=[call],
                    quarantine_policy=call.quarantine,
                )
            )
        if reported and not any(r.hint == "suspicious" for r in fired) and aws.from_elsewhere():
            fired.append(
                fire(
                    "self_report_use_elsewhere",
                    "suspicious",
                    "a self-report explains a read, not a use from outside this device's network: "
                    + calls_text(aws.from_elsewhere()),
                    calls=aws.from_elsewhere(),
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
            fire(
                "no_read_recorded",
                "key_copied_elsewhere",
                "no read of the file was recorded since planting while the "
                "agent was healthy: the key probably travelled without being read on this host "
                "(check backups, file sync, disk images, VM snapshots)" + clause,
                calls=every_call,
            )
        )
    for read in background:
        fired.append(
            fire(
                "background_copier",
                "key_copied_elsewhere",
                f"{read.classification} process {describe_process(read)} read "
                "the file: the key may have travelled with its copy",
                read=read,
            )
        )

    if facts.agent_stale:
        fired.append(
            fire(
                "agent_stale",
                "context_incomplete",
                "the agent was offline or stale at the time of use: reads may be missing" + clause,
                calls=every_call,
            )
        )
    if not facts.sensor_healthy:
        fired.append(
            fire("sensor_unhealthy", "context_incomplete", "the agent's sensor reported itself unhealthy")
        )
    if facts.lost_events:
        fired.append(
            fire(
                "lost_events",
                "context_incomplete",
                f"the agent lost {facts.lost_events} read event(s)"
                " (sensor queue, full spool, refused upload or a spool it could not write)",
                lost_events=facts.lost_events,
            )
        )
    if facts.readlog_failed:
        fired.append(
            fire(
                "readlog_failed",
                "context_incomplete",
                f"the agent could not write {facts.readlog_failed} read(s) to its local read log "
                "(full disk or database error): the host's own record is incomplete",
                readlog_failed=facts.readlog_failed,
            )
        )

    partial = [read for read in facts.reads if read.partial]
    if partial:
        fired.append(
            fire(
                "partial_reads",
                "context_incomplete",
                f"{len(partial)} read(s) were only partly captured (e.g. {describe_process(partial[0])}: "
                "started before the agent, or part of its parent chain could not be named)",
                read=partial[0],
                reads=len(partial),
            )
        )

    if not fired:
        fired.append(fire("no_rule", "suspicious", "no rule explains this use" + clause, calls=every_call))
    prefix = (
        [context_reason("selftest_active", "a self-test of this credential was active: this use is expected")]
        if facts.selftest
        else []
    )
    hint = min((r.hint for r in fired if r.hint is not None), key=_RANK.__getitem__)
    ordered = sorted(fired, key=lambda r: _RANK[r.hint or hint])
    return Verdict(hint=hint, reasons=tuple(prefix + ordered))


def _scanner_reason(read: ReadFact, aws: AwsFacts | None, clause: str) -> Reason:
    """A scanner's read is consistent with an identity check (its verification), not with more."""
    beyond = aws.of_kind(ENUMERATION, PRIVILEGE, WRITE) if aws is not None else []
    if beyond:
        return fire(
            "scanner_beyond_identity",
            "suspicious",
            f"a secret scanner read the file ({describe_process(read)}), but the key was then used beyond "
            f"an identity check: {calls_text(beyond)}; a scanner verifying its find does not do that",
            read=read,
            calls=beyond,
        )
    note = ""
    verifiers: list[Call] = []
    if aws is not None and aws.attributed():
        verifiers = [c for c in aws.calls if c.family == "secret_scanner_verifier"]
        if verifiers:
            note = f"; consistent: {calls_text(verifiers)} is the scanner's own verification"
        else:
            note = "; the identity check did not come from a known scanner verifier"
    return fire(
        "scanner_verification",
        "scanner_verification",
        f"a secret scanner read the file: {describe_process(read)}{note}{clause}",
        read=read,
        calls=aws.calls if aws is not None else (),
        verifier_event_ids=[c.event_id for c in verifiers if c.event_id],
    )


__all__ = [
    "HINTS",
    "ReadFact",
    "Reason",
    "SelfReportFact",
    "Verdict",
    "VerdictInput",
    "context_reason",
    "decide",
]
