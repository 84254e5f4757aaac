"""`tripkey demo` (what `make demo` runs), in a subprocess, as a newcomer would run it."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest

from issuer import demo
from tests.conftest import VENV_BIN, requires_root


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
        env=env, capture_output=True, text=True, timeout=120, check=False,
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
    assert "aws_secret_access_key" not in done.stdout + json.dumps(alert)
    # The JSONL sink got the same alert.
    lines = (output / "alerts.jsonl").read_text().splitlines()
    assert any(json.loads(line).get("alert", json.loads(line)).get("id") == alert["id"] for line in lines)
    # Nothing the demo started is still running.
    assert _processes_with_marker(marker) == []


def test_without_root_the_demo_says_what_is_missing(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    demo._sensor_for_this_run(demo.Steps())
    said = capsys.readouterr().out
    assert "NOT root" in said and "process attribution needs root" in said
    assert "CAP_SYS_ADMIN" in said
