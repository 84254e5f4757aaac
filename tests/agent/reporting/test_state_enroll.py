"""Enrollment: device key kept in the state file, retry with capped backoff, clear stop on a refused
token, re-enrollment mapping to the same device (LIVE issuer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.reporting.enroll import EnrollmentError, ensure_enrolled, host_facts
from agent.reporting.uploader import Backoff
from agent.service import make_client
from agent.state import StateStore
from tests.support.net import free_port


def config_for(tmp_path: Path, url: str, token: str | None) -> Any:
    return load_config(
        None,
        env={},
        overrides={"issuer_url": url, "enroll_token": token, "state_dir": str(tmp_path / "state")},
    )


def test_unreachable_issuer_is_retried_with_capped_backoff(tmp_path: Path) -> None:
    config = config_for(tmp_path, f"http://127.0.0.1:{free_port()}", "tok")
    store = StateStore(config.state_dir)
    client = make_client(config)
    client.retries = 0
    slept: list[float] = []
    with pytest.raises(EnrollmentError, match="after 5 attempts"):
        ensure_enrolled(
            store,
            client,
            config,
            [],
            sleep=slept.append,
            max_attempts=5,
            backoff=Backoff(2, 10, jitter=False),
        )
    assert slept == [2, 4, 8, 10]
    key = store.state.device_key
    assert key and StateStore(config.state_dir).state.device_key == key  # kept for the next try


def test_refused_token_stops_at_once(tmp_path: Path, live_issuer: Any) -> None:
    config = config_for(tmp_path, live_issuer.url, "not-a-token")
    slept: list[float] = []
    with pytest.raises(EnrollmentError, match="refused the enrollment token"):
        ensure_enrolled(StateStore(config.state_dir), make_client(config), config, [], sleep=slept.append)
    assert slept == []


def test_enroll_once_then_reuse_then_force(tmp_path: Path, live_issuer: Any) -> None:
    config = config_for(tmp_path, live_issuer.url, live_issuer.create_token("enroll"))
    store = StateStore(config.state_dir)
    client = make_client(config)
    device_id, token = ensure_enrolled(store, client, config, ["alice"])
    assert client.token == token
    again = StateStore(config.state_dir)
    assert ensure_enrolled(again, make_client(config), config, []) == (device_id, token)  # no new call
    device = live_issuer.request("GET", f"/v1/devices/{device_id}", live_issuer.create_token("responder"))
    assert device.json()["users"] == ["alice"]
    forced_id, forced_token = ensure_enrolled(
        again, make_client(config), config, ["bob", "alice"], force=True
    )
    assert forced_id == device_id and forced_token != token
    device = live_issuer.request("GET", f"/v1/devices/{device_id}", live_issuer.create_token("responder"))
    assert device.json()["users"] == ["alice", "bob"]


def test_not_enrolled_without_token_is_a_config_error(tmp_path: Path) -> None:
    from agent.config import ConfigError

    config = config_for(tmp_path, "http://127.0.0.1:9", None)
    with pytest.raises(ConfigError, match="enroll_token is not set"):
        ensure_enrolled(StateStore(config.state_dir), make_client(config), config, [])


def test_host_facts() -> None:
    facts = host_facts(["bob", "alice", "bob"])
    assert facts["users"] == ["alice", "bob"] and facts["os"] == "linux" and facts["hostname"]
    assert set(facts) == {"hostname", "os", "os_version", "serial", "users", "agent_version"}
