"""Verdict hint table: each rule alone, and the most severe winning when several fire."""

from __future__ import annotations

import datetime as dt

import pytest

from issuer.alerts.awsfacts import AwsFacts, make_call
from issuer.alerts.verdict import ReadFact, SelfReportFact, VerdictInput, decide

USE = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)


def read(
    cls: str | None,
    user: str = "alice",
    exe: str = "/usr/bin/aws",
    minutes_before: int = 30,
    cmdline: tuple[str, ...] = ("aws", "s3", "ls"),
    partial: bool = False,
) -> ReadFact:
    return ReadFact(
        time=USE - dt.timedelta(minutes=minutes_before),
        classification=cls,
        user=user,
        exe=exe,
        cmdline=cmdline,
        pid=4242,
        partial=partial,
    )


def report(minutes_before: int, user: str = "alice") -> SelfReportFact:
    return SelfReportFact(time=USE - dt.timedelta(minutes=minutes_before), user=user)


VIM = dict(exe="/usr/bin/vim", cmdline=("vim", "credentials"))
CASES = [
    (
        "self_report_explains_own_read",
        dict(reads=(read("editor", minutes_before=7, **VIM),), self_reports=(report(5),)),
        "likely_benign",
    ),
    (
        # Anything running as the user can reach the self-report socket: an unknown reader stays named.
        "self_report_never_excuses_an_unknown_reader",
        dict(
            reads=(read("unknown", minutes_before=7, exe="/tmp/.x/stealer", cmdline=("stealer",)),),
            self_reports=(report(5),),
        ),
        "suspicious",
    ),
    (
        "self_report_not_for_others",
        dict(reads=(read("unknown", user="bob", minutes_before=7, **VIM),), self_reports=(report(5),)),
        "suspicious",
    ),
    ("aws_tool_by_owner", dict(reads=(read("aws_tool"), read("aws_tool"))), "curious_user"),
    (
        "secret_scanner",
        dict(reads=(read("secret_scanner", exe="/usr/bin/trufflehog"),)),
        "scanner_verification",
    ),
    ("shell_utility", dict(reads=(read("shell_utility", exe="/usr/bin/cat"),)), "suspicious"),
    ("unknown", dict(reads=(read("unknown", exe="/tmp/.x/stealer"),)), "suspicious"),
    ("aws_tool_other_user", dict(reads=(read("aws_tool", user="mallory"),)), "suspicious"),
    ("no_reads_healthy", dict(reads=()), "key_copied_elsewhere"),
    ("backup_only", dict(reads=(read("indexer_backup_av", exe="/usr/bin/restic"),)), "key_copied_elsewhere"),
    ("editor", dict(reads=(read("editor", exe="/usr/bin/vim"),)), "suspicious"),
    ("org_label", dict(reads=(read("build_agent", exe="/opt/ci/agent"),)), "suspicious"),
    ("unclassified", dict(reads=(read(None, exe="/x"),)), "suspicious"),
    ("agent_stale_no_reads", dict(reads=(), agent_stale=True), "context_incomplete"),
    ("sensor_unhealthy", dict(reads=(read("aws_tool"),), sensor_healthy=False), "context_incomplete"),
    ("lost_events", dict(reads=(read("aws_tool"),), lost_events=3), "context_incomplete"),
    ("partial_read", dict(reads=(read("aws_tool", partial=True),)), "context_incomplete"),
    ("readlog_failed", dict(reads=(read("aws_tool"),), readlog_failed=33), "context_incomplete"),
    # several rules: the most severe wins, all are listed
    (
        "scanner_and_shell",
        dict(reads=(read("secret_scanner"), read("shell_utility", exe="/usr/bin/cat"))),
        "suspicious",
    ),
    ("self_report_and_aws", dict(reads=(read("aws_tool"),), self_reports=(report(2),)), "likely_benign"),
    ("aws_and_scanner", dict(reads=(read("aws_tool"), read("secret_scanner"))), "scanner_verification"),
    (
        "stale_and_cat",
        dict(reads=(read("shell_utility", exe="/usr/bin/cat"),), agent_stale=True),
        "suspicious",
    ),
    (
        "old_self_report_ignored",
        dict(reads=(read("unknown", minutes_before=300, **VIM),), self_reports=(report(299),)),
        "suspicious",
    ),
]


