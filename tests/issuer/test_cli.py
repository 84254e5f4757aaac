"""`tripkey-issuer` as users run it: a real subprocess, real database, real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from issuer.db import head_revision
from tests.support.net import free_port, wait_http
from tests.support.paths import VENV_BIN


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "issuer", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_token_create_json_works_against_the_running_issuer(live_issuer: Any) -> None:
    db = live_issuer.settings.db_url
    result = _cli("token", "create", "--role", "responder", "--label", "on-call", "--db", db, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["role"] == "responder" and data["id"].startswith("tok_") and data["label"] == "on-call"
    token = data["token"]
    assert live_issuer.request("GET", "/v1/devices", token).status_code == 200

    listed = json.loads(_cli("token", "list", "--db", db, "--json").stdout)["tokens"]
    assert [t["id"] for t in listed] == [data["id"]]
    assert all("token" not in t for t in listed)  # plaintext is never shown again

    revoked = _cli("token", "revoke", data["id"], "--db", db, "--json")
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked_at"]
    assert live_issuer.request("GET", "/v1/devices", token).status_code == 401


def test_token_create_plain_output_is_the_token_first(tmp_path: Path) -> None:
    result = _cli("token", "create", "--role", "enroll", "--db", f"sqlite:///{tmp_path / 'i.db'}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("tke_")


def test_unknown_role_and_bad_config_are_clear_errors(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'i.db'}"
    bad_role = _cli("token", "create", "--role", "admin", "--db", db)
    assert bad_role.returncode == 2
    assert "invalid choice: 'admin'" in bad_role.stderr and "enroll" in bad_role.stderr
    device_role = _cli("token", "create", "--role", "device", "--db", db)
    assert device_role.returncode == 2 and "invalid choice" in device_role.stderr

    config = tmp_path / "issuer.toml"
    config.write_text("colour = 'blue'\n")
    bad_config = _cli("token", "create", "--role", "enroll", "--config", str(config), "--db", db)
    assert bad_config.returncode == 2
    assert "unknown key 'colour'" in bad_config.stderr and str(config) in bad_config.stderr
    assert "Traceback" not in bad_config.stderr

    missing = _cli("token", "revoke", "tok_nope", "--db", db, "--json")
    assert missing.returncode == 1 and "no token with id" in missing.stderr
    assert json.loads(missing.stdout) == {
        "error": "no token with id 'tok_nope' (see `tripkey-issuer token list --all`)"
    }

    unreachable = _cli("migrate", "--db", "postgresql://nobody@127.0.0.1:9/none")
    assert unreachable.returncode == 1 and "cannot open the database" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_every_command_has_help() -> None:
    for args in (
        ["--help"],
        ["serve", "--help"],
        ["token", "create", "--help"],
        ["token", "list", "--help"],
        ["token", "revoke", "--help"],
        ["migrate", "--help"],
        ["config", "show", "--help"],
    ):
        result = _cli(*args)
        assert result.returncode == 0 and "usage: tripkey-issuer" in result.stdout, args


def test_config_show_hides_secrets(tmp_path: Path) -> None:
    config = tmp_path / "issuer.toml"
    config.write_text(
        "db_url = 'postgresql://tk:hunter2@db/tripkey'\n"
        "[[sinks]]\ntype = 'slack'\nname = 'ops'\nwebhook_url = 'https://hooks.slack.com/services/T/B/SECRET'\n"
    )
    result = _cli("config", "show", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout and "SECRET" not in result.stdout
    assert json.loads(result.stdout)["sinks"][0]["name"] == "ops"


def test_serve_runs_the_issuer(tmp_path: Path, moto_url: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "tripkey-issuer"),
            "serve",
            "--db",
            f"sqlite:///{tmp_path / 'issuer.db'}",
            "--listen",
            f"127.0.0.1:{port}",
            "--aws-endpoint",
            moto_url,
            "--poll-interval",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TRIPKEY_DATA_DIR": str(tmp_path)},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)  # type: ignore[arg-type]
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
        assert health["ok"] is True
        assert requests.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).json()["info"]["title"]
        assert requests.get(f"http://127.0.0.1:{port}/docs", timeout=5).status_code == 200
        token = _cli("token", "create", "--role", "enroll", "--db", f"sqlite:///{tmp_path / 'issuer.db'}")
        raw = token.stdout.splitlines()[0]
        body = {"device_key": "k" * 40, "hostname": "h", "os": "linux"}
        enrolled = requests.post(
            f"http://127.0.0.1:{port}/v1/enroll",
            json=body,
            headers={"Authorization": f"Bearer {raw}"},
            timeout=10,
        )
        assert enrolled.status_code == 200, enrolled.text
        device = enrolled.json()
        minted = requests.post(
            f"http://127.0.0.1:{port}/v1/devices/{device['device_id']}/credentials",
            json={"local_user": "alice", "path": "/home/alice/.aws/credentials", "profile": "prod-backup"},
            headers={"Authorization": f"Bearer {device['device_token']}"},
            timeout=30,
        )
        assert minted.status_code == 201, minted.text
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    # uvicorn shuts down cleanly, then re-raises SIGTERM (systemd counts that as a clean stop).
    assert proc.returncode in (0, -15), output
    assert "Application shutdown complete" in output
    # Neither tokens nor the canary's secret ever reach the log.
    assert raw not in output and device["device_token"] not in output
    assert minted.json()["secret_access_key"] not in output
    assert f"issued credential {minted.json()['credential_id']}" in output  # logging was on


def test_serve_with_bad_settings_exits_2_without_traceback(tmp_path: Path) -> None:
    result = _cli("serve", "--db", f"sqlite:///{tmp_path / 'i.db'}", "--listen", "everywhere")
    assert result.returncode == 2 and "HOST:PORT" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.postgres
def test_migrate_on_postgresql(postgres_url: str) -> None:
    first = _cli("migrate", "--db", postgres_url.replace("postgresql+psycopg://", "postgresql://"), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"revision": head_revision()}
    again = _cli("migrate", "--db", postgres_url, "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == {"revision": head_revision()}
