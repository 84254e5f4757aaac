"""The one EventBridge rule the documentation gives (README and docs/detection.md say the same) routes a
canary's use to the issuer's queue, and the issuer raises the alert.

Real parts: moto's EventBridge evaluates the documented pattern and delivers to its SQS queue; a live
issuer long-polls that queue. (moto's PutEvents stands in for CloudTrail publishing the record on
the default bus, which is the one step moto cannot do by itself.)
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import boto3

from server_api_client import IssuerClient
from tests.support.cloudtrail import cloudtrail_event
from tests.support.eventbridge import RULE_STATE, documented_pattern
from tests.support.paths import REPO_ROOT


def test_readme_and_detection_doc_give_the_same_rule() -> None:
    readme, detection = REPO_ROOT / "README.md", REPO_ROOT / "docs" / "detection.md"
    assert documented_pattern(readme) == documented_pattern(detection)
    assert RULE_STATE in readme.read_text() and RULE_STATE in detection.read_text()


def test_the_documented_rule_routes_a_canary_use_to_the_issuer(issuer_factory: Any, moto_url: str) -> None:
    events = boto3.client("events", endpoint_url=moto_url, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    queue = sqs.create_queue(QueueName="tripkey-canary-use")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    pattern = documented_pattern(REPO_ROOT / "docs" / "detection.md")
    events.put_rule(Name="tripkey-canary-use", EventPattern=json.dumps(pattern), State=RULE_STATE)
    events.put_targets(Rule="tripkey-canary-use", Targets=[{"Id": "issuer-queue", "Arn": queue_arn}])

    issuer = issuer_factory(sqs_queue_url=queue)
    enrolled = IssuerClient(issuer.url, issuer.create_token("enroll")).enroll(
        secrets.token_urlsafe(32), "lap-eb", "linux"
    )
    device = IssuerClient(issuer.url, enrolled.device_token)
    canary = device.mint_credential(
        enrolled.device_id, "alice", "/home/alice/.aws/credentials", "prod-backup"
    )

    def publish(detail: dict[str, Any]) -> None:
        entry = {
            "Source": "aws.sts",
            "DetailType": "AWS API Call via CloudTrail",
            "Detail": json.dumps(detail),
        }
        assert events.put_events(Entries=[entry])["FailedEntryCount"] == 0

    # An AWS service acting on its own has no access key: the rule does not send it.
    publish(
        {"eventName": "AssumeRole", "userIdentity": {"type": "AWSService", "invokedBy": "ec2.amazonaws.com"}}
    )
    use = cloudtrail_event(
        access_key_id=canary.access_key_id,
        user_name=canary.principal_name,
        event_name="GetCallerIdentity",
        event_source="sts.amazonaws.com",
        error_code=None,
    )
    publish(use["detail"])

    responder = IssuerClient(issuer.url, issuer.create_token("responder"))
    deadline = time.monotonic() + 30
    alerts: list[Any] = []
    while time.monotonic() < deadline and not alerts:
        alerts = [a for a in responder.list_alerts() if a.raw.get("access_key_id") == canary.access_key_id]
        time.sleep(0.3)
    assert alerts, "the documented rule did not bring the canary's use to the issuer"
    alert = responder.get_alert(alerts[0].alert_id).raw
    assert alert["kind"] == "canary_use" and alert["summary"]["detection_sources"] == ["sqs"]
    assert len(responder.list_alerts()) == 1  # the service event matched nothing and raised nothing