@pytest.mark.parametrize(("name", "facts", "hint"), CASES, ids=[c[0] for c in CASES])
def test_verdict_table(name: str, facts: dict, hint: str) -> None:  # type: ignore[type-arg]
    verdict = decide(VerdictInput(first_use=USE, placement_user="alice", **{"reads": (), **facts}))
    assert verdict.hint == hint, verdict.texts
    assert verdict.texts, "every verdict explains itself"
    assert verdict.texts[0].startswith(hint)


def test_suspicious_reason_names_the_process() -> None:
    verdict = decide(
        VerdictInput(
            first_use=USE,
            placement_user="alice",
            reads=(read("unknown", exe="/tmp/.cache/x", cmdline=("x", "--grab"), user="alice"),),
        )
    )
    reason = " ".join(verdict.texts)
    assert "/tmp/.cache/x" in reason and "x --grab" in reason and "user: alice" in reason


def test_all_fired_rules_are_listed() -> None:
    verdict = decide(
        VerdictInput(
            first_use=USE,
            placement_user="alice",
            agent_stale=True,
            self_reports=(report(0),),
            reads=(read("secret_scanner", user="scan"), read("indexer_backup_av", user="root")),
        )
    )
    hints = {reason.split(":", 1)[0] for reason in verdict.texts}
    assert {"likely_benign", "scanner_verification", "context_incomplete", "key_copied_elsewhere"} <= hints


def test_selftest_is_mentioned() -> None:
    verdict = decide(
        VerdictInput(first_use=USE, placement_user="alice", reads=(read("aws_tool"),), selftest=True)
    )
    assert "self-test" in verdict.texts[0]
    assert verdict.hint == "curious_user"


@pytest.mark.parametrize(
    ("health", "lost"),
    [
        ({"sensor": {"healthy": True, "lost_events": 1}, "spool_dropped": 3, "spool_rejected": 2}, 6),
        ({"sensor": {"healthy": True, "lost_events": 0}, "spool_rejected": 1}, 1),
        ({"sensor": {"healthy": True, "lost_events": 0}, "spool_failed": 33, "readlog_failed": 33}, 33),
        ({"sensor": {"healthy": True}, "spool_dropped": "many", "spool_rejected": -4}, 0),  # forged junk
        ({}, 0),
    ],
)
def test_reads_the_agent_never_delivered_count_as_lost(health: dict[str, object], lost: int) -> None:
    from issuer.alerts.enrich import agent_health
    from issuer.models import Device

    device = Device(id="dev_x", hostname="h", os="linux", last_heartbeat_at=USE, health=health)
    assert agent_health(device, USE, stale_after_seconds=600)["lost_events"] == lost


TRIGGER = dict(exe="/usr/bin/python3", cmdline=("/usr/bin/python3", "/usr/bin/tripkey-agent", "trigger"))


def test_the_self_tests_own_read_is_never_suspicious() -> None:
    """`tripkey-agent trigger` reads the planted file itself; the agent labels that read self_test."""
    own = read("self_test", user="root", minutes_before=1, **TRIGGER)
    verdict = decide(VerdictInput(first_use=USE, placement_user="alice", reads=(own,), selftest=True))
    assert verdict.hint == "likely_benign", verdict.texts
    assert not any(reason.startswith("suspicious") for reason in verdict.texts)
    assert any("agent's own self-test" in reason and "pid 4242" in reason for reason in verdict.texts)


def test_an_unknown_reader_during_a_self_test_is_still_suspicious() -> None:
    own = read("self_test", user="root", minutes_before=1, **TRIGGER)
    stranger = read("unknown", minutes_before=3, exe="/tmp/.x/stealer", cmdline=("stealer",))
    verdict = decide(
        VerdictInput(first_use=USE, placement_user="alice", reads=(own, stranger), selftest=True)
    )
    assert verdict.hint == "suspicious" and "/tmp/.x/stealer" in " ".join(verdict.texts)


