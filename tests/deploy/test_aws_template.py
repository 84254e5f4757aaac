"""deploy/aws/: the canary account as code. Linted with cfn-lint, deployed into the moto server with
CloudFormation, checked against README's policy, and then used: an issuer reads the queue the stack
made and detects a canary's use that EventBridge delivered through the stack's rule.

moto gaps (documented in deploy/aws/README.md): its CloudFormation skips AWS::SQS::QueuePolicy,
AWS::Events::Connection and AWS::Events::ApiDestination (so the queue policy is checked in the
template here, and the ingest variant is linted but not deployed), and moto's EventBridge delivers
to a rule whatever its state, so ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS is checked as stored.
moto has no CloudTrail: the test puts the CloudTrail record on the default bus, which is what
CloudTrail does for a real call; the key's use itself is real (the AWS CLI with the planted key).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml  # cfn-lint and moto depend on PyYAML

from tests.support.aws import aws_cli
from tests.support.cloudtrail import cloudtrail_event
from tests.support.eventbridge import documented_pattern
from tests.support.paths import REPO_ROOT

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "aws" / "tripkey-canary-account.yaml"
ACCOUNT = "123456789012"  # moto's default account


def test_template_passes_cfn_lint() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _client(moto_url: str, service: str, region: str = "us-east-1") -> Any:
    return boto3.client(service, endpoint_url=moto_url, region_name=region)


def _deploy(moto_url: str, name: str, region: str = "us-east-1", **parameters: str) -> dict[str, str]:
    cloudformation = _client(moto_url, "cloudformation", region)
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    [stack] = cloudformation.describe_stacks(StackName=name)["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def _readme_policy() -> dict[str, Any]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### 1. The canary account") :]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block, "README's issuer policy block"
    text = block.group(1).replace("111111111111", ACCOUNT)
    return json.loads(text)  # type: ignore[no-any-return]


def _statements(moto_url: str, arns: list[str]) -> list[dict[str, Any]]:
    iam = _client(moto_url, "iam")
    found = []
    for arn in arns:
        version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
        found += document["Statement"]
    return found


def _normal(statements: list[dict[str, Any]]) -> dict[str, Any]:
    def listed(value: Any) -> list[str]:
        return sorted(value if isinstance(value, list) else [value])

    return {s["Sid"]: (listed(s["Action"]), listed(s["Resource"]), s.get("Condition")) for s in statements}


def test_stack_deploys_into_moto_with_readmes_policy_and_the_rule_and_queue(moto_url: str) -> None:
    outputs = _deploy(moto_url, "tripkey", IssuerPrincipalArn=f"arn:aws:iam::{ACCOUNT}:root")
    # The issuer's permissions are exactly README's policy (which mirrors what the code calls).
    iam = _client(moto_url, "iam")
    attached = iam.list_attached_role_policies(RoleName=outputs["IssuerRoleArn"].rsplit("/", 1)[1])
    arns = sorted(p["PolicyArn"] for p in attached["AttachedPolicies"])
    assert arns == sorted([outputs["IssuerPolicyArn"], outputs["LookupEventsPolicyArn"]])
    assert _normal(_statements(moto_url, arns)) == _normal(_readme_policy()["Statement"])
    trust = iam.get_role(RoleName=outputs["IssuerRoleArn"].rsplit("/", 1)[1])["Role"]
    assert trust["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "AWS": f"arn:aws:iam::{ACCOUNT}:root"
    }

    events = _client(moto_url, "events")
    rule = events.describe_rule(Name="tripkey-canary-use")
    assert rule["Arn"] == outputs["RuleArn"]
    assert rule["State"] == "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS", "read-only calls must reach it"
    # The one rule README and docs/detection.md give (tests/issuer/detection/test_eventbridge_rule.py).
    assert json.loads(rule["EventPattern"]) == documented_pattern(REPO_ROOT / "docs" / "detection.md")
    [target] = events.list_targets_by_rule(Rule="tripkey-canary-use")["Targets"]
    assert target["Arn"] == outputs["QueueArn"]

    # The queue policy (moto's CloudFormation does not create it: checked in the template): only
    # EventBridge, only for this rule.
    template = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    [statement] = template["Resources"]["CanaryUseQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["CanaryUseRule", "Arn"]}}
    }


def test_permissions_boundary_and_federation_variants(moto_url: str) -> None:
    boundary = f"arn:aws:iam::{ACCOUNT}:policy/canary-boundary"
    outputs = _deploy(
        moto_url,
        "tripkey-variant",
        PermissionsBoundaryArn=boundary,
        MintingBackend="sts-federation",
        EnableLookupEvents="false",
        NamePrefix="svc-ci-",
        IamPath="/tk/",
        QueueName="tk-variant",
    )
    assert "IssuerRoleArn" not in outputs and "LookupEventsPolicyArn" not in outputs
    statements = _normal(_statements(moto_url, [outputs["IssuerPolicyArn"], outputs["FederationPolicyArn"]]))
    user_arn = f"arn:aws:iam::{ACCOUNT}:user/tk/svc-ci-*"
    assert statements["CreateCanaryUsers"] == (
        ["iam:CreateUser"],
        [user_arn],
        {"StringEquals": {"iam:PermissionsBoundary": boundary}},
    )
    assert statements["MintAndRevokeCanaryUsers"][1] == [user_arn]
    assert statements["MintFederationTokens"] == (
        ["sts:GetFederationToken"],
        [f"arn:aws:sts::{ACCOUNT}:federated-user/svc-ci-*"],
        None,
    )
    assert "PullDetection" not in statements


def _wait_for_alert(issuer: Any, token: str, access_key_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for summary in issuer.request("GET", "/v1/alerts", token).json()["alerts"]:
            if summary["access_key_id"] == access_key_id:
                return issuer.request("GET", f"/v1/alerts/{summary['alert_id']}", token).json()  # type: ignore[no-any-return]
        time.sleep(0.5)
    raise AssertionError(f"no alert for {access_key_id} within {timeout:.0f} s")


@pytest.mark.parametrize("use_region", ["us-east-1", "us-west-2"])
def test_issuer_detects_a_canary_use_through_the_stacks_queue(
    moto_url: str, issuer_factory: Any, tmp_path: Path, use_region: str
) -> None:
    """Primary stack in us-east-1 (queue, rule, policy), a forwarder stack in us-west-2; the issuer
    is configured with nothing but the stack's QueueUrl output. The canary is used in `use_region`."""
    outputs = _deploy(moto_url, "tripkey", IssuerPrincipalArn=f"arn:aws:iam::{ACCOUNT}:root")
    _deploy(moto_url, "tripkey-forward", "us-west-2", Mode="forwarder", PrimaryRegion="us-east-1")
    issuer = issuer_factory(sqs_queue_url=outputs["QueueUrl"])
    issuer.app.state.detection_runner.sqs_wait_seconds = 1
    device_id, device_token = issuer.enroll("laptop-iac")
    minted = issuer.request(
        "POST",
        f"/v1/devices/{device_id}/credentials",
        device_token,
        json={"local_user": "alice", "path": "/home/alice/.aws/credentials", "profile": "prod-backup"},
    )
    assert minted.status_code == 201, minted.text
    cred = minted.json()

    # The attacker's call, for real: the AWS CLI with the canary from a credentials file.
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[stolen]\naws_access_key_id = {cred['access_key_id']}\n"
        f"aws_secret_access_key = {cred['secret_access_key']}\n"
    )
    credentials.chmod(0o600)
    called = aws_cli(
        ["sts", "get-caller-identity", "--profile", "stolen", "--region", use_region],
        credentials_file=credentials,
        moto_url=moto_url,
    )
    assert called.returncode == 0, called.stderr
    # What CloudTrail hands EventBridge for that call, on the default bus of the region it was made in.
    record = cloudtrail_event(
        access_key_id=cred["access_key_id"],
        user_name=cred["principal_name"],
        event_name="GetCallerIdentity",
        event_source="sts.amazonaws.com",
        error_code=None,
    )["detail"]
    record["awsRegion"] = use_region
    put = _client(moto_url, "events", use_region).put_events(
        Entries=[
            {"Source": "aws.sts", "DetailType": "AWS API Call via CloudTrail", "Detail": json.dumps(record)},
            # A call without an access key (a service acting) does not match the rule: never queued.
            {
                "Source": "aws.sts",
                "DetailType": "AWS API Call via CloudTrail",
                "Detail": json.dumps({**record, "userIdentity": {"type": "AWSService"}}),
            },
        ]
    )
    assert put["FailedEntryCount"] == 0

    responder = issuer.create_token("responder")
    alert = _wait_for_alert(issuer, responder, cred["access_key_id"])
    assert alert["kind"] == "canary_use"
    assert alert["summary"]["detection_sources"] == ["sqs"]
    assert alert["enrichment"]["device"]["hostname"] == "laptop-iac"
    assert alert["summary"]["regions"] == [use_region]
    sqs = _client(moto_url, "sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=outputs["QueueUrl"], AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0", "the unmatched event never reached the queue"


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !GetAtt, !Sub ...) as their long forms."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)
