"""AWS-side facts (issuer/alerts/awsfacts.py): user-agent families on real agent strings, kinds of
calls, where a call came from relative to the device, and AWS's own quarantine.

User agents: the AWS CLI v1 string is what the CLI installed here sent through the emulated
CloudTrail (`tripkey demo`); the v2, boto3 and Terraform strings are in the shapes their SDKs document
(`aws-cli/2.x ... exe/...`, `Boto3/... md/Botocore#...`, `APN/1.0 HashiCorp/1.0 Terraform/...
terraform-provider-aws/... aws-sdk-go-v2/...`); TruffleHog's verifier sends exactly `TruffleHog`
(trufflesecurity/trufflehog pkg/common/http.go).
"""

from __future__ import annotations

import pytest

from issuer.alerts.awsfacts import (
    AWS_INTERNAL,
    DEVICE_NETWORK,
    DEVICE_SUBNET,
    ELSEWHERE,
    NO_ADDRESS,
    NO_BASELINE,
    address_relation,
    call_kind,
    quarantine_policy,
    ua_family,
)

CLI_V1 = (
    "aws-cli/1.46.3 md/Botocore#1.43.62 ua/2.1 os/linux#6.18.44-fc-v782 md/arch#x86_64 lang/python#3.11.7 "
    "md/pyimpl#CPython m/n,b,Z,N,D cfg/retry-mode#legacy botocore/1.43.62"
)


@pytest.mark.parametrize(
    ("agent", "family"),
    [
        (CLI_V1, "aws_cli_v1"),
        (
            "aws-cli/2.15.30 Python/3.11.8 Linux/6.5.0-1014-aws exe/x86_64.ubuntu.22 prompt/off "
            "command/sts.get-caller-identity",
            "aws_cli_v2",
        ),
        (
            "Boto3/1.34.0 md/Botocore#1.34.0 ua/2.0 os/linux#6.1.0 md/arch#x86_64 lang/python#3.11.7 "
            "Botocore/1.34.0",
            "boto3",
        ),
        (
            "aws-sdk-go-v2/1.24.0 os/linux lang/go#1.21.5 md/GOOS#linux md/GOARCH#amd64 api/sts#1.26.6",
            "aws_sdk",
        ),
        (
            "APN/1.0 HashiCorp/1.0 Terraform/1.5.7 (+https://www.terraform.io) terraform-provider-aws/5.17.0 "
            "(+https://registry.terraform.io/providers/hashicorp/aws) aws-sdk-go-v2/1.21.0 os/linux "
            "lang/go#1.20.8",
            "terraform",
        ),
        ("TruffleHog", "secret_scanner_verifier"),
        ("TruffleHog trufflehog-enterprise", "secret_scanner_verifier"),
        ("curl/8.4.0", "curl"),
        ("python-requests/2.31.0", "http_library"),
        ("Go-http-client/1.1", "http_library"),
        ("console.amazonaws.com", "console"),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15", "console"),
        ("AWS Internal", "aws_internal"),
        ("cloudformation.amazonaws.com", "aws_internal"),
        ("", "none"),
        (None, "none"),
        ("totally-custom-tool/0.1", "unknown"),
    ],
)
def test_user_agent_families(agent: str | None, family: str) -> None:
    assert ua_family(agent)[0] == family


def test_a_name_inside_someone_elses_agent_is_not_a_scanner() -> None:
    # Only an agent that *starts* with TruffleHog is its verifier; anyone can mention it.
    assert ua_family("curl/8.4.0 TruffleHog")[0] == "curl"


@pytest.mark.parametrize(
    ("name", "source", "kind"),
    [
        ("GetCallerIdentity", "sts.amazonaws.com", "identity"),
        ("ListBuckets", "s3.amazonaws.com", "enumeration"),
        ("DescribeInstances", "ec2.amazonaws.com", "enumeration"),
        ("CreateUser", "iam.amazonaws.com", "privilege"),
        ("AssumeRole", "sts.amazonaws.com", "privilege"),
        ("RunInstances", "ec2.amazonaws.com", "write"),
        ("sts", None, "unknown"),  # the last-used safety net names a service only
    ],
)
def test_kinds_of_calls(name: str, source: str | None, kind: str) -> None:
    assert call_kind(name, source) == kind


def test_where_a_call_came_from_relative_to_the_device() -> None:
    seen = ["198.51.100.7", "2001:db8:1:2::9"]
    assert address_relation("198.51.100.7", seen) == DEVICE_NETWORK
    assert address_relation("::ffff:198.51.100.7", seen) == DEVICE_NETWORK  # IPv4-mapped
    assert address_relation("198.51.100.200", seen) == DEVICE_SUBNET
    assert address_relation("2001:db8:1:ffff::1", seen) == DEVICE_SUBNET  # same /48
    assert address_relation("203.0.113.9", seen) == ELSEWHERE
    assert address_relation("AWS Internal", seen) == AWS_INTERNAL
    assert address_relation("lambda.amazonaws.com", seen) == AWS_INTERNAL
    assert address_relation(None, seen) == NO_ADDRESS
    # A device never seen by the issuer has no baseline: "elsewhere" would be a guess.
    assert address_relation("203.0.113.9", []) == NO_BASELINE


def test_aws_quarantine_policies_are_recognised_by_arn() -> None:
    for version in ("", "V2", "V3"):
        arn = f"arn:aws:iam::aws:policy/AWSCompromisedKeyQuarantine{version}"
        assert quarantine_policy("AttachUserPolicy", {"requestParameters": {"policyArn": arn}}) == arn
    other = {"requestParameters": {"policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}}
    assert quarantine_policy("AttachUserPolicy", other) is None
    assert quarantine_policy("DetachUserPolicy", {"requestParameters": {"policyArn": arn}}) is None
    assert quarantine_policy("AttachUserPolicy", {"requestParameters": "junk"}) is None