def test_a_self_test_read_does_not_explain_a_later_real_use() -> None:
    """Outside a self-test, the trigger's read is no leak path: the key travelled some other way."""
    own = read("self_test", user="root", minutes_before=60, **TRIGGER)
    verdict = decide(VerdictInput(first_use=USE, placement_user="alice", reads=(own,)))
    assert verdict.hint == "key_copied_elsewhere", verdict.texts


def test_reads_missing_from_the_host_read_log_make_the_context_incomplete() -> None:
    """A full state disk: 33 reads could not be written to the agent's read log (issue #10)."""
    from issuer.alerts.enrich import agent_health
    from issuer.models import Device

    health = {"sensor": {"healthy": True, "lost_events": 0}, "readlog_failed": 33}
    device = Device(id="dev_x", hostname="h", os="linux", last_heartbeat_at=USE, health=health)
    facts = agent_health(device, USE, stale_after_seconds=600)
    assert (facts["readlog_failed"], facts["lost_events"]) == (33, 0)  # the spool sent them
    verdict = decide(VerdictInput(first_use=USE, placement_user="alice", reads=(), readlog_failed=33))
    assert verdict.hint == "context_incomplete", verdict.texts
    assert any("could not write 33 read(s) to its local read log" in r for r in verdict.texts)
    assert not any("no read of the file was recorded" in r for r in verdict.texts)


# ----- readers and AWS facts together -----------------------------------------------------------------

DEVICE_IP = "198.51.100.7"
CLI = "aws-cli/1.46.3 md/Botocore#1.43.62 ua/2.1 os/linux#6.18 lang/python#3.11.7"


def call(name: str, source: str, ip: str = DEVICE_IP, agent: str = CLI, raw: dict | None = None):  # type: ignore[no-untyped-def, type-arg]
    return make_call(
        time=USE,
        event_name=name,
        event_source=source,
        region="us-east-1",
        source_ip=ip,
        user_agent=agent,
        error_code=None,
        detection_source="sqs",
        raw=raw,
        device_addresses=[DEVICE_IP],
    )


def facts(*calls) -> AwsFacts:  # type: ignore[no-untyped-def]
    return AwsFacts(calls=tuple(calls), device_addresses=(DEVICE_IP,))


SCANNER = read("secret_scanner", exe="/usr/local/bin/trufflehog", cmdline=("trufflehog", "filesystem", "."))
IDENTITY_BY_TRUFFLEHOG = call("GetCallerIdentity", "sts.amazonaws.com", "203.0.113.50", "TruffleHog")


def test_a_scanner_read_and_its_verifiers_identity_check_are_consistent() -> None:
    verdict = decide(
        VerdictInput(
            first_use=USE, placement_user="alice", reads=(SCANNER,), aws=facts(IDENTITY_BY_TRUFFLEHOG)
        )
    )
    assert verdict.hint == "scanner_verification"
    assert "consistent: sts:GetCallerIdentity via a secret scanner's verifier" in verdict.texts[0]


def test_a_scanner_read_followed_by_enumeration_from_elsewhere_is_not() -> None:
    enumeration = call("ListBuckets", "s3.amazonaws.com", "203.0.113.50")
    verdict = decide(
        VerdictInput(
            first_use=USE,
            placement_user="alice",
            reads=(SCANNER,),
            aws=facts(IDENTITY_BY_TRUFFLEHOG, enumeration),
        )
    )
    assert verdict.hint == "suspicious"
    assert (
        "s3:ListBuckets via AWS CLI v1 from 203.0.113.50 (an address this device was never seen at)"
        in (verdict.texts[0])
    )
    assert "a scanner verifying its find does not do that" in verdict.texts[0]


