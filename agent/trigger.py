"""`tripkey-agent trigger`: an end-to-end self-test that uses this device's canary like an attacker.

1. Tell the issuer first (`start_selftest`), so the use that follows opens an alert labelled
   `selftest` instead of paging anyone.
2. Run the real AWS CLI against the planted file — `aws sts get-caller-identity --profile <profile>`
   with AWS_SHARED_CREDENTIALS_FILE=<that file> — and one call the canary's policy denies
   (`iam list-users`). The agent bundle carries no botocore, so without `aws` on PATH the command
   says so instead of signing requests itself.

The agent never looks at the secret: the AWS CLI reads it. But the trigger runs as root and the
file is in a user's home, so the AWS CLI is NOT pointed at that path (it would follow a symlink the
user put there, e.g. to root's own credentials, and use them). The file is read the agent's safe
way (agent.credfile.safefs: no symlink, regular file owned by its user), checked to hold exactly the
planted canary key under our profile, and copied into a root-only temporary directory that the
AWS CLI reads instead. Environment credentials are stripped so they cannot shadow the profile.

That read of the planted file is the trigger's own: before it, the trigger marks itself as the
self-test (agent.selftest_mark), and a running service labels the read `self_test`, so the issuer
never counts it as an unknown reader.

Outcomes (`TriggerReport.outcome`): `ok` (used, and the call the canary must not make was denied),
`not_denied` (that call succeeded: the canary's explicit deny is not in effect), `aws_unreachable`
(AWS, or the configured endpoint, could not be reached at all: the test proved nothing), `not_used`
(AWS refused the key itself), `unknown` (the second call failed for another reason).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from agent.clock import to_iso
from agent.config import AgentConfig
from agent.credfile import edit as credfile
from agent.planting.targets import read_target
from agent.planting.users import UnknownUser, lookup_user
from agent.selftest_mark import marked_as_selftest
from agent.state import StateStore, TargetState

AWS_TIMEOUT = 60
# What the AWS CLI (botocore) says when it never got an answer from AWS.
_UNREACHABLE = re.compile(
    r"Could not connect to the endpoint URL|Connect timeout on endpoint URL|Read timeout on endpoint URL"
    r"|SSL validation failed|Failed to connect to proxy URL|Connection was closed before we received"
)
_DENIED = re.compile(r"AccessDenied|not authorized to perform|explicit deny", re.IGNORECASE)


class TriggerError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class TriggerReport:
    path: str
    profile: str
    access_key_id: str | None
    credential_id: str
    selftest_id: str
    selftest_expires_at: str
    aws_cli: str
    identity: dict[str, Any] | None = None
    identity_error: str | None = None
    denied_call: str = "iam list-users"
    denied: bool | None = None  # True: refused as it must be; False: it was allowed; None: unknown
    denied_output: str | None = None
    aws_unreachable: str | None = None  # why AWS could not be reached at all
    aws_endpoint: str | None = None
    selftest_pid: int | None = None  # the process whose reads the agent labels self_test

    @property
    def used(self) -> bool:
        return self.identity is not None

    @property
    def outcome(self) -> str:
        if self.aws_unreachable is not None:
            return "aws_unreachable"
        if not self.used:
            return "not_used"
        return {True: "ok", False: "not_denied", None: "unknown"}[self.denied]

    def to_dict(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), used=self.used, outcome=self.outcome)

    def problem(self) -> str | None:
        """What went wrong, in one sentence; None when the self-test proved the canary works."""
        return {
            "ok": None,
            "not_denied": f"the canary {self.access_key_id} was NOT denied {self.denied_call}: its explicit "
            "deny is not in effect (check the issuer's minting policy and permissions boundary)",
            "aws_unreachable": f"AWS could not be reached: {self.aws_unreachable}",
            "not_used": f"AWS refused the canary: {self.identity_error}",
            "unknown": f"could not tell whether the canary is denied: {self.denied_output}",
        }[self.outcome]

    def text(self) -> str:
        lines = [
            f"self-test {self.selftest_id} registered with the issuer (until {self.selftest_expires_at})",
            f"canary:    {self.access_key_id} in {self.path} [profile {self.profile}]",
        ]
        if self.aws_unreachable is not None:
            where = self.aws_endpoint or "the AWS endpoints"
            lines.append(
                f"AWS could NOT be reached at {where}: {self.aws_unreachable}. The self-test proved "
                "nothing (check the network, a proxy, or aws_endpoint_url)"
            )
            return "\n".join(lines)
        if self.identity is not None:
            lines.append(
                f"sts get-caller-identity: OK as {self.identity.get('Arn')} "
                f"(account {self.identity.get('Account')})"
            )
        else:
            lines.append(f"sts get-caller-identity FAILED: {self.identity_error}")
        verdict = {
            True: "denied, as it should be",
            False: "NOT denied: the canary's explicit deny is not in effect (check the issuer's minting "
            "policy and permissions boundary)",
            None: f"could not tell: {self.denied_output}" if self.denied_output else "not run",
        }[self.denied]
        lines.append(f"{self.denied_call}: {verdict}")
        if self.used:
            lines.append("the issuer should now open a `selftest` alert for this key")
        return "\n".join(lines)


def find_aws_cli() -> str | None:
    """`aws` on PATH, else next to this Python (a virtualenv with awscli installed)."""
    found = shutil.which("aws")
    if found:
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "aws")
    return beside if os.access(beside, os.X_OK) else None


def pick_target(store: StateStore, path: str | None) -> TargetState:
    planted = {p: t for p, t in store.state.targets.items() if t.credential_id}
    if path is not None:
        ts = planted.get(os.path.normpath(path))
        if ts is None:
            raise TriggerError(f"no Tripkey credential is planted in {path}", 5)
        return ts
    for p in sorted(planted):
        if planted[p].status == "planted":
            return planted[p]
    raise TriggerError("no planted credential on this device (run `tripkey-agent plant-once`)", 5)


def aws_env(config: AgentConfig, path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=path,
        AWS_CONFIG_FILE=os.devnull,  # nothing from root's or the user's config may change the test
        AWS_DEFAULT_REGION=config.region or "us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_PAGER="",
        # One retry, not the CLI's default five with back-off: an unreachable AWS is then reported in
        # about a second instead of twelve, and a person at a terminal is waiting for the answer.
        AWS_RETRY_MODE="standard",
        AWS_MAX_ATTEMPTS="2",
    )
    return env


@contextmanager
def private_copy(config: AgentConfig, store: StateStore, ts: TargetState) -> Iterator[str]:
    """A root-only copy of the planted file, read safely and checked to hold our canary key."""
    try:
        owner = lookup_user(ts.owner, config.passwd_file)
    except UnknownUser:
        owner = None
    try:
        data = read_target(ts.path, owner)
    except (credfile.CredfileError, OSError) as exc:
        raise TriggerError(f"refusing to use {ts.path}: {exc}", 1) from None
    if data is None:
        raise TriggerError(f"{ts.path} does not exist (the agent re-plants it on its next pass)", 5)
    found = credfile.inspect_bytes(data, ts.profile, store.state.owned_key_ids)
    if found.status != credfile.SectionStatus.OURS or found.access_key_id != ts.access_key_id:
        raise TriggerError(
            f"refusing to use {ts.path}: its [{ts.profile}] profile is not the planted canary "
            f"({found.status.value}); run `tripkey-agent check`",
            1,
        )
    with tempfile.TemporaryDirectory(prefix="tripkey-trigger-") as private:  # 0700, root's
        copy = os.path.join(private, "credentials")
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield copy


def run_aws(aws: str, args: list[str], config: AgentConfig, path: str) -> subprocess.CompletedProcess[str]:
    cmd = [aws, *args, "--profile", config.profile, "--output", "json"]
    if config.aws_endpoint_url:
        cmd += ["--endpoint-url", config.aws_endpoint_url]
    return subprocess.run(
        cmd, env=aws_env(config, path), capture_output=True, text=True, timeout=AWS_TIMEOUT, check=False
    )


def run_trigger(
    config: AgentConfig, store: StateStore, client: Any, *, target: str | None = None
) -> TriggerReport:
    ts = pick_target(store, target)
    aws = find_aws_cli()
    if aws is None:
        raise TriggerError(
            "the AWS CLI (`aws`) is not installed or not on PATH; the self-test uses it as an "
            "attacker would (install awscli, or run the trigger from a host that has it)",
            6,
        )
    assert ts.credential_id is not None
    with marked_as_selftest(config.state_dir) as mark, private_copy(config, store, ts) as copy:
        info = client.start_selftest(store.state.device_id, ts.credential_id)
        report = TriggerReport(
            path=ts.path,
            profile=ts.profile,
            access_key_id=ts.access_key_id,
            credential_id=ts.credential_id,
            selftest_id=info.selftest_id,
            selftest_expires_at=to_iso(info.expires_at) or "",
            aws_cli=aws,
            aws_endpoint=config.aws_endpoint_url,
            selftest_pid=mark.pid,
        )
        sts = run_aws(aws, ["sts", "get-caller-identity"], config, copy)
        if sts.returncode == 0:
            try:
                report.identity = json.loads(sts.stdout)
            except json.JSONDecodeError:
                report.identity = {"raw": sts.stdout.strip()}
        else:
            report.identity_error = (sts.stderr or sts.stdout).strip()[-500:]
            if _UNREACHABLE.search(report.identity_error):
                report.aws_unreachable = report.identity_error.splitlines()[-1]
                return report  # nothing more to learn: the denied call would fail the same way
        denied = run_aws(aws, ["iam", "list-users", "--max-items", "1"], config, copy)
    output = (denied.stderr or denied.stdout).strip()
    report.denied_output = output[-500:]
    if denied.returncode == 0:
        report.denied = False
    elif _DENIED.search(output):
        report.denied = True
    elif _UNREACHABLE.search(output):
        report.aws_unreachable = output.splitlines()[-1]
    return report


__all__ = ["TriggerError", "TriggerReport", "find_aws_cli", "pick_target", "private_copy", "run_trigger"]
