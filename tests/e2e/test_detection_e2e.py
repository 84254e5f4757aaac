"""End to end, issue "detection": the agent plants, a process reads the file, the real AWS CLI uses the
key, the issuer detects it and the alert — delivered to a webhook receiver this test runs — names that
process (exe, cmdline, user).

Real parts: the moto server as AWS, the issuer on loopback (last-used safety net polling every second),
the installed `tripkey-agent run` as a separate process with the fanotify sensor, a real local user
reading the file with `cat`, the real AWS CLI as the attacker.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server_api_client import IssuerClient
from tests.support.e2e import E2EUser, wait_for_agent
from tests.support.paths import FAKE_AWS_ENV, VENV_BIN, requires_root
from tests.support.schema import read_jsonl, validate
from tests.support.schema_mappings import (
    assert_ecs_says_what_the_alert_says,
    assert_ocsf_says_what_the_alert_says,
)

PROFILE = "prod-backup"
HOOK_SECRET = "e2e-webhook-secret"


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        timestamp = self.headers.get("X-Tripkey-Timestamp", "")
        expected = (
            "sha256="
            + hmac.new(HOOK_SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        )
        valid = hmac.compare_digest(expected, self.headers.get("X-Tripkey-Signature", ""))
        self.server.received.append({"valid": valid, "body": json.loads(body)})  # type: ignore[attr-defined]
        self.send_response(200 if valid else 401)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", server.received  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


@requires_root
def test_read_then_use_raises_an_alert_naming_the_reader(
    tmp_path: Path, issuer_factory: Any, moto_url: str, e2e_users: list[E2EUser], webhook: Any
) -> None:
    hook_url, received = webhook
    issuer = issuer_factory(
        poll_interval=1,
        sinks=[
            {"type": "webhook", "name": "soc", "url": hook_url, "secret": HOOK_SECRET},
            # The SIEM renderings of this real alert (issue 13): checked against docs/schemas below.
            {"type": "jsonl", "name": "siem-ocsf", "path": str(tmp_path / "ocsf.jsonl"), "format": "ocsf"},
            {"type": "jsonl", "name": "siem-ecs", "path": str(tmp_path / "ecs.jsonl"), "format": "ecs"},
        ],
    )
    user = e2e_users[0]
    aws_dir = user.home / ".aws"
    aws_dir.mkdir(mode=0o700)
    os.chown(aws_dir, user.uid, user.gid)
    credentials = aws_dir / "credentials"

    config = tmp_path / "agent.toml"
    config.write_text(
        f'issuer_url = "{issuer.url}"\n'
        f'enroll_token = "{issuer.create_token("enroll")}"\n'
        f'profile = "{PROFILE}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        'sensor = "fanotify"\n'
        "all_users = false\n"
        "upload_interval = 0.5\n"
        "heartbeat_interval = 1\n"
        f'selfreport_socket = "{tmp_path / "selfreport.sock"}"\n'
        f'[[target]]\npath = "{credentials}"\nowner = "{user.name}"\n'
    )
    config.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPKEY_")}
    agent = subprocess.Popen(
        [str(VENV_BIN / "tripkey-agent"), "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "agent.log").open("w"),
        text=True,
    )
    responder = IssuerClient(issuer.url, issuer.create_token("responder"), timeout=5, retries=1)
    try:
        device = wait_for_agent(lambda: responder.list_devices(), 30, "enrollment", agent)[0]

        def planted() -> Any:
            health = responder.get_device(device.device_id).health or {}
            sensor = health.get("sensor") or {}
            targets = health.get("targets") or []
            return sensor.get("healthy") and targets and all(t.get("planted") for t in targets)

        wait_for_agent(planted, 30, "the plant and a healthy sensor", agent)
        active = [c for c in responder.list_credentials(device.device_id) if c.status == "active"]
        key_id = active[0].access_key_id

        # A curious local user reads the file (setpriv execs, so the pid is cat's).
        reader = subprocess.run(
            [
                "setpriv",
                f"--reuid={user.uid}",
                f"--regid={user.gid}",
                "--clear-groups",
                "/usr/bin/cat",
                str(credentials),
            ],
            capture_output=True,
            check=True,
        )
        assert key_id.encode() in reader.stdout

        # The read reaches the issuer before the key is used, as it would in the field.
        def cat_reads() -> list[Any]:
            return [r for r in responder.device_reads(device.device_id) if r.raw.get("exe") == "/usr/bin/cat"]

        wait_for_agent(cat_reads, 30, "the cat read to reach the issuer", agent)

        # The attacker: the real AWS CLI with the planted profile.
        attacker_env = {**os.environ, **FAKE_AWS_ENV, "AWS_SHARED_CREDENTIALS_FILE": str(credentials)}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            attacker_env.pop(name)
        used = subprocess.run(
            [
                str(VENV_BIN / "aws"),
                "--endpoint-url",
                moto_url,
                "--profile",
                PROFILE,
                "sts",
                "get-caller-identity",
                "--output",
                "json",
            ],
            env=attacker_env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert used.returncode == 0, used.stderr
        principal = responder.lookup_credential(key_id).principal_name
        assert json.loads(used.stdout)["Arn"].split("/")[-1] == principal

        delivered = wait_for_agent(lambda: [r for r in received if r["valid"]], 60, "the webhook delivery")
        validate(delivered[0]["body"], "sinks.json#/$defs/webhook_native")
        alert = delivered[0]["body"]["alert"]
        assert alert["enrichment"]["credential"]["access_key_id"] == key_id
        assert alert["enrichment"]["placement"]["path"] == str(credentials)
        assert alert["enrichment"]["placement"]["local_user"] == user.name
        readers = [r for r in alert["enrichment"]["reads"] if r.get("exe") == "/usr/bin/cat"]
        assert readers, f"the alert does not name the cat reader: {alert['enrichment']['reads']}"
        assert readers[0]["cmdline"] == ["/usr/bin/cat", str(credentials)]
        assert readers[0]["user"] == user.name
        assert readers[0]["classification"] == "shell_utility"
        assert alert["verdict"]["hint"]
        assert "/usr/bin/cat" in json.dumps(alert["verdict"]["reasons"])
        # Nothing on the wire or in the alert carries the secret.
        secret_line = next(
            line for line in credentials.read_text().splitlines() if "aws_secret_access_key" in line
        )
        secret = secret_line.split("=", 1)[1].strip()
        assert secret not in json.dumps(received)
        assert secret not in json.dumps(responder.get_alert(alert["alert_id"]).raw)

        # The same alert as an OCSF Detection Finding and an ECS document says what the alert says,
        # the cat reader included.
        ocsf = wait_for_agent(lambda: read_jsonl(tmp_path / "ocsf.jsonl"), 30, "the OCSF line")[0]
        ecs = wait_for_agent(lambda: read_jsonl(tmp_path / "ecs.jsonl"), 30, "the ECS line")[0]
        validate(ocsf, "sinks.json#/$defs/ocsf")
        validate(ecs, "sinks.json#/$defs/ecs")
        assert alert["siem"]["reader_exe"] == "/usr/bin/cat", alert["siem"]
        assert_ocsf_says_what_the_alert_says(ocsf, alert)
        assert_ecs_says_what_the_alert_says(ecs, alert)
        assert secret not in json.dumps([ocsf, ecs])
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
