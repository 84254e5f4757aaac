"""What AWS tells about a canary's use: who called (user-agent family), what (the kind of calls),
from where (the source address against the device's own egress), and what AWS itself did.

Pure functions over the detections of an alert and the addresses the device reached the issuer from
(issuer.egress); the verdict (issuer.alerts.verdict) combines them with the readers.

Sources for the shapes recognised here (facts, not code): CloudTrail's `userAgent` and
`sourceIPAddress` fields (AWS Internal / `<service>.amazonaws.com` when AWS acts itself), the AWS
CLI's `aws-cli/<version>` agent, botocore's `Boto3/` and `Botocore/`, the SDKs' `aws-sdk-<lang>/`,
Terraform's `HashiCorp/1.0 Terraform/`, and TruffleHog's verifier, which replaces the SDK's agent
with `TruffleHog` (trufflesecurity/trufflehog, pkg/common/http.go `UserAgent()`) and calls
sts:GetCallerIdentity (pkg/detectors/aws/access_keys/accesskey.go). AWS attaches the managed policy
`AWSCompromisedKeyQuarantine` (V2, V3) to an IAM user whose key it found published.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any

from issuer.timefmt import iso

# ---- user-agent families -------------------------------------------------------------------------

FAMILY_NAMES = {
    "aws_cli_v1": "AWS CLI v1",
    "aws_cli_v2": "AWS CLI v2",
    "boto3": "boto3/botocore",
    "aws_sdk": "another AWS SDK",
    "console": "the AWS console",
    "terraform": "Terraform",
    "secret_scanner_verifier": "a secret scanner's verifier",
    "http_library": "a generic HTTP library",
    "curl": "curl",
    "aws_internal": "AWS itself",
    "unknown": "an unrecognised client",
    "none": "no user agent recorded",
}
_HTTP_LIBRARIES = re.compile(
    r"^(python-requests|python-urllib|python-httpx|aiohttp|go-http-client|okhttp|axios|node-fetch|undici|"
    r"got|java/|apache-httpclient|libwww-perl|lwp::|wget|httpie|postmanruntime|ruby|faraday|guzzlehttp|"
    r"reqwest|rest-client|powershell|winhttp|microsoft-cryptoapi)",
    re.IGNORECASE,
)
_SDK = re.compile(r"\b(aws-sdk-[a-z0-9-]+|aws-internal|aws-chalice|aws-amplify)\b", re.IGNORECASE)
_CONSOLE = ("console.amazonaws.com", "signin.amazonaws.com", "console.ec2.amazonaws.com")
# Verifiers of open-source secret scanners that say who they are (see the module docstring).
SCANNER_VERIFIERS = (("TruffleHog", re.compile(r"^TruffleHog(\s|$)")),)


def ua_family(user_agent: str | None) -> tuple[str, str | None]:
    """(family key of FAMILY_NAMES, a detail such as the scanner's or SDK's name)."""
    if not user_agent or not user_agent.strip():
        return "none", None
    ua = user_agent.strip()
    lowered = ua.lower()
    for name, pattern in SCANNER_VERIFIERS:
        if pattern.match(ua):
            return "secret_scanner_verifier", name
    if lowered.startswith("aws-cli/2."):
        return "aws_cli_v2", ua.split(" ", 1)[0]
    if lowered.startswith("aws-cli/"):
        return "aws_cli_v1", ua.split(" ", 1)[0]
    if "terraform/" in lowered or "hashicorp/" in lowered:
        return "terraform", None
    if "boto3/" in lowered or lowered.startswith("botocore/"):
        return "boto3", ua.split(" ", 1)[0]
    sdk = _SDK.search(ua)
    if sdk:
        return "aws_sdk", sdk.group(1)
    if lowered in _CONSOLE or lowered.endswith(_CONSOLE) or lowered.startswith("mozilla/"):
        return "console", None
    if lowered == "aws internal" or lowered.endswith(".amazonaws.com"):
        return "aws_internal", ua
    if lowered.startswith("curl/"):
        return "curl", None
    if _HTTP_LIBRARIES.match(ua):
        return "http_library", ua.split("/", 1)[0]
    return "unknown", None


# ---- kinds of calls ------------------------------------------------------------------------------

IDENTITY = "identity"  # whoami: reconnaissance of the key itself
ENUMERATION = "enumeration"  # listing and reading the account
PRIVILEGE = "privilege"  # attempts to gain or mint access
WRITE = "write"  # changing or using resources
UNKNOWN_CALL = "unknown"  # the last-used safety net names a service, not a call
AWS_ACTION = "aws_action"  # AWS acting on the key itself (its quarantine policy)
KIND_ORDER = (PRIVILEGE, WRITE, ENUMERATION, IDENTITY, AWS_ACTION, UNKNOWN_CALL)

_IDENTITY_CALLS = frozenset({"GetCallerIdentity", "GetAccessKeyInfo"})
_PRIVILEGE_CALLS = frozenset(
    {
        "CreateUser",
        "CreateAccessKey",
        "UpdateAccessKey",
        "CreateLoginProfile",
        "UpdateLoginProfile",
        "AttachUserPolicy",
        "AttachRolePolicy",
        "AttachGroupPolicy",
        "PutUserPolicy",
        "PutRolePolicy",
        "PutGroupPolicy",
        "AddUserToGroup",
        "CreateRole",
        "UpdateAssumeRolePolicy",
        "CreatePolicy",
        "CreatePolicyVersion",
        "SetDefaultPolicyVersion",
        "PutUserPermissionsBoundary",
        "DeleteUserPermissionsBoundary",
        "CreateVirtualMFADevice",
        "EnableMFADevice",
        "DeactivateMFADevice",
        "CreateServiceSpecificCredential",
        "UploadSSHPublicKey",
        "AssumeRole",
        "AssumeRoleWithSAML",
        "AssumeRoleWithWebIdentity",
        "GetFederationToken",
        "GetSessionToken",
        "SendSSHPublicKey",
        "StartSession",
        "CreateInstanceProfile",
        "AddRoleToInstanceProfile",
        "PassRole",
    }
)
_ENUMERATION_PREFIXES = (
    "List",
    "Describe",
    "Get",
    "Head",
    "Search",
    "Lookup",
    "Query",
    "Scan",
    "Select",
    "BatchGet",
)


def call_kind(event_name: str | None, event_source: str | None) -> str:
    """The kind of one call (see KIND_ORDER)."""
    if not event_name or not event_source:
        return UNKNOWN_CALL  # last-used: a service name only
    if event_name in _IDENTITY_CALLS:
        return IDENTITY
    if event_name in _PRIVILEGE_CALLS:
        return PRIVILEGE
    if event_name.startswith(_ENUMERATION_PREFIXES):
        return ENUMERATION
    return WRITE


# ---- where from ---------------------------------------------------------------------------------

DEVICE_NETWORK = "device_network"  # an address the device's agent reached the issuer from
DEVICE_SUBNET = "device_subnet"  # the same /24 (IPv6 /48) as one of them
ELSEWHERE = "elsewhere"  # an address the device was never seen at
AWS_INTERNAL = "aws_internal"  # AWS acting itself ("AWS Internal", <service>.amazonaws.com)
NO_ADDRESS = "unknown"  # no source address recorded (the last-used safety net)
NO_BASELINE = "no_baseline"  # the device's own addresses are not known (it never reached the issuer)
RELATION_NAMES = {
    DEVICE_NETWORK: "this device's network",
    DEVICE_SUBNET: "the same network block as this device",
    ELSEWHERE: "an address this device was never seen at",
    AWS_INTERNAL: "inside AWS",
    NO_ADDRESS: "no address recorded",
    NO_BASELINE: "the device's own address is not known to compare with",
}


def _block(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    prefix = 24 if address.version == 4 else 48
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


def address_relation(source_ip: str | None, device_addresses: Sequence[str]) -> str:
    if not source_ip:
        return NO_ADDRESS
    text = source_ip.strip()
    if text.lower() == "aws internal" or text.lower().endswith(".amazonaws.com"):
        return AWS_INTERNAL
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return ELSEWHERE  # a hostname CloudTrail did not attribute to AWS: not the device's
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    seen = []
    for item in device_addresses:
        try:
            seen.append(ipaddress.ip_address(item))
        except ValueError:
            continue
    if not seen:
        return NO_BASELINE
    if address in seen:
        return DEVICE_NETWORK
    if any(s.version == address.version and address in _block(s) for s in seen):
        return DEVICE_SUBNET
    return ELSEWHERE


# ---- AWS's own actions ----------------------------------------------------------------------------

QUARANTINE_POLICY_PREFIX = "arn:aws:iam::aws:policy/AWSCompromisedKeyQuarantine"


def quarantine_policy(event_name: str | None, raw: dict[str, Any] | None) -> str | None:
    """The quarantine policy ARN an AttachUserPolicy call attached, if it is AWS's."""
    if event_name != "AttachUserPolicy" or not isinstance(raw, dict):
        return None
    params = raw.get("requestParameters")
    arn = params.get("policyArn") if isinstance(params, dict) else None
    return arn if isinstance(arn, str) and arn.startswith(QUARANTINE_POLICY_PREFIX) else None


