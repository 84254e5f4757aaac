"""Matching and alert de-duplication against a real SQLite database built from the models."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import select

from issuer.detection.counters import read_counter
from issuer.detection.events import parse_eventbridge_event
from issuer.detection.pipeline import process_events
from issuer.models import Alert, Delivery, Detection, SelfTest
from tests.support.cloudtrail import cloudtrail_event, now


def run(det_sessionmaker, *raw_events, source="sqs", sinks=("hook",), own_arns=()):  # type: ignore[no-untyped-def]
    events = [parse_eventbridge_event(raw, source=source) for raw in raw_events]
    return process_events(
        det_sessionmaker, events, sink_names=list(sinks), stale_after_seconds=3600, own_arns=own_arns
    )


def alerts(det_sessionmaker) -> list[Alert]:  # type: ignore[no-untyped-def]
    with det_sessionmaker() as session:
        return list(session.scalars(select(Alert).order_by(Alert.created_at)))


def test_use_opens_one_alert_and_later_uses_join(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    t0 = now() - dt.timedelta(minutes=5)
    first = cloudtrail_event(access_key_id=cred.access_key_id, user_name=cred.principal_name, when=t0)
    second = cloudtrail_event(
        access_key_id=cred.access_key_id,
        user_name=cred.principal_name,
        when=t0 + dt.timedelta(minutes=1),
        event_name="GetCallerIdentity",
        event_source="sts.amazonaws.com",
        source_ip="198.51.100.7",
        error_code=None,
    )
    stats = run(det_sessionmaker, first)
    assert len(stats.alerts_opened) == 1
    stats = run(det_sessionmaker, second)
    assert stats.alerts_joined == [stats.alerts_joined[0]] and not stats.alerts_opened
    [alert] = alerts(det_sessionmaker)
    assert alert.kind == "canary_use" and alert.severity == "high" and alert.status == "open"
    assert alert.event_count == 2
    assert alert.summary["source_ips"] == ["203.0.113.9", "198.51.100.7"]
    assert alert.summary["event_names"] == [
        "s3.amazonaws.com:ListBuckets",
        "sts.amazonaws.com:GetCallerIdentity",
    ]
    assert alert.summary["error_codes"] == ["AccessDenied"]
    assert alert.summary["regions"] == ["us-east-1"]
    assert alert.summary["user_agents"] == ["aws-cli/1.32.0 Python/3.11"]
    assert cred.access_key_id in alert.title and "lap-17" in alert.title
    enrichment = alert.enrichment
    assert enrichment["device"]["hostname"] == "lap-17"
    assert enrichment["placement"]["local_user"] == "alice"
    assert enrichment["credential"]["access_key_id"] == cred.access_key_id
    assert enrichment["agent_health"]["stale_at_use"] is False
    with det_sessionmaker() as session:
        deliveries = session.scalars(select(Delivery)).all()
        assert [(d.sink, d.status) for d in deliveries] == [("hook", "pending")], "delivered once per alert"


def test_resolved_alert_then_new_use_opens_new_alert(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    run(det_sessionmaker, cloudtrail_event(access_key_id=cred.access_key_id))
    with det_sessionmaker() as session:
        alert = session.scalars(select(Alert)).one()
        alert.status = "acknowledged"
        session.commit()
    assert run(det_sessionmaker, cloudtrail_event(access_key_id=cred.access_key_id)).alerts_joined
    with det_sessionmaker() as session:
        session.scalars(select(Alert)).one().status = "resolved"
        session.commit()
    assert run(det_sessionmaker, cloudtrail_event(access_key_id=cred.access_key_id)).alerts_opened
    assert [a.status for a in alerts(det_sessionmaker)] == ["resolved", "open"]


def test_same_event_twice_or_via_two_sources_is_one_detection(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    raw = cloudtrail_event(access_key_id=cred.access_key_id, event_id="same-event")
    run(det_sessionmaker, raw, source="sqs")
    stats = run(det_sessionmaker, raw, source="sqs")
    assert stats.duplicates == 1
    stats = run(det_sessionmaker, raw, source="lookup_events")
    assert stats.duplicates == 1
    [alert] = alerts(det_sessionmaker)
    assert alert.event_count == 1
    with det_sessionmaker() as session:
        assert len(session.scalars(select(Detection)).all()) == 1


def test_retired_and_revoked_credentials_still_match(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    retired = det_credential(retired=True)
    revoked = det_credential(revoked=True)
    run(
        det_sessionmaker,
        cloudtrail_event(access_key_id=retired.access_key_id),
        cloudtrail_event(access_key_id=revoked.access_key_id),
    )
    assert {a.credential_id for a in alerts(det_sessionmaker)} == {retired.id, revoked.id}


def test_match_by_principal_when_key_unknown(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    iam = det_credential(principal_name="svc-backup-byname")
    fed = det_credential(principal_name="svc-backup-fed42", backend="sts-federation")
    identity = {
        "type": "FederatedUser",
        "arn": "arn:aws:sts::123456789012:federated-user/svc-backup-fed42",
        "accountId": "123456789012",
        "accessKeyId": "ASIAUNKNOWNSESSION01",
    }
    run(
        det_sessionmaker,
        cloudtrail_event(access_key_id="AKIANOTINREGISTRY001", user_name="svc-backup-byname"),
        cloudtrail_event(identity=identity),
    )
    assert {a.credential_id for a in alerts(det_sessionmaker)} == {iam.id, fed.id}


def test_principal_name_in_another_account_does_not_match(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential(principal_name="svc-backup-samename")
    identity = {
        "type": "IAMUser",
        "arn": "arn:aws:iam::999999999999:user/svc-backup-samename",
        "accountId": "999999999999",
        "accessKeyId": "AKIAELSEWHERE0000001",
        "userName": "svc-backup-samename",
    }
    tamper = cloudtrail_event(
        identity={**identity, "userName": "admin", "arn": "arn:aws:iam::999999999999:user/admin"},
        event_name="DeleteUser",
        event_source="iam.amazonaws.com",
        request_parameters={"userName": cred.principal_name},
    )
    stats = run(det_sessionmaker, cloudtrail_event(identity=identity), tamper)
    assert stats.unmatched == 2
    assert alerts(det_sessionmaker) == []


def test_unmatched_events_are_counted_not_alerted(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    det_credential()
    stats = run(det_sessionmaker, cloudtrail_event(access_key_id="AKIAOTHER00000000001", user_name="bob"))
    assert stats.unmatched == 1
    assert alerts(det_sessionmaker) == []
    with det_sessionmaker() as session:
        assert read_counter(session, "sqs.unmatched") == 1


def test_principal_tamper_is_a_separate_high_alert(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    attacker = {
        "type": "IAMUser",
        "arn": "arn:aws:iam::123456789012:user/mallory",
        "accountId": "123456789012",
        "accessKeyId": "AKIAMALLORY000000001",
        "userName": "mallory",
    }
    raw = cloudtrail_event(
        identity=attacker,
        event_name="DeleteUserPolicy",
        event_source="iam.amazonaws.com",
        request_parameters={"userName": cred.principal_name, "policyName": "deny-all"},
        error_code=None,
    )
    run(det_sessionmaker, cloudtrail_event(access_key_id=cred.access_key_id), raw)
    kinds = {a.kind: a for a in alerts(det_sessionmaker)}
    assert set(kinds) == {"canary_use", "principal_tamper"}
    tamper = kinds["principal_tamper"]
    assert tamper.severity == "high"
    assert "mallory" in tamper.title and cred.principal_name in tamper.title
    assert "someone other than the issuer" in tamper.verdict["reasons"][0]["text"]


def test_the_issuers_own_iam_calls_are_not_tampering(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    issuer_arn = "arn:aws:sts::123456789012:assumed-role/tripkey/credential-issuer"
    identity = {
        "type": "AssumedRole",
        "arn": issuer_arn,
        "accountId": "123456789012",
        "accessKeyId": "ASIAISSUER0000000001",
    }
    raw = cloudtrail_event(
        identity=identity,
        event_name="DeleteAccessKey",
        event_source="iam.amazonaws.com",
        request_parameters={"userName": cred.principal_name},
        error_code=None,
    )
    stats = run(det_sessionmaker, raw, own_arns={issuer_arn})
    assert stats.unmatched == 1
    assert alerts(det_sessionmaker) == []


def test_use_during_selftest_window_is_labelled(det_sessionmaker, det_credential) -> None:  # type: ignore[no-untyped-def]
    cred = det_credential()
    with det_sessionmaker() as session:
        session.add(
            SelfTest(
                id="st_1",
                credential_id=cred.id,
                created_at=now() - dt.timedelta(minutes=1),
                expires_at=now() + dt.timedelta(minutes=14),
            )
        )
        session.commit()
    run(det_sessionmaker, cloudtrail_event(access_key_id=cred.access_key_id))
    [alert] = alerts(det_sessionmaker)
    assert (alert.kind, alert.severity) == ("selftest", "low")
    assert alert.title.startswith("Self-test")
    with det_sessionmaker() as session:
        assert session.get(SelfTest, "st_1").used_at is not None
    # After the window, a use is a real incident again.
    run(
        det_sessionmaker,
        cloudtrail_event(access_key_id=cred.access_key_id, when=now() + dt.timedelta(minutes=20)),
    )
    assert sorted(a.kind for a in alerts(det_sessionmaker)) == ["canary_use", "selftest"]


def test_enrichment_reads_window_and_verdict(det_sessionmaker, det_credential, det_add_read) -> None:  # type: ignore[no-untyped-def]
    planted = now() - dt.timedelta(hours=3)
    cred = det_credential(created_at=planted)
    use = now() - dt.timedelta(hours=1)
    det_add_read(cred, when=planted - dt.timedelta(hours=1), exe="/usr/bin/old")  # before planting
    det_add_read(
        cred,
        when=planted + dt.timedelta(minutes=10),
        exe="/usr/bin/aws",
        classification="aws_tool",
        cmdline=["aws", "s3", "ls"],
    )
    det_add_read(
        cred,
        when=use - dt.timedelta(minutes=30),
        exe="/tmp/.x/grabber",
        classification="unknown",
        cmdline=["grabber", "--all"],
        user="alice",
    )
    det_add_read(cred, when=use + dt.timedelta(minutes=5), exe="/usr/bin/less")  # shortly after: context
    det_add_read(cred, when=use + dt.timedelta(minutes=30), exe="/usr/bin/late")  # too late
    run(det_sessionmaker, cloudtrail_event(access_key_id=cred.access_key_id, when=use))
    [alert] = alerts(det_sessionmaker)
    reads = alert.enrichment["reads"]
    assert [r["exe"] for r in reads] == ["/usr/bin/aws", "/tmp/.x/grabber", "/usr/bin/less"]
    assert [r["after_first_use"] for r in reads] == [False, False, True]
    assert reads[1]["cmdline"] == ["grabber", "--all"] and reads[1]["classification"] == "unknown"
    assert alert.verdict["hint"] == "suspicious"
    assert any(
        "/tmp/.x/grabber" in reason["text"] and "grabber --all" in reason["text"]
        for reason in alert.verdict["reasons"]
    )
    assert not any("/usr/bin/less" in reason["text"] for reason in alert.verdict["reasons"]), (
        "after use: no leak"
    )


def test_a_read_in_the_same_second_as_the_use_can_be_the_leak(
    det_sessionmaker, det_credential, det_add_read
) -> None:  # type: ignore[no-untyped-def]
    """Regression: a scanner reads at 03:17:00.086 and verifies the key; CloudTrail records the call at
    03:17:00 (whole seconds). The read must count as before the use, not after it."""
    cred = det_credential()
    use = now().replace(microsecond=0) - dt.timedelta(minutes=1)
    det_add_read(
        cred,
        when=use + dt.timedelta(milliseconds=86),
        exe="/opt/tools/trufflehog",
        classification="secret_scanner",
        cmdline=["trufflehog", "filesystem", "/home"],
    )
    whoami = cloudtrail_event(
        access_key_id=cred.access_key_id,
        when=use,
        event_name="GetCallerIdentity",
        event_source="sts.amazonaws.com",
        user_agent="TruffleHog",
        error_code=None,
    )
    run(det_sessionmaker, whoami)
    [alert] = alerts(det_sessionmaker)
    assert alert.enrichment["reads"][0]["after_first_use"] is False
    assert alert.verdict["hint"] == "scanner_verification"


def test_self_report_and_stale_agent(det_sessionmaker, det_credential, det_add_read) -> None:  # type: ignore[no-untyped-def]
    stale = det_credential(heartbeat_at=now() - dt.timedelta(days=2))
    run(det_sessionmaker, cloudtrail_event(access_key_id=stale.access_key_id))
    fine = det_credential()
    use = now() - dt.timedelta(minutes=10)
    det_add_read(fine, when=use - dt.timedelta(minutes=20), exe="/usr/bin/vim", classification="editor")
    det_add_read(fine, when=use - dt.timedelta(minutes=15), kind="self_report", note="opened by mistake")
    run(det_sessionmaker, cloudtrail_event(access_key_id=fine.access_key_id, when=use))
    by_cred = {a.credential_id: a for a in alerts(det_sessionmaker)}
    assert by_cred[stale.id].verdict["hint"] == "context_incomplete"
    assert by_cred[stale.id].enrichment["agent_health"]["stale_at_use"] is True
    assert by_cred[fine.id].verdict["hint"] == "likely_benign"
    assert by_cred[fine.id].enrichment["self_reports"][0]["note"] == "opened by mistake"
    json.dumps([a.enrichment for a in by_cred.values()])  # JSON-serialisable


def test_many_reads_keep_the_ones_nearest_the_first_use(  # type: ignore[no-untyped-def]
    det_sessionmaker, det_credential, det_add_read, monkeypatch
) -> None:
    """A long-planted key collects routine reads; when the cap bites, the reads right before the use
    (where the leak is) must be kept, not the oldest ones."""
    from issuer.alerts import enrich

    monkeypatch.setattr(enrich, "MAX_READS", 3)
    planted = now() - dt.timedelta(days=30)
    cred = det_credential(created_at=planted)
    use = now() - dt.timedelta(hours=1)
    for day in range(1, 6):
        det_add_read(
            cred, when=planted + dt.timedelta(days=day), exe="/usr/bin/aws", classification="aws_tool"
        )
    det_add_read(cred, when=use - dt.timedelta(minutes=30), exe="/tmp/.x/grabber", classification="unknown")
    run(det_sessionmaker, cloudtrail_event(access_key_id=cred.access_key_id, when=use))
    [alert] = alerts(det_sessionmaker)
    exes = [r["exe"] for r in alert.enrichment["reads"]]
    assert len(exes) == 3 and exes[-1] == "/tmp/.x/grabber", exes
    assert alert.verdict["hint"] == "suspicious"
