"""Principal tampering through the runner: the issuer learns its own identity from STS (moto), so
its own IAM calls on canaries are not alerts, anyone else's are."""

from __future__ import annotations

from sqlalchemy import select

from issuer.detection.events import parse_eventbridge_event
from issuer.detection.runner import DetectionRunner
from issuer.models import Alert
from tests.support.cloudtrail import cloudtrail_event


def iam_call(arn: str, event_name: str, target: str) -> dict:  # type: ignore[type-arg]
    identity = {
        "type": "IAMUser" if ":user/" in arn else "AssumedRole",
        "arn": arn,
        "accountId": "123456789012",
        "accessKeyId": "AKIAOPERATOR00000001",
    }
    return cloudtrail_event(
        identity=identity,
        event_name=event_name,
        event_source="iam.amazonaws.com",
        request_parameters={"userName": target},
        error_code=None,
    )


def test_tamper_by_others_alerts_issuer_itself_does_not(
    det_gateway, det_settings, det_sessionmaker, det_credential
) -> None:  # type: ignore[no-untyped-def]
    minted = det_gateway.mint("default")
    cred = det_credential(access_key_id=minted.access_key_id, principal_name=minted.principal_name)
    own_arn = det_gateway.client("sts").get_caller_identity()["Arn"]
    runner = DetectionRunner(det_settings(), det_sessionmaker, det_gateway)
    events = [
        iam_call(own_arn, "PutUserPolicy", cred.principal_name),  # the issuer minting
        iam_call(own_arn, "DeleteAccessKey", cred.principal_name),  # the issuer revoking
        iam_call("arn:aws:iam::123456789012:user/mallory", "AttachUserPolicy", cred.principal_name),
        iam_call("arn:aws:iam::123456789012:user/mallory", "CreateAccessKey", cred.principal_name),
        iam_call("arn:aws:iam::123456789012:user/mallory", "AttachUserPolicy", "some-real-user"),
        iam_call("arn:aws:iam::123456789012:user/mallory", "ListUsers", cred.principal_name),
    ]
    stats = runner.handle_events([parse_eventbridge_event(e, source="sqs") for e in events], source="sqs")
    assert stats.unmatched == 4
    assert runner.own_arns() == {own_arn}
    with det_sessionmaker() as session:
        [alert] = session.scalars(select(Alert)).all()
    assert (alert.kind, alert.severity, alert.event_count) == ("principal_tamper", "high", 2)
    assert alert.summary["event_names"] == [
        "iam.amazonaws.com:AttachUserPolicy",
        "iam.amazonaws.com:CreateAccessKey",
    ]