MAX_CALLS_SHOWN = 200  # per-event records an alert carries (its `event_count` counts them all)

# ---- one alert's facts ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    time: dt.datetime
    name: str  # "sts:GetCallerIdentity" (service from the event source) or the service alone
    kind: str
    region: str | None
    source_ip: str | None
    relation: str
    user_agent: str | None
    family: str
    family_detail: str | None
    error_code: str | None
    detection_source: str
    quarantine: str | None = None  # the quarantine policy AWS attached, for such a call
    # The record itself: CloudTrail's eventID (the last-used safety net makes one up), name and service.
    event_id: str | None = None
    event_name: str | None = None
    event_source: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class AwsFacts:
    calls: tuple[Call, ...]
    device_addresses: tuple[str, ...] = ()
    # The newest call when `calls` had to stop short of it (an alert with more events than are loaded):
    # the "last" source address and user agent come from it.
    latest: Call | None = None

    def of_kind(self, *kinds: str) -> list[Call]:
        return [c for c in self.calls if c.kind in kinds]

    def kinds(self) -> list[str]:
        present = {c.kind for c in self.calls}
        return [k for k in KIND_ORDER if k in present]

    def families(self) -> list[str]:
        return _unique(c.family for c in self.calls if c.family != "none")

    def addresses(self) -> list[tuple[str, str]]:
        return _unique((c.source_ip, c.relation) for c in self.calls if c.source_ip)

    def regions(self) -> list[str]:
        return _unique(c.region for c in self.calls if c.region)

    def error_codes(self) -> list[str]:
        return _unique(c.error_code for c in self.calls if c.error_code)

    def quarantines(self) -> list[Call]:
        return [c for c in self.calls if c.quarantine]

    def from_elsewhere(self) -> list[Call]:
        return [c for c in self.calls if c.relation == ELSEWHERE and not c.quarantine]

    def attributed(self) -> bool:
        """At least one call carries who and from where (CloudTrail), not only the last-used date."""
        return any(c.family != "none" or c.source_ip for c in self.calls)

    def fingerprint(self) -> dict[str, list[str]]:
        """What makes a later event materially new for the sinks (issuer.alerts.updates)."""
        return {
            "addresses": sorted(ip for ip, _ in self.addresses()),
            "ua_families": sorted(self.families()),
            "call_kinds": sorted(k for k in self.kinds() if k != UNKNOWN_CALL),
            "regions": sorted(self.regions()),
        }

    def clause(self) -> str:
        """One sentence quoting the AWS-side evidence, for verdict reasons."""
        if not self.calls:
            return "no AWS-side details"
        if not self.attributed():
            return "seen only by the last-used safety net (no user agent or address recorded)"
        kinds = "; ".join(
            f"{kind}: {', '.join(_unique(c.name for c in self.of_kind(kind))[:4])}" for kind in self.kinds()
        )
        families = ", ".join(_family_text(c) for c in _unique_by_family(self.calls)) or "no user agent"
        places = (
            ", ".join(f"{ip} ({RELATION_NAMES[rel]})" for ip, rel in self.addresses()[:4]) or "no address"
        )
        errors = f"; errors {', '.join(self.error_codes()[:4])}" if self.error_codes() else ""
        return f"AWS calls ({kinds}) via {families} from {places}{errors}"

    def first_and_last(self) -> dict[str, str | None]:
        """The first and the last source address and user agent of the incident."""
        every = [*self.calls, *([self.latest] if self.latest is not None else [])]
        with_ip = [c for c in every if c.source_ip]
        with_ua = [c for c in every if c.user_agent]
        return {
            "first_source_ip": with_ip[0].source_ip if with_ip else None,
            "last_source_ip": with_ip[-1].source_ip if with_ip else None,
            "first_user_agent": with_ua[0].user_agent if with_ua else None,
            "last_user_agent": with_ua[-1].user_agent if with_ua else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            # One record per AWS event (CloudTrail record or last-used observation), oldest first.
            "calls": [
                {
                    "event_id": c.event_id,
                    "time": iso(c.time),
                    "event_name": c.event_name,
                    "event_source": c.event_source,
                    "call": c.name,
                    "kind": c.kind,
                    "region": c.region,
                    "source_ip": c.source_ip,
                    "address_relation": c.relation,
                    "user_agent": c.user_agent,
                    "user_agent_family": c.family,
                    "user_agent_detail": c.family_detail,
                    "error_code": c.error_code,
                    "detection_source": c.detection_source,
                    "quarantine_policy": c.quarantine,
                }
                for c in self.calls[:MAX_CALLS_SHOWN]
            ],
            **self.first_and_last(),
            "call_kinds": self.kinds(),
            "user_agent_families": self.families(),
            "source_addresses": [
                {"address": ip, "relation": rel, "meaning": RELATION_NAMES[rel]}
                for ip, rel in self.addresses()
            ],
            "regions": self.regions(),
            "error_codes": self.error_codes(),
            "device_addresses": list(self.device_addresses),
            "aws_found_key_published": bool(self.quarantines()),
        }


