"""Issue 13, "One schema": every `tripkey-agent ... --json` output validates against
docs/schemas/cli-agent.json with the one time format and naming, its errors are the one error object,
and every payload the agent sends the issuer (read, tamper, self-report events and the heartbeat)
validates against docs/schemas/events.json.

Real parts: the installed `tripkey-agent` (as root) enrolling with and minting from the live issuer
(tests/support/schema_world.py), planting into real files for two local users, the real AWS CLI
against the session's moto server for `trigger`, a real sensor for `sensors --live`.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import make_users, seed
from tests.support.cli import run_tool
from tests.support.schema import assert_one_time_format, validate
from tests.support.schema_naming import DATA_KEYED, assert_naming
from tests.support.schema_world import SchemaWorld

CLI = "cli-agent.json#/$defs/"


@pytest.fixture(scope="module")
def agent_config(
    schema_world: SchemaWorld, moto_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("agent-schema")
    passwd, users = make_users(root)
    seed(users[0])
    config = root / "agent.toml"
    targets = "".join(f'[[target]]\npath = "{u.credentials}"\nowner = "{u.name}"\n' for u in users)
    config.write_text(
        f'issuer_url = "{schema_world.world.url}"\n'
        f'enroll_token = "{schema_world.world.issuer.create_token("enroll")}"\n'
        f'profile = "prod-backup"\nstate_dir = "{root / "state"}"\nall_users = false\n'
        f'passwd_file = "{passwd}"\naws_endpoint_url = "{moto_server}"\n'
        f'selfreport_socket = "{root / "selfreport.sock"}"\n' + targets
    )
    config.chmod(0o600)
    return config


def _agent(config: Path, *args: str, codes: tuple[int, ...] = (0,)) -> Any:
    result = run_tool("tripkey-agent", *args, "--json", "--config", str(config))
    assert result.returncode in codes, (args, result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout)


def _check(document: Any, ref: str, what: str, data_keyed: frozenset[str] = DATA_KEYED) -> None:
    validate(document, CLI + ref)
    assert_one_time_format(document, what)
    assert_naming(document, what, data_keyed)


def test_planting_and_status_speak_the_schema(agent_config: Path) -> None:
    planted = _agent(agent_config, "plant-once")
    _check(planted, "plant_once", "plant-once")
    assert {t["local_user"] for t in planted["targets"]} == {"alice", "bob"}
    assert all(t["status"] == "planted" for t in planted["targets"]), planted["targets"]
    _check(_agent(agent_config, "status"), "status", "status")
    _check(_agent(agent_config, "check"), "check", "check")
    _check(_agent(agent_config, "reads"), "reads", "reads")


def test_sensors_speaks_the_schema(agent_config: Path) -> None:
    # The sensors map is keyed by sensor name (`fanotify-notify`): data, not field names.
    _check(_agent(agent_config, "sensors", "--live"), "sensors", "sensors", DATA_KEYED | {"sensors"})


def test_trigger_speaks_the_schema_whatever_aws_answers(agent_config: Path) -> None:
    # moto enforces no IAM here, so the deny is not in effect: exit 7 ("not denied") with its JSON.
    result = _agent(agent_config, "trigger", codes=(0, 7))
    # `identity` is AWS's GetCallerIdentity answer as it came (Account, Arn, UserId).
    _check(result, "trigger", "trigger", DATA_KEYED | {"identity"})
    assert result["selftest_expires_at"].endswith("Z")


def test_errors_are_the_one_error_object(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.toml"
    result = run_tool("tripkey-agent", "status", "--json", "--config", str(missing))
    error = json.loads(result.stderr)
    validate(error, "common.json#/$defs/error")
    assert result.returncode == error["exit_code"] == 2 and error["error"]["code"] == "config_error", error
    assert str(missing) in error["error"]["message"]


def test_unplant_speaks_the_schema(agent_config: Path) -> None:
    """Last: it removes the profiles and revokes the keys."""
    result = _agent(agent_config, "unplant")
    _check(result, "unplant", "unplant")
    assert all(r["removed"] for r in result["results"]), result


# ----------------------------------------------------------------------------- agent → issuer payloads


def test_every_payload_the_agent_sends_speaks_the_schema() -> None:
    from agent.events.model import ProcessInfo, ReadEvent
    from agent.reporting import payloads

    at = dt.datetime(2026, 11, 30, 4, 34, 34, 582299, tzinfo=dt.UTC)
    parent = ProcessInfo(pid=4200, exe="/usr/bin/bash", cmdline=("bash",), uid=1000, user="alice")
    event = ReadEvent(
        time=at,
        path="/home/alice/.aws/credentials",
        pid=4242,
        ppid=4200,
        exe="/usr/bin/cat",
        cmdline=("cat", "/home/alice/.aws/credentials"),
        uid=1000,
        user="alice",
        start_time=at,
        cwd="/home/alice",
        sensor="ebpf",
        ancestors=(parent,),
    )
    sent = {
        "read_event": payloads.read_event_payload(event, "4c883c8b-2e01", "shell_utility"),
        "tamper_event": payloads.tamper_payload(
            "/home/alice/.aws/credentials", "removed", "the profile was deleted", True, at
        ),
        "self_report_event": payloads.self_report_payload(
            "/home/alice/.aws/credentials", "alice", "I opened it by mistake", at
        ),
        "heartbeat": payloads.heartbeat_payload(
            sensor_health={"name": "ebpf", "mode": "kernel", "healthy": True, "lost_events": 0},
            targets=[
                {
                    "path": "/home/alice/.aws/credentials",
                    "local_user": "alice",
                    "profile": "prod-backup",
                    "access_key_id": "AKIAABCDEFGHIJKLMNOP",
                    "planted": True,
                    "error": None,
                }
            ],
            last_event_at=payloads.to_iso(at),
            spool=None,
            selfreport={"enabled": True, "running": True},
        ),
    }
    for name, payload in sent.items():
        validate(payload, f"events.json#/$defs/{name}")
        assert_one_time_format(payload, name)
        assert_naming(payload, name)
    # A reader the sensor knew little about (exe gone, no user name): still the schema.
    bare = ReadEvent(time=at, path="/home/alice/.aws/credentials", pid=7, sensor="audit")
    validate(payloads.read_event_payload(bare, "e-2", None), "events.json#/$defs/read_event")
