"""`tripkey demo` (what `make demo` runs), in a subprocess, as a newcomer would run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest

from demo import processes
from demo import run as demo
from tests.support.paths import VENV_BIN, requires_root


def _processes_with_marker(marker: str) -> list[str]:
    left = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get("TRIPKEY_DEMO_TEST_MARKER") == marker:
                left.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return left


@requires_root
def test_demo_names_the_curious_reader_and_leaves_nothing_behind(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex  # inherited by every process the demo starts
    env = {**os.environ, "TRIPKEY_DEMO_TEST_MARKER": marker}
    output = tmp_path / "out"
    started = time.monotonic()
    done = subprocess.run(
        [str(VENV_BIN / "tripkey"), "demo", "--output", str(output)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - started
    print(f"tripkey demo took {elapsed:.1f}s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert elapsed < 60

    alert = json.loads((output / "alert.json").read_text())
    readers = [r for r in alert["enrichment"]["reads"] if r.get("exe") == "/usr/bin/grep"]
    assert readers, alert["enrichment"]["reads"]
    assert readers[0]["cmdline"][:3] == ["grep", "-A2", "prod-backup"]
    assert readers[0]["user"] == "root"
    assert alert["verdict"]["hint"] and alert["verdict"]["reasons"]
    assert any("grep" in json.dumps(reason) for reason in alert["verdict"]["reasons"])
    assert alert["enrichment"]["credential"]["access_key_id"] in done.stdout
    # The printed report is the responder's view: the reader, the verdict, the placement.
    assert "grep -A2 prod-backup" in done.stdout and "VERDICT" in done.stdout
    assert "aws s3 ls -> denied" in done.stdout
    assert "byte-identical: yes" in done.stdout
    # Detected through the emulated account's CloudTrail -> EventBridge -> SQS, so the alert shows the
    # attacker's user agent, calls and source address (the last-used safety net records none of them).
    assert "sqs" in alert["summary"]["detection_sources"]
    assert set(alert["summary"]["event_names"]) == {
        "sts.amazonaws.com:GetCallerIdentity",
        "s3.amazonaws.com:ListBuckets",
    }
    assert all(ua.startswith("aws-cli/1.") for ua in alert["summary"]["user_agents"])
    assert alert["enrichment"]["aws"]["source_addresses"] == [
        {"address": "127.0.0.1", "relation": "device_network", "meaning": "this device's network"}
    ]
    assert "source IPs:     127.0.0.1 (this device's network)" in done.stdout
    assert "agent families: aws_cli_v1" in done.stdout
    assert "API calls:      sts.amazonaws.com:GetCallerIdentity, s3.amazonaws.com:ListBuckets" in done.stdout
    assert "detected via:   sqs" in done.stdout
    # The reasons quote the evidence: the reader's package and hash, the agent family, the address.
    reasons = json.dumps(alert["verdict"]["reasons"])
    assert "sha256 " in reasons
    assert "package grep" in reasons or not Path("/var/lib/dpkg/status").exists()
    assert "AWS CLI v1" in reasons and "127.0.0.1 (this device's network)" in reasons
    assert "aws_secret_access_key" not in done.stdout + json.dumps(alert)
    # The JSONL sink got the same alert.
    lines = (output / "alerts.jsonl").read_text().splitlines()
    assert any(json.loads(line)["alert_id"] == alert["alert_id"] for line in lines)
    # Nothing the demo started is still running.
    assert _processes_with_marker(marker) == []


def test_without_root_the_demo_says_what_is_missing(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    demo._sensor_for_this_run(processes.Steps())
    said = capsys.readouterr().out
    assert "NOT root" in said and "process attribution needs root" in said
    assert "CAP_SYS_ADMIN" in said


# Both signals take the same path through the demo's handler; SIGTERM's run is in `make test-all`.
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)], ids=["SIGINT", "SIGTERM"]
)
def test_an_interrupted_demo_stops_everything_it_started(tmp_path: Path, signum: int) -> None:
    """Ctrl-C or SIGTERM while the demo waits: moto, the issuer and the agent must not outlive it."""
    marker = uuid.uuid4().hex
    env = {**os.environ, "TRIPKEY_DEMO_TEST_MARKER": marker, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [str(VENV_BIN / "tripkey"), "demo", "--output", str(tmp_path / "out")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A background job may inherit SIGINT ignored; the demo must see it as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # wait until the agent has enrolled: all three children run
            seen.append(line)
            if "enrolled" in line:
                break
        assert any("enrolled" in line for line in seen), "".join(seen) + proc.stderr.read()
        assert len(_processes_with_marker(marker)) >= 4  # the demo, moto, the issuer, the agent
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, err
    assert "interrupted" in err
    assert _processes_with_marker(marker) == []
    assert list(tmp_path.glob("tripkey-demo-*")) == []  # its temporary directory is gone too


def test_the_demo_signal_handlers_respect_nohup_and_are_restored() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under `nohup make demo`
    try:
        with processes.signals_handled(processes.raise_interrupted):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN  # still ignored
            assert signal.getsignal(signal.SIGTERM) is processes.raise_interrupted
            with processes.signals_handled(signal.SIG_IGN):  # what stop_all runs under
                assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) is processes.raise_interrupted
            with pytest.raises(processes.DemoInterrupted) as raised:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)  # the handler runs at the next bytecode boundary
            assert raised.value.signum == signal.SIGTERM
        assert {sig: signal.getsignal(sig) for sig in before} == before  # restored
    finally:
        signal.signal(signal.SIGHUP, previous_hup)
