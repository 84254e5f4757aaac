"""`tripkey-agent trigger` proves the whole pipeline for one device: the issuer is told first, the
agent uses its own canary with the real AWS CLI, and the issuer opens an alert labelled `selftest`
(low severity, not paged) rather than an incident.

The self-test knows itself: with the service running (real fanotify sensor), the trigger's own read
of the planted file is recorded as `self_test`, and the alert's verdict does not call it an unknown,
suspicious reader. AWS here is a moto server that enforces IAM, so the canary's explicit deny is
really tested; against one that does not, or one that cannot be reached, the trigger fails loudly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server_api_client import IssuerClient
from tests.support.net import free_port
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


def _config(tmp_path: Path, issuer: Any, aws_url: str, **extra: str) -> tuple[Path, Path]:
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True, mode=0o700, exist_ok=True)
    credentials = home / ".aws" / "credentials"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'issuer_url = "{issuer.url}"\n'
        f'enroll_token = "{issuer.create_token("enroll")}"\n'
        'profile = "prod-backup"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        "all_users = false\n"
        f'aws_endpoint_url = "{aws_url}"\n'
        f'selfreport_socket = "{tmp_path / "sr.sock"}"\n'
        + "".join(f"{key} = {value}\n" for key, value in extra.items())
        + f'[[target]]\npath = "{credentials}"\nowner = "root"\n'
    )
    config.chmod(0o600)
    return config, credentials


@pytest.fixture
def running_agent(tmp_path: Path) -> Iterator[Any]:
    """`start(config)`: `tripkey-agent run` as a service process; waits until it senses; stopped after."""
    procs: list[subprocess.Popen[str]] = []

    def start(config: Path) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPKEY_")}
        proc = subprocess.Popen(
            [str(VENV_BIN / "tripkey-agent"), "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "agent.log", "w"),  # noqa: SIM115 - closed with the process
            text=True,
        )
        procs.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = json.loads(_agent(config, "status", "--json").stdout)
            if status["service"]["running"] and (status["sensor"] or {}).get("healthy"):
                return proc
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()
            time.sleep(0.3)
        raise AssertionError("the agent did not start sensing: " + (tmp_path / "agent.log").read_text())

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _selftest_alert(responder: IssuerClient, key_id: str, until: Any, timeout: float = 40) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    alert: dict[str, Any] = {}
    while time.monotonic() < deadline:
        alerts = [responder.get_alert(summary.alert_id).raw for summary in responder.list_alerts()]
        mine = [a for a in alerts if a["enrichment"]["credential"]["access_key_id"] == key_id]
        if mine:
            alert = mine[0]
            if until(alert):
                return alert
        time.sleep(0.5)
    raise AssertionError(f"no self-test alert as expected for {key_id}: {json.dumps(alert)[:2000]}")


@requires_root
def test_trigger_opens_a_selftest_alert_whose_own_read_is_not_suspicious(
    tmp_path: Path, enforced_issuer: Any, running_agent: Any
) -> None:
    issuer = enforced_issuer
    config, _credentials = _config(tmp_path, issuer, issuer.moto_url, sensor='"fanotify"')
    running_agent(config)
    deadline = time.monotonic() + 60  # asked of the agent: reading the file here would be a read too
    while [t["status"] for t in json.loads(_agent(config, "status", "--json").stdout)["targets"]] != [
        "planted"
    ]:
        assert time.monotonic() < deadline, "the service did not plant"
        time.sleep(0.3)

    triggered = _agent(config, "trigger", "--json")
    assert triggered.returncode == 0, triggered.stdout + triggered.stderr
    report = json.loads(triggered.stdout)
    assert report["used"] is True and report["denied"] is True and report["outcome"] == "ok"
    assert report["aws_unreachable"] is None
    key_id = report["access_key_id"]

    # On the host: the trigger's read of the planted file is the self-test, by pid.
    reads = json.loads(_agent(config, "reads", "--json").stdout)["reads"]
    own = [r for r in reads if r["pid"] == report["selftest_pid"]]
    assert own and {r["classification"] for r in own} == {"self_test"}, reads

    responder = IssuerClient(issuer.url, issuer.create_token("responder"), timeout=5, retries=1)

    def explained(alert: dict[str, Any]) -> bool:
        return any(r.get("classification") == "self_test" for r in alert["enrichment"]["reads"])

    alert = _selftest_alert(responder, key_id, explained)
    assert alert["kind"] == "selftest" and alert["selftest"] is True and alert["severity"] == "low"
    assert alert["verdict"]["hint"] == "likely_benign", alert["verdict"]
    assert not any(reason["hint"] == "suspicious" for reason in alert["verdict"]["reasons"])
    assert any("agent's own self-test" in reason["text"] for reason in alert["verdict"]["reasons"])
    own = next(r for r in alert["verdict"]["reasons"] if r["rule"] == "self_test_read")
    assert own["read_event_id"] in {r["event_id"] for r in alert["enrichment"]["reads"]}
    # The use was a self-test, so no incident was opened for this key.
    alerts = [responder.get_alert(s.alert_id).raw for s in responder.list_alerts()]
    assert all(a["kind"] == "selftest" for a in alerts)


@requires_root
def test_a_canary_that_is_not_denied_fails_the_trigger(
    tmp_path: Path, issuer_factory: Any, moto_url: str
) -> None:
    """The session's moto server allows every call: the canary's deny is not in effect -> exit 7."""
    issuer = issuer_factory()
    config, _ = _config(tmp_path, issuer, moto_url)
    assert _agent(config, "plant-once").returncode == 0
    triggered = _agent(config, "trigger")
    assert triggered.returncode == 7, triggered.stdout + triggered.stderr
    assert "iam list-users: NOT denied: the canary's explicit deny is not in effect" in triggered.stdout
    assert (
        triggered.stderr.startswith("tripkey-agent: the canary AKIA") and "was NOT denied" in triggered.stderr
    )
    assert "Traceback" not in triggered.stderr
    as_json = _agent(config, "trigger", "--json")
    assert as_json.returncode == 7
    assert json.loads(as_json.stdout)["outcome"] == "not_denied"
    assert json.loads(as_json.stderr)["exit_code"] == 7


@requires_root
def test_a_trigger_that_cannot_reach_aws_says_so(tmp_path: Path, issuer_factory: Any, moto_url: str) -> None:
    """Before: an unreachable endpoint was reported as "NOT denied"."""
    issuer = issuer_factory()
    config, _ = _config(tmp_path, issuer, moto_url)
    assert _agent(config, "plant-once").returncode == 0
    nowhere = f"http://127.0.0.1:{free_port()}"
    triggered = _agent(config, "trigger", "--set", f'aws_endpoint_url="{nowhere}"')
    assert triggered.returncode == 8, triggered.stdout + triggered.stderr
    assert f"AWS could NOT be reached at {nowhere}" in triggered.stdout
    assert "NOT denied" not in triggered.stdout + triggered.stderr
    assert (
        "tripkey-agent: AWS could not be reached: Could not connect to the endpoint URL" in triggered.stderr
    )
    assert "Traceback" not in triggered.stderr