def _family_text(call: Call) -> str:
    name = FAMILY_NAMES.get(call.family, call.family)
    return f"{name} ({call.family_detail})" if call.family_detail else name


def _unique_by_family(calls: Iterable[Call]) -> list[Call]:
    seen: dict[str, Call] = {}
    for call in calls:
        if call.family != "none":
            seen.setdefault(call.family, call)
    return list(seen.values())


def _unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def service_of(event_source: str | None) -> str | None:
    return event_source.split(".", 1)[0] if event_source else None


def make_call(
    *,
    time: dt.datetime,
    event_id: str | None = None,
    event_name: str | None,
    event_source: str | None,
    region: str | None,
    source_ip: str | None,
    user_agent: str | None,
    error_code: str | None,
    detection_source: str,
    raw: dict[str, Any] | None,
    device_addresses: Sequence[str],
) -> Call:
    family, detail = ua_family(user_agent)
    quarantine = quarantine_policy(event_name, raw)
    relation = address_relation(source_ip, device_addresses)
    service = service_of(event_source)
    return Call(
        time=time,
        name=f"{service}:{event_name}" if service else (event_name or "unknown"),
        kind=AWS_ACTION if quarantine else call_kind(event_name, event_source),
        region=region,
        source_ip=source_ip,
        relation=relation,
        user_agent=user_agent,
        family=family,
        family_detail=detail,
        error_code=error_code,
        detection_source=detection_source,
        quarantine=quarantine,
        event_id=event_id,
        event_name=event_name,
        event_source=event_source,
    )


__all__ = [
    "AWS_INTERNAL",
    "DEVICE_NETWORK",
    "DEVICE_SUBNET",
    "ELSEWHERE",
    "ENUMERATION",
    "FAMILY_NAMES",
    "IDENTITY",
    "PRIVILEGE",
    "QUARANTINE_POLICY_PREFIX",
    "RELATION_NAMES",
    "WRITE",
    "AwsFacts",
    "Call",
    "address_relation",
    "call_kind",
    "make_call",
    "quarantine_policy",
    "ua_family",
]
