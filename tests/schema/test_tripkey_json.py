"""Issue 13, "One schema": every `tripkey ... --json` output of a live issuer validates against
docs/schemas/cli-tripkey.json, speaks the one time format and the one naming, and every error is the
one error object.

Real parts: the issuer on loopback minting in moto, an alert raised through the EventBridge ingest
route and delivered to every sink (tests/support/schema_world.py); the installed `tripkey` command.
The commands that change state (ack, resolve, revoke, retire) run last, in file order.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.schema import assert_one_time_format, json_lines, validate
from tests.support.schema_naming import assert_naming
from tests.support.schema_world import SchemaWorld

CLI = "cli-tripkey.json#/$defs/"


def _json(world: SchemaWorld, *args: str) -> Any:
    result = world.tripkey(*args, "--json")
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def _check(document: Any, ref: str, what: str) -> None:
    validate(document, ref)
    assert_one_time_format(document, what)
    assert_naming(document, what)


@pytest.mark.parametrize(
    ("args", "ref"),
    [
        (("alerts", "list"), "alerts_list"),
        (("alerts", "list", "--status", "open"), "alerts_list"),
        (("devices", "list"), "devices_list"),
        (("devices", "list", "--stale"), "devices_list"),
        (("credentials", "list"), "credentials_list"),
        (("coverage",), "coverage"),
        (("dead-letters",), "dead_letters"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, tuple) else v,
)
def test_listing_commands_speak_the_schema(
    schema_world: SchemaWorld, args: tuple[str, ...], ref: str
) -> None:
    _check(_json(schema_world, *args), CLI + ref, " ".join(args))


def test_one_alert_one_device_one_key_and_their_reads_speak_the_schema(schema_world: SchemaWorld) -> None:
    w = schema_world
    alert = _json(w, "alerts", "show", w.alert_id)
    _check(alert, CLI + "alerts_show", "alerts show")
    # The alert follows the incident: two uses from two addresses, kept as two AWS records.
    calls = alert["enrichment"]["aws"]["calls"]
    assert [c["source_ip"] for c in calls] == ["203.0.113.9", "198.51.100.23"], calls
    assert alert["siem"]["first_source_ip"] == "203.0.113.9"
    assert alert["siem"]["last_source_ip"] == "198.51.100.23"
    assert alert["siem"]["local_user"] == "alice" and alert["siem"]["device_id"] == w.world.device_id
    assert {"T1552.001", "T1078.004"} <= set(alert["siem"]["attack_technique_ids"])
    # Verdict reasons are objects with the sentence beside them, pointing at what they rest on.
    read_ids = {r["event_id"] for r in alert["enrichment"]["reads"]}
    for reason in alert["verdict"]["reasons"]:
        assert reason["text"] and reason["rule"]
        assert reason["read_event_id"] is None or reason["read_event_id"] in read_ids, reason
        assert set(reason["aws_event_ids"]) <= {c["event_id"] for c in calls}, reason
    # Reads in alerts keep the reader's start time, cwd and its ancestors' user names.
    read = alert["enrichment"]["reads"][0]
    assert read["start_time"] and read["cwd"] == "/home/alice"
    assert all("user" in ancestor for ancestor in read["ancestors"])

    _check(_json(w, "devices", "show", w.world.device_id), CLI + "devices_show", "devices show")
    _check(_json(w, "reads", "--device", w.world.device_id), CLI + "reads", "reads")
    _check(
        _json(w, "credentials", "lookup", w.world.access_key_id),
        CLI + "credentials_lookup",
        "credentials lookup",
    )


def test_jsonl_is_one_schema_object_per_line(schema_world: SchemaWorld) -> None:
    result = schema_world.tripkey("alerts", "list", "--jsonl")
    assert result.returncode == 0, result.stderr
    rows = json_lines(result.stdout)
    assert rows and len(rows) == len(result.stdout.strip().splitlines())
    for row in rows:
        _check(row, CLI + "alert_row", "alerts list --jsonl")


@pytest.mark.parametrize(
    ("args", "code", "word"),
    [
        (("alerts", "show", "alr_doesnotexist"), 1, "not_found"),
        (("devices", "show", "dev_doesnotexist"), 1, "not_found"),
        (("credentials", "lookup", "AKIA0000000000000000"), 1, "not_found"),
        # The issuer refuses it (422): its own code, not the tool's word.
        (("reads", "--device", "dev_x", "--since", "yesterday-ish"), 2, "invalid_request"),
        (("alerts", "list", "--limit", "many"), 2, "usage_error"),
    ],
    ids=["unknown-alert", "unknown-device", "unknown-key", "bad-since", "bad-limit"],
)
def test_errors_are_the_one_error_object(
    schema_world: SchemaWorld, args: tuple[str, ...], code: int, word: str
) -> None:
    result = schema_world.tripkey(*args, "--json")
    assert result.returncode == code, (result.stdout, result.stderr)
    error = json.loads(result.stderr)
    validate(error, "common.json#/$defs/error")
    assert error["exit_code"] == code and error["error"]["code"] == word, error
    assert json.loads(result.stdout) == error


def test_a_bad_token_is_the_issuers_own_error_code(schema_world: SchemaWorld) -> None:
    from tests.support.cli import run_tool

    env = {"TRIPKEY_ISSUER_URL": schema_world.world.url, "TRIPKEY_TOKEN": "tkr_not-a-token"}
    result = run_tool("tripkey", "alerts", "list", "--json", env=env)
    error = json.loads(result.stderr)
    validate(error, "common.json#/$defs/error")
    assert (result.returncode, error["error"]["code"]) == (3, "unauthenticated"), error


def test_changing_commands_answer_in_the_schema(schema_world: SchemaWorld) -> None:
    """Last in this file: acknowledging, resolving, revoking and retiring change the world."""
    w = schema_world
    _check(_json(w, "alerts", "ack", w.alert_id), CLI + "alerts_ack", "alerts ack")
    resolved = _json(w, "alerts", "resolve", w.alert_id)
    _check(resolved, CLI + "alerts_resolve", "alerts resolve")
    assert resolved["status"] == "resolved" and resolved["siem"]["status"] == "resolved"
    revoked = _json(w, "credentials", "revoke", w.world.access_key_id)
    _check(revoked, CLI + "credentials_revoke", "credentials revoke")
    assert revoked["credentials"][0]["revoked_at"]
    retired = _json(w, "devices", "retire", w.world.device_id)
    _check(retired, CLI + "devices_retire", "devices retire")
    assert retired["device"]["retired_at"]
