"""End to end, issue 12: every verdict hint, reached by real local users of this machine and detected
through the emulated account's real push path (CloudTrail recorder -> events:PutEvents -> EventBridge
rule -> SQS -> the issuer), including a reader whose name claims a trusted label but whose provenance
does not support it, an update of an alert that follows its incident, and AWS itself finding a key.

Real parts: the installed `tripkey-agent` with the fanotify sensor, users made with useradd, real
binaries (cat copied under a scanner's name), the real AWS CLI (and a botocore client playing
TruffleHog's verifier, which identifies itself with the user agent `TruffleHog`), a moto server as
the account, the recorder of demo/cloudtrail.py, the issuer on loopback with a signed webhook sink.
An attacker "elsewhere" connects through a relay bound to another loopback /24 (127.77.0.9).
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from issuer.alerts.verdict import HINTS
from server_api_client import IssuerClient
from tests.support.e2e import E2EUser, wait_for_agent
from tests.support.net import SourceRelay
from tests.support.paths import VENV_BIN, requires_root
from tests.support.pushpath import PushPath

PROFILE = "prod-backup"
HOOK_SECRET = "triage-e2e-webhook-secret"
# Long enough that a loaded machine's late heartbeat never looks like a stale agent; the last scenario
# waits this long after stopping the agent.
STALE_AFTER = 30
SETPRIV = ["setpriv", "--clear-groups"]


def as_user(user: E2EUser, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SETPRIV, f"--reuid={user.uid}", f"--regid={user.gid}", *argv],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        **kwargs,
    )


def user_file(user: E2EUser, *parts: str) -> Path:
    """`~user/<parts>/.aws/credentials`, every directory the user's own (the planter insists)."""
    directory = user.home
    for part in (*parts, ".aws"):
        directory = directory / part
        directory.mkdir(mode=0o700)
        os.chown(directory, user.uid, user.gid)
    return directory / "credentials"


def keys_in(text: str) -> tuple[str, str]:
    parser = configparser.ConfigParser()
    parser.read_string(text)
    return parser[PROFILE]["aws_access_key_id"], parser[PROFILE]["aws_secret_access_key"]


