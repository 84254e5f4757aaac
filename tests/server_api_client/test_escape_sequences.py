"""Attacker-controlled text never reaches a responder's terminal raw; `--json` stays exact.

Hostile inputs, each where an attacker really controls it: an enrolled hostname, a local user name,
a file path, a reader's exe and argv (the reader picks them), and a CloudTrail user agent (whoever
calls AWS with the key picks it). Each carries a screen clear and cursor home (ESC [2J ESC [H) with a
fake "ALL CLEAR", BEL, an 8-bit CSI and a right-to-left override. Real issuer, real HTTP, the real CLI.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from typing import Any

import pytest

from agent.events.model import ReadEvent
from agent.events.readlog import ReadLog
from server_api_client.cli import main
from tests.support.cloudtrail import cloudtrail_event
from tests.support.ingest import ingest_settings, post_ingest

SCREEN = "\x1b[2J\x1b[H ALL CLEAR \x07\x9b31m \u202etxt.exe"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")
SPELLED = "\\x1b[2J\\x1b[H ALL CLEAR \\x07\\x9b31m \\u202etxt.exe"


def _no_raw(text: str) -> None:
    for char in RAW:
        assert char not in text, f"{char!r} reached the terminal raw:\n{text}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, moto_server: Any) -> Any:
    from tests.support.issuer import start_issuer

    data_dir = str(tmp_path_factory.mktemp("issuer"))
    issuer = start_issuer(data_dir=data_dir, aws_endpoint=moto_server, poll_interval=0, **ingest_settings())
    device_id, token = issuer.enroll(hostname=f"lap{SCREEN}", users=[f"u{SCREEN}"])
    path = f"/home/u/{SCREEN}/.aws/credentials"
    minted = issuer.request(
        "POST",
        f"/v1/devices/{device_id}/credentials",
        token,
        json={"local_user": f"u{SCREEN}", "path": path, "profile": "prod-backup"},
    ).json()
    read = {
        "event_id": str(uuid.uuid4()),
        "kind": "read",
        "time": (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)).isoformat(),
        "path": path,
        "read": {
            "pid": 4242,
            "exe": f"/tmp/{SCREEN}",
            "cmdline": ["cat", SCREEN],
            "user": f"u{SCREEN}",
            "sensor": "fanotify",
            "ancestors": [{"pid": 1, "exe": f"/sbin/{SCREEN}", "cmdline": [SCREEN]}],
        },
    }
    assert issuer.request("POST", f"/v1/devices/{device_id}/events", token, json={"events": [read]}).ok
    beat = {
        "sensor": {"name": "fanotify", "healthy": False, "error": f"sensor {SCREEN}"},
        "targets": [{"path": path, "local_user": f"u{SCREEN}", "planted": False, "error": SCREEN}],
    }
    assert issuer.request("POST", f"/v1/devices/{device_id}/heartbeat", token, json=beat).ok
    use = cloudtrail_event(access_key_id=minted["access_key_id"], user_agent=f"aws-cli {SCREEN}")
    garbage = {"detail-type": "AWS API Call via CloudTrail", "detail": {"eventName": SCREEN}}
    assert post_ingest(issuer, [use, garbage]).status_code == 202
    responder = issuer.create_token()
    [alert] = issuer.request("GET", "/v1/alerts", responder).json()["alerts"]
    yield {
        "issuer": issuer,
        "responder": responder,
        "device_id": device_id,
        "key": minted["access_key_id"],
        "alert_id": alert["alert_id"],
    }
    issuer.stop()


def tripkey(world: Any, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    prefix = ["--issuer", world["issuer"].url, "--token", world["responder"]]
    code = main([*prefix, *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _strings(value: Any) -> list[str]:
    """Every string in a JSON value (a dead letter's payload is JSON text: its strings too)."""
    if isinstance(value, str):
        try:
            inner = json.loads(value) if value.startswith("{") else None
        except ValueError:
            inner = None
        return [value, *(_strings(inner) if inner is not None else [])]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


COMMANDS = {
    "alerts list": lambda w: ["alerts", "list"],
    "alerts show": lambda w: ["alerts", "show", w["alert_id"]],
    "devices list": lambda w: ["devices", "list"],
    "devices show": lambda w: ["devices", "show", w["device_id"]],
    "reads": lambda w: ["reads", "--device", w["device_id"], "--since", "7d"],
    "credentials lookup": lambda w: ["credentials", "lookup", w["key"]],
    "dead-letters": lambda w: ["dead-letters"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_text_output_spells_escape_sequences_out(world: Any, command: str) -> None:
    code, out, err = tripkey(world, *COMMANDS[command](world))
    assert code == 0, err
    _no_raw(out + err)
    if command != "dead-letters":  # a dead letter shows its payload as JSON text (\u001b)
        assert "\\x1b[2J" in out  # the hostile text is shown, harmlessly


@pytest.mark.parametrize("command", list(COMMANDS))
def test_json_output_stays_exact(world: Any, command: str) -> None:
    code, out, _ = tripkey(world, *COMMANDS[command](world), "--json")
    assert code == 0
    assert any(SCREEN in s for s in _strings(json.loads(out)))  # exactly what was sent


def test_the_alert_report_shows_each_hostile_field(world: Any) -> None:
    _, out, _ = tripkey(world, "alerts", "show", world["alert_id"])
    for shown in (f"lap{SPELLED}", f"u{SPELLED}", f"aws-cli {SPELLED}", f"cmdline: cat {SPELLED}"):
        assert shown in out, shown


def test_an_error_message_quoting_hostile_input_is_escaped(world: Any) -> None:
    code, out, err = tripkey(world, "alerts", "show", f"alr_{SCREEN}")
    assert code == 1
    _no_raw(out + err)


def test_tripkey_agent_reads_and_status(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main as agent_main
    from agent.state import StateStore, TargetState

    state = tmp_path / "state"
    with ReadLog(state / "reads.db") as log:
        log.record(
            ReadEvent(
                time=dt.datetime.now(dt.UTC),
                path=f"/home/u/{SCREEN}",
                pid=7,
                sensor="fanotify",
                exe=f"/tmp/{SCREEN}",
                cmdline=("cat", SCREEN),
                user=f"u{SCREEN}",
            ),
            "unknown",
        )
    store = StateStore(state)
    with store.mutate() as st:
        st.targets[f"/home/u/{SCREEN}"] = TargetState(
            path=f"/home/u/{SCREEN}", owner=f"u{SCREEN}", profile="p", status="error", last_error=SCREEN
        )
        st.sensor_health = {"name": "fanotify", "healthy": False, "error": SCREEN}
    for argv in (["reads"], ["status"]):
        assert agent_main([*argv, "--state-dir", str(state)]) == 0
        out, err = capsys.readouterr()
        _no_raw(out + err)
        assert "\\x1b[2J" in out
        assert agent_main([*argv, "--state-dir", str(state), "--json"]) == 0
        out, _ = capsys.readouterr()
        assert any(SCREEN in s for s in _strings(json.loads(out)))
