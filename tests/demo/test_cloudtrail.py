"""The emulated account's CloudTrail (demo/cloudtrail.py): request parsing on the shapes botocore
sends, and the whole path — a signed call through the recorder arrives in the SQS queue as the
EventBridge event AWS would deliver, and the issuer's own parser reads it."""

from __future__ import annotations

import json
import urllib.parse

import boto3
import requests

from demo.cloudtrail import DETAIL_TYPE
from demo.cloudtrail_requests import error_of, request_action, signing_scope
from issuer.detection.events import parse_json_events
from tests.support.pushpath import PushPath

AUTH = (
    "AWS4-HMAC-SHA256 Credential=AKIAQYLPMN5HHHFPZAM2/20261130/eu-west-1/sts/aws4_request, "
    "SignedHeaders=content-type;host;x-amz-date, Signature=" + "0" * 64
)


def test_the_signing_scope_comes_from_the_header_or_a_presigned_query() -> None:
    assert signing_scope({"Authorization": AUTH}, {}) == ("AKIAQYLPMN5HHHFPZAM2", "eu-west-1", "sts")
    query = urllib.parse.parse_qs("X-Amz-Credential=ASIAX%2F20261130%2Fus-east-1%2Fs3%2Faws4_request")
    assert signing_scope({}, query) == ("ASIAX", "us-east-1", "s3")
    assert signing_scope({"Authorization": "Bearer nothing-to-see"}, {}) is None


def test_actions_by_protocol() -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    body = b"Action=CreateUser&Version=2010-05-08&UserName=evil"
    assert request_action("POST", "/", {}, form, body, "iam") == ("CreateUser", {"userName": "evil"}, False)
    json_headers = {"X-Amz-Target": "AmazonSQS.ReceiveMessage"}
    name, params, data = request_action("POST", "/", {}, json_headers, b'{"QueueUrl": "q"}', "sqs")
    assert (name, params, data) == ("ReceiveMessage", {"queueUrl": "q"}, True)  # a data event
    assert request_action("GET", "/", {}, {}, b"", "s3") == ("ListBuckets", {}, False)
    assert request_action("GET", "/bucket/key.txt", {}, {}, b"", "s3")[2] is True  # object level: data
    assert request_action("PUT", "/bucket", {}, {}, b"", "s3")[0] == "CreateBucket"
    assert request_action("GET", "/bucket", {"policy": [""]}, {}, b"", "s3")[0] == "GetBucketPolicy"


def test_error_codes_from_xml_json_and_headers() -> None:
    xml = b"<ErrorResponse><Error><Code>AccessDenied</Code><Message>explicit deny</Message></Error>"
    assert error_of(403, {}, xml) == ("AccessDenied", "explicit deny")
    body = json.dumps({"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "gone"}).encode()
    assert error_of(400, {}, body) == ("QueueDoesNotExist", "gone")
    assert error_of(500, {"x-amzn-ErrorType": "InternalFailure:http://x"}, b"") == ("InternalFailure", None)
    assert error_of(200, {}, xml) == (None, None)


def _received(path: PushPath) -> list:  # type: ignore[type-arg]
    assert path.recorder.flush(20)
    sqs = boto3.client("sqs", endpoint_url=path.moto_url, region_name="us-east-1")
    bodies = []
    for _ in range(3):
        bodies += [
            m["Body"]
            for m in sqs.receive_message(QueueUrl=path.queue_url, MaxNumberOfMessages=10).get("Messages", [])
        ]
    return bodies


def test_a_signed_call_arrives_in_sqs_as_aws_delivers_it(push_path: PushPath) -> None:
    iam = boto3.client("iam", endpoint_url=push_path.moto_url, region_name="us-east-1")
    iam.create_user(UserName="svc-backup-probe")
    key = iam.create_access_key(UserName="svc-backup-probe")["AccessKey"]
    attacker = dict(
        endpoint_url=push_path.aws_url,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    assert boto3.client("sts", **attacker).get_caller_identity()["Arn"].endswith("svc-backup-probe")
    sqs = boto3.client("sqs", **attacker)
    sqs.list_queues()  # management: recorded
    sqs.receive_message(QueueUrl=push_path.queue_url, WaitTimeSeconds=0)  # data event: not recorded
    requests.get(f"{push_path.aws_url}/moto-api/", timeout=10)  # unsigned: nobody to attribute it to
    bodies = _received(push_path)
    events = [parse_json_events(body, source="sqs")[0][0] for body in bodies]
    assert sorted(e.event_name for e in events) == ["GetCallerIdentity", "ListQueues"]
    [whoami] = [e for e in events if e.event_name == "GetCallerIdentity"]
    assert (whoami.access_key_id, whoami.user_name, whoami.source_ip) == (
        key["AccessKeyId"],
        "svc-backup-probe",
        "127.0.0.1",
    )
    assert whoami.event_source == "sts.amazonaws.com" and whoami.user_agent and "Boto3/" in whoami.user_agent
    envelope = json.loads(bodies[0])
    assert envelope["detail-type"] == DETAIL_TYPE and envelope["source"].startswith("aws.")
    assert push_path.recorder.failed == 0


def test_aws_quarantining_a_key_reaches_the_queue_through_its_own_rule(push_path: PushPath) -> None:
    iam = boto3.client("iam", endpoint_url=push_path.moto_url, region_name="us-east-1")
    iam.create_user(UserName="svc-backup-leaked")
    record = push_path.recorder.aws_quarantines("svc-backup-leaked")
    assert "errorCode" not in record  # the managed policy exists in this account: attached for real
    attached = iam.list_attached_user_policies(UserName="svc-backup-leaked")["AttachedPolicies"]
    assert [p["PolicyName"] for p in attached] == ["AWSCompromisedKeyQuarantineV2"]
    [body] = _received(push_path)
    [event] = parse_json_events(body, source="sqs")[0]
    assert (event.event_name, event.target_user_name, event.source_ip) == (
        "AttachUserPolicy",
        "svc-backup-leaked",
        "AWS Internal",
    )
    assert event.access_key_id is None  # no key: only the quarantine rule routes it, as configured
