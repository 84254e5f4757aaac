"""`tripkey-agent trigger` proves the whole pipeline for one device: the issuer is told first, the
agent uses its own canary with the real AWS CLI, and the issuer opens an alert labelled `selftest`
(low severity, not paged) rather than an incident."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from server_api_client import IssuerClient
from tests.support.paths import VENV_BIN, requires_root


def _agent(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPKEY_")}
    return subprocess.run(
        [str(VENV_BIN / "tripkey-agent"), *args, "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@requires_root
def test_trigger_opens_a_selftest_alert_not_an_incident(
    tmp_path: Path, issuer_factory: Any, moto_url: str
) -> None:
    issuer = issuer_factory(poll_interval=1)
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True, mode=0o700)
    credentials = home / ".aws" / "credentials"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'issuer_url = "{issuer.url}"\n'
        f'enroll_token = "{issuer.create_token("enroll")}"\n'
        'profile = "prod-backup"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        "all_users = false\n"
        f'aws_endpoint_url = "{moto_url}"\n'
        f'[[target]]\npath = "{credentials}"\nowner = "root"\n'
    )
    config.chmod(0o600)
    planted = _agent(config, "plant-once", "--json")
    assert planted.returncode == 0, planted.stdout + planted.stderr

    triggered = _agent(config, "trigger", "--json")
    assert triggered.returncode == 0, triggered.stdout + triggered.stderr
    report = json.loads(triggered.stdout)
    assert report["used"] is True
    key_id = report["access_key_id"]

    responder = IssuerClient(issuer.url, issuer.create_token("responder"), timeout=5, retries=1)
    deadline = time.monotonic() + 30
    alerts: list[Any] = []
    while time.monotonic() < deadline and not alerts:
        alerts = [responder.get_alert(summary.id).raw for summary in responder.list_alerts()]
        alerts = [a for a in alerts if a["enrichment"]["credential"]["access_key_id"] == key_id]
        time.sleep(0.3)
    assert alerts, "no alert for the self-test"
    alert = alerts[0]
    assert alert["kind"] == "selftest"
    assert alert["selftest"] is True
    assert alert["severity"] == "low"
    # The use was a self-test, so no incident was opened for this key.
    assert all(a["kind"] == "selftest" for a in alerts)