def aws(
    endpoint: str,
    *argv: str,
    keys: tuple[str, str] | None = None,
    credentials: Path | None = None,
    cli: Path = VENV_BIN / "aws",
) -> str:
    """The real AWS CLI: with keys taken out of the file (no read of it) or reading the file itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true")
    if keys is not None:
        env.update(
            AWS_ACCESS_KEY_ID=keys[0], AWS_SECRET_ACCESS_KEY=keys[1], AWS_SHARED_CREDENTIALS_FILE=os.devnull
        )
    else:
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(credentials)
    profile = ["--profile", PROFILE] if credentials is not None else []
    done = subprocess.run(
        [str(cli), "--endpoint-url", endpoint, *profile, *argv, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def trufflehog_verifies(endpoint: str, keys: tuple[str, str]) -> None:
    """What TruffleHog does with an AWS key it finds: sts:GetCallerIdentity, its own user agent."""
    sts = botocore.session.get_session().create_client(
        "sts",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id=keys[0],
        aws_secret_access_key=keys[1],
    )

    def replace_agent(request: Any, **_: Any) -> None:
        request.headers["User-Agent"] = "TruffleHog"

    sts.meta.events.register("before-send.sts.GetCallerIdentity", replace_agent)
    sts.get_caller_identity()


@pytest.fixture
def installed_aws() -> Iterator[Path]:
    """The venv's `aws` script as an administrator installs a tool: root-owned, mode 0755, outside every
    user-writable place. The checkout itself may live in one (a clean clone in /tmp), and a trusted
    label rightly does not hold for a script there: the curious user runs the installed copy."""
    directory = Path(tempfile.mkdtemp(prefix="tripkey-e2e-tools-", dir="/opt"))
    try:
        directory.chmod(0o755)
        installed = directory / "aws"
        shutil.copy2(VENV_BIN / "aws", installed)
        installed.chmod(0o755)
        yield installed
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@requires_root
def test_every_verdict_hint_through_cloudtrail_eventbridge_and_sqs(
    tmp_path: Path,
    issuer_factory: Any,
    push_path: PushPath,
    e2e_users: list[E2EUser],
    det_webhook: Any,
    installed_aws: Path,
) -> None:
    alice, bob = e2e_users
    hook = det_webhook(secret=HOOK_SECRET)
    issuer = issuer_factory(
        aws_endpoint=push_path.moto_url,
        sqs_queue_url=push_path.queue_url,
        poll_interval=120,  # the last-used safety net stays on, but the push path is what is tested
        stale_after_seconds=STALE_AFTER,
        alert_update_min_interval=0,
        sinks=[{"type": "webhook", "name": "soc", "url": hook.url, "secret": HOOK_SECRET}],
    )
    responder = IssuerClient(issuer.url, issuer.create_token("responder"), timeout=10, retries=1)
    files = {
        "masquerade": user_file(alice),
        "benign": user_file(alice, "work"),
        "scanner": user_file(bob),
        "elsewhere": user_file(bob, "backup"),
        "stale": user_file(bob, "old"),
    }
    root_home = tmp_path / "root-home" / ".aws"
    root_home.mkdir(parents=True, mode=0o700)
    files["curious"] = root_home / "credentials"
    owners = {"masquerade": alice.name, "benign": alice.name, "scanner": bob.name, "elsewhere": bob.name}
    owners |= {"stale": bob.name, "curious": "root"}
    sockets = Path(tempfile.mkdtemp(prefix="tripkey-e2e-sock-"))
    sockets.chmod(0o755)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'issuer_url = "{issuer.url}"\nenroll_token = "{issuer.create_token("enroll")}"\n'
        f'profile = "{PROFILE}"\nstate_dir = "{tmp_path / "state"}"\nsensor = "fanotify"\nall_users = false\n'
        f"upload_interval = 0.5\nheartbeat_interval = 1\n"
        f'selfreport_socket = "{sockets / "selfreport.sock"}"\n'
        + "".join(f'[[target]]\npath = "{files[n]}"\nowner = "{owners[n]}"\n' for n in files)
    )
    config.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPKEY_")}
    agent_cmd = [str(VENV_BIN / "tripkey-agent")]

    # Planted before the sensor runs: the two keys read now travel "without a read on this host".
    planted = subprocess.run(
        [*agent_cmd, "plant-once", "--json", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert planted.returncode == 0, planted.stdout + planted.stderr
    copied = {name: keys_in(files[name].read_text()) for name in ("elsewhere", "stale")}

    agent = subprocess.Popen(
        [*agent_cmd, "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "agent.log").open("w"),
    )
    fake_dir = Path(f"/tmp/tripkey-e2e-x-{os.getpid()}")
    scanner_dir = Path(f"/opt/tripkey-e2e-{os.getpid()}")
    hints: dict[str, dict[str, Any]] = {}
    try:
        device = wait_for_agent(lambda: responder.list_devices(), 30, "enrollment", agent)[0]

        def ready() -> bool:
            health = responder.get_device(device.device_id).health or {}
            targets = health.get("targets") or []
            return (
                bool((health.get("sensor") or {}).get("healthy"))
                and len(targets) == 6
                and all(t.get("planted") for t in targets)
            )

        wait_for_agent(ready, 60, "a healthy sensor and six planted files", agent)
        key_of = {
            t["path"]: t["access_key_id"] for t in responder.get_device(device.device_id).health["targets"]
        }
        assert key_of[str(files["elsewhere"])] == copied["elsewhere"][0]  # the agent kept the plant

        def reads_by(exe: str) -> list[Any]:
            return [r for r in responder.device_reads(device.device_id) if r.raw.get("exe") == exe]

        def alert_for(
            key_id: str, kind: str = "canary_use", hint: str | None = None
        ) -> dict[str, Any] | None:
            for summary in responder.list_alerts():
                if summary.raw.get("access_key_id") == key_id and summary.raw.get("kind") == kind:
                    alert = responder.get_alert(summary.alert_id).raw
                    if "sqs" in alert["summary"]["detection_sources"] and (
                        hint is None or alert["verdict"]["hint"] == hint
                    ):
                        return alert
            return None

        def settle(name: str, key_id: str, hint: str, kind: str = "canary_use") -> dict[str, Any]:
            try:
                alert = wait_for_agent(
                    lambda: alert_for(key_id, kind, hint), 60, f"the {name} alert to say {hint}", None
                )
            except AssertionError:
                seen = alert_for(key_id, kind) or {}
                said = json.dumps(seen.get("verdict"), indent=1)
                raise AssertionError(
                    f"{name}: expected {hint}; the alert says {said}\n{json.dumps(seen)[:4000]}"
                ) from None
            hints[name] = alert
            return alert

        # --- suspicious: cat copied by alice to /tmp under TruffleHog's name, used from elsewhere ---
        as_user(alice, "mkdir", "-m", "0755", str(fake_dir))
        as_user(alice, "cp", "/usr/bin/cat", str(fake_dir / "trufflehog"))
        fake = fake_dir / "trufflehog"
        shown = as_user(alice, str(fake), str(files["masquerade"])).stdout
        stolen = keys_in(shown)
        [fake_read] = wait_for_agent(lambda: reads_by(str(fake)), 30, "the fake scanner's read", agent)[:1]
        assert fake_read.raw["classification"] == "masquerading"
        assert fake_read.raw["claimed_label"] == "secret_scanner"
        assert fake_read.raw["provenance"]["exe"]["owner"] == alice.name
        relay = SourceRelay(("127.0.0.1", int(push_path.aws_url.rsplit(":", 1)[1])))
        try:
            aws(relay.url, "sts", "get-caller-identity", keys=stolen)
            alert = settle("masquerade", stolen[0], "suspicious")
            reasons = json.dumps(alert["verdict"]["reasons"])
            digest = hashlib.sha256(fake.read_bytes()).hexdigest()
            for evidence in (
                f"masquerading as secret_scanner: {fake}",
                f"owner {alice.name}",
                "package none",
                f"sha256 {digest[:12]}",
                "AWS CLI v1",
                "127.77.0.9 (an address this device was never seen at)",
                "identity: sts:GetCallerIdentity",
            ):
                assert evidence in reasons, (evidence, reasons)
            assert "127.77.0.9" in alert["summary"]["source_ips"]
            assert any(ua.startswith("aws-cli/") for ua in alert["summary"]["user_agents"])
            first = wait_for_agent(
                lambda: [b for b in hook.json_bodies() if b["alert"]["alert_id"] == alert["alert_id"]],
                30,
                "the delivery",
            )
            assert "update" not in first[0]["alert"]
            # The incident goes on: enumeration is new, and the sinks hear of it as an update.
            aws(relay.url, "s3", "ls", keys=stolen)
            updated = wait_for_agent(
                lambda: [
                    b["alert"]
                    for b in hook.json_bodies()
                    if b["alert"]["alert_id"] == alert["alert_id"] and "update" in b["alert"]
                ],
                60,
                "an update of the alert",
            )
            assert updated[0]["update"]["revision"] == 1
            assert "new kind of calls: enumeration (s3:ListBuckets)" in updated[0]["update"]["changes"]
            assert all(r["signature_ok"] for r in hook.requests)
        finally:
            relay.close()
        # The same user's own "aws" in her home: an interpreter's claim rests on its script.
        (alice.home / "bin").mkdir(mode=0o755)
        fake_aws = alice.home / "bin" / "aws"
        fake_aws.write_text("import sys\nprint(open(sys.argv[1]).read())\n")
        os.chown(alice.home / "bin", alice.uid, alice.gid)
        os.chown(fake_aws, alice.uid, alice.gid)
        as_user(alice, "/usr/bin/python3", str(fake_aws), str(files["masquerade"]))
        [home_read] = wait_for_agent(
            lambda: [
                r
                for r in reads_by(os.path.realpath("/usr/bin/python3"))
                if r.raw["cmdline"][1:2] == [str(fake_aws)]
            ],
            30,
            "the home-made aws's read",
            agent,
        )[:1]
        assert (home_read.raw["classification"], home_read.raw["claimed_label"]) == (
            "masquerading",
            "aws_tool",
        )
        assert (
            f"the script {fake_aws}" in home_read.raw["trust_reason"]
            and "in home" in home_read.raw["trust_reason"]
        )

        # --- scanner_verification: a root-installed scanner read, then TruffleHog's identity check ---
        (scanner_dir / "bin").mkdir(parents=True, mode=0o755)
        scanner = scanner_dir / "bin" / "trufflehog"
        shutil.copy2("/usr/bin/cat", scanner)
        found = keys_in(as_user(bob, str(scanner), str(files["scanner"])).stdout)
        [scan_read] = wait_for_agent(lambda: reads_by(str(scanner)), 30, "the scanner's read", agent)[:1]
        assert scan_read.raw["classification"] == "secret_scanner", scan_read.raw.get("trust_reason")
        trufflehog_verifies(push_path.aws_url, found)
        alert = settle("scanner", found[0], "scanner_verification")
        reasons = json.dumps(alert["verdict"]["reasons"])
        assert f"{scanner}" in reasons and "owner root" in reasons
        assert "a secret scanner's verifier (TruffleHog)" in reasons and "this device's network" in reasons

        # --- curious_user: root (the file's owner) runs the real AWS CLI with the planted profile ---
        aws(push_path.aws_url, "sts", "get-caller-identity", credentials=files["curious"], cli=installed_aws)
        alert = settle("curious", key_of[str(files["curious"])], "curious_user")
        reasons = json.dumps(alert["verdict"]["reasons"])
        assert "AWS CLI v1" in reasons and "127.0.0.1 (this device's network)" in reasons
        assert str(installed_aws) in reasons  # the script the interpreter ran, with its provenance

        # --- likely_benign: alice cats her file, says so, and the key is used from her network -----
        shown = as_user(alice, "/usr/bin/cat", str(files["benign"])).stdout
        own = keys_in(shown)
        wait_for_agent(
            lambda: [r for r in reads_by("/usr/bin/cat") if r.raw.get("path") == str(files["benign"])],
            30,
            "cat",
            agent,
        )
        report = (
            "import json, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "s.sendall(json.dumps({'note': 'looked at it by mistake', 'path': sys.argv[2]}).encode()"
            " + b'\\n'); "
            "print(s.recv(100).decode())"
        )
        answer = as_user(
            alice, "/usr/bin/python3", "-c", report, str(sockets / "selfreport.sock"), str(files["benign"])
        )
        assert '"ok": true' in answer.stdout
        aws(push_path.aws_url, "sts", "get-caller-identity", keys=own)
        settle("benign", own[0], "likely_benign")

        # --- key_copied_elsewhere: never read while the agent watched, used from elsewhere ---------
        relay = SourceRelay(("127.0.0.1", int(push_path.aws_url.rsplit(":", 1)[1])))
        try:
            aws(relay.url, "sts", "get-caller-identity", keys=copied["elsewhere"])
        finally:
            relay.close()
        settle("elsewhere", copied["elsewhere"][0], "key_copied_elsewhere")
        # ... and AWS itself finds it published: its quarantine policy, an alert of its own kind.
        principal = responder.lookup_credential(copied["elsewhere"][0]).principal_name
        push_path.recorder.aws_quarantines(principal)
        alert = settle("published", copied["elsewhere"][0], "key_copied_elsewhere", kind="aws_key_published")
        assert alert["severity"] == "high" and "AWS found" in alert["title"]
        assert "AWS found this key published" in json.dumps(alert["verdict"]["reasons"])

        # --- context_incomplete: the agent is stopped; the key is used after it went stale ---------
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        time.sleep(STALE_AFTER + 1)
        aws(push_path.aws_url, "sts", "get-caller-identity", keys=copied["stale"])
        settle("stale", copied["stale"][0], "context_incomplete")
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        shutil.rmtree(fake_dir, ignore_errors=True)
        shutil.rmtree(scanner_dir, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)
        responder.close()

    assert {alert["verdict"]["hint"] for alert in hints.values()} == set(HINTS)
    everything = json.dumps([hook.json_bodies(), list(hints.values())])
    for path in files.values():
        for line in path.read_text().splitlines() if path.exists() else []:
            if line.startswith("aws_secret_access_key"):
                assert line.split("=", 1)[1].strip() not in everything