def test_the_owners_aws_tool_then_a_use_from_elsewhere_is_suspicious() -> None:
    reads = (read("aws_tool"),)
    home = decide(
        VerdictInput(
            first_use=USE,
            placement_user="alice",
            reads=reads,
            aws=facts(call("ListBuckets", "s3.amazonaws.com")),
        )
    )
    assert home.hint == "curious_user" and "198.51.100.7 (this device's network)" in home.texts[0]
    away = decide(
        VerdictInput(
            first_use=USE,
            placement_user="alice",
            reads=reads,
            aws=facts(call("ListBuckets", "s3.amazonaws.com", "203.0.113.9")),
        )
    )
    assert away.hint == "suspicious" and "used from outside this device's network" in away.texts[0]


def test_privilege_attempts_are_suspicious_whoever_read_the_file() -> None:
    verdict = decide(
        VerdictInput(
            first_use=USE,
            placement_user="alice",
            reads=(read("aws_tool"),),
            aws=facts(call("CreateUser", "iam.amazonaws.com")),
        )
    )
    assert verdict.hint == "suspicious"
    assert any("privilege attempt(s) with the key: iam:CreateUser via AWS CLI v1" in r for r in verdict.texts)


def test_a_masquerading_reader_is_named_with_its_evidence() -> None:
    provenance = {
        "exe": {
            "path": "/tmp/x/trufflehog",
            "owner": "bob",
            "uid": 1001,
            "user_writable": True,
            "writable_via": "/tmp/x: owner bob",
            "user_place": "/tmp",
            "package": None,
            "package_db": "dpkg",
            "sha256": "ab" * 32,
        },
        "script": None,
        "signing": None,
    }
    fake = ReadFact(
        time=USE - dt.timedelta(minutes=3),
        classification="masquerading",
        user="bob",
        exe="/tmp/x/trufflehog",
        cmdline=("trufflehog", "filesystem", "/home"),
        pid=77,
        provenance=provenance,
        claimed="secret_scanner",
        trust_reason="masquerading as secret_scanner: it lies in a user-writable place (/tmp)",
    )
    verdict = decide(
        VerdictInput(first_use=USE, placement_user="bob", reads=(fake,), aws=facts(IDENTITY_BY_TRUFFLEHOG))
    )
    assert verdict.hint == "suspicious"
    reason = verdict.texts[0]
    assert reason.startswith("suspicious: reader masquerading as secret_scanner: /tmp/x/trufflehog")
    for evidence in (
        "owner bob",
        "writable by a non-root user (/tmp/x: owner bob)",
        "in /tmp",
        "package none",
        "sha256 abababababab…",
    ):
        assert evidence in reason


def test_aws_finding_the_key_published_says_so() -> None:
    quarantine = call(
        "AttachUserPolicy",
        "iam.amazonaws.com",
        "AWS Internal",
        "AWS Internal",
        raw={
            "requestParameters": {
                "userName": "svc-backup-x",
                "policyArn": "arn:aws:iam::aws:policy/AWSCompromisedKeyQuarantineV2",
            }
        },
    )
    verdict = decide(VerdictInput(first_use=USE, placement_user="alice", reads=(), aws=facts(quarantine)))
    assert verdict.hint == "key_copied_elsewhere"
    assert any(
        "AWS found this key published: it attached arn:aws:iam::aws:policy/AWSCompromisedKeyQuarantineV2" in r
        for r in verdict.texts
    )
    assert not any("privilege attempt" in r for r in verdict.texts)  # AWS's own action, not an attack


def test_a_self_report_does_not_excuse_a_use_from_elsewhere() -> None:
    reads = (read("editor", minutes_before=7, **VIM),)
    verdict = decide(
        VerdictInput(
            first_use=USE,
            placement_user="alice",
            reads=reads,
            self_reports=(report(5),),
            aws=facts(call("GetCallerIdentity", "sts.amazonaws.com", "203.0.113.9")),
        )
    )
    assert verdict.hint == "suspicious"
    assert any("a self-report explains a read, not a use from outside" in r for r in verdict.texts)
