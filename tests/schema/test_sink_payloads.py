"""Issue 13, "Alerts a SIEM can take as they are": every payload each sink delivered for a live alert
(first and updated revision) validates against docs/schemas (alert.json, sinks.json), speaks the one
time format, and the OCSF and ECS renderings say what the native alert says.

Real parts: the issuer on loopback delivering over HTTP to receivers (webhook in native, OCSF and ECS
formats, with the HMAC signature checked; Slack; PagerDuty), over SMTP to aiosmtpd, and to JSONL files
in all three formats (tests/support/schema_world.py).
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.schema import assert_one_time_format, read_jsonl, validate
from tests.support.schema_mappings import (
    assert_ecs_says_what_the_alert_says,
    assert_ocsf_says_what_the_alert_says,
)
from tests.support.schema_naming import assert_naming
from tests.support.schema_world import SchemaWorld


def _bodies(world: SchemaWorld, sink: str) -> list[Any]:
    """The alert's first delivery and its update (later tests may resolve it: more deliveries)."""
    bodies = world.hooks[sink].json_bodies()
    assert len(bodies) >= 2, f"{sink}: expected the alert and its update, got {len(bodies)}"
    return bodies[:2]


def _native_alert(world: SchemaWorld) -> dict[str, Any]:
    return dict(read_jsonl(world.jsonl["native"])[1])


def test_native_webhook_is_the_envelope_with_the_whole_alert(schema_world: SchemaWorld) -> None:
    for body in _bodies(schema_world, "webhook-native"):
        validate(body, "sinks.json#/$defs/webhook_native")
        assert_one_time_format(body, "native webhook")
        assert_naming(body, "native webhook")
        assert body["siem"] == body["alert"]["siem"] and body["alert"]["alert_id"] == schema_world.alert_id


def test_jsonl_is_exactly_one_alert_per_line_in_every_format(schema_world: SchemaWorld) -> None:
    for fmt, path in schema_world.jsonl.items():
        lines = path.read_text().splitlines()
        assert len(lines) >= 2, f"{fmt}: one line per revision, got {len(lines)}"
        for line in lines:
            document = json.loads(line)
            assert isinstance(document, dict) and line == json.dumps(document, sort_keys=True)
    for alert in read_jsonl(schema_world.jsonl["native"]):
        validate(alert, "alert.json")
        assert_one_time_format(alert, "native JSONL")
        assert_naming(alert, "native JSONL")


def test_ocsf_renderings_are_detection_findings_of_this_alert(schema_world: SchemaWorld) -> None:
    alert = _native_alert(schema_world)
    documents = [*_bodies(schema_world, "webhook-ocsf"), *read_jsonl(schema_world.jsonl["ocsf"])[:2]]
    for document in documents:
        validate(document, "sinks.json#/$defs/ocsf")
    first, update = documents[:2]
    assert (first["activity_id"], first["type_uid"]) == (1, 200401)
    assert (update["activity_id"], update["type_uid"]) == (2, 200402)
    assert_ocsf_says_what_the_alert_says(update, alert)


def test_ecs_renderings_are_alert_documents_of_this_alert(schema_world: SchemaWorld) -> None:
    alert = _native_alert(schema_world)
    documents = [*_bodies(schema_world, "webhook-ecs"), *read_jsonl(schema_world.jsonl["ecs"])[:2]]
    for document in documents:
        validate(document, "sinks.json#/$defs/ecs")
        assert_one_time_format(document, "ECS")
    assert_ecs_says_what_the_alert_says(documents[1], alert)


def test_slack_and_pagerduty_bodies_speak_the_schema(schema_world: SchemaWorld) -> None:
    for body in _bodies(schema_world, "slack"):
        validate(body, "sinks.json#/$defs/slack")
        assert_one_time_format(body, "Slack")
        assert schema_world.alert_id in body["text"] + json.dumps(body["blocks"])
    for body in _bodies(schema_world, "pagerduty"):
        validate(body, "sinks.json#/$defs/pagerduty")
        assert_one_time_format(body, "PagerDuty")
        assert body["dedup_key"] == f"tripkey-{schema_world.alert_id}"
        assert body["payload"]["custom_details"]["siem"]["alert_id"] == schema_world.alert_id


def test_the_email_lists_the_siem_fields_in_the_one_time_format(schema_world: SchemaWorld) -> None:
    assert len(schema_world.mails) >= 2
    alert = _native_alert(schema_world)
    for mail in schema_world.mails[:2]:
        text = mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
        assert_one_time_format(text, "email")
        for value in (
            alert["alert_id"],
            alert["siem"]["access_key_id"],
            alert["siem"]["device_id"],
            "T1552.001",
        ):
            assert value in text, value


def test_renderings_of_an_alert_with_no_reader_and_aws_internal_addresses(schema_world: SchemaWorld) -> None:
    """AWS's own calls come from "AWS Internal" (no address), a key can be used before any read was
    recorded, and an older alert may lack its siem block: each rendering stays in its schema and
    says nothing it does not know."""
    from issuer.alerts.sinks import render

    alert = _native_alert(schema_world)
    alert["enrichment"]["reads"] = []
    alert["verdict"]["reasons"] = []
    for call in alert["enrichment"]["aws"]["calls"]:
        call["source_ip"] = "AWS Internal"
    alert["siem"] = {
        **{k: v for k, v in alert["siem"].items() if not k.startswith("reader_")},
        "first_source_ip": "AWS Internal",
        "last_source_ip": "AWS Internal",
        "source_ips": ["AWS Internal"],
    }
    ocsf = render(alert, "ocsf")
    validate(ocsf, "sinks.json#/$defs/ocsf")
    assert "actor" not in ocsf, ocsf.get("actor")
    assert all("process" not in e for e in ocsf["evidences"]), ocsf["evidences"]
    assert "AWS Internal" not in json.dumps([o for o in ocsf.get("observables", []) if o["type_id"] == 2])
    ecs = render(alert, "ecs")
    validate(ecs, "sinks.json#/$defs/ecs")
    assert "process" not in ecs and "ip" not in ecs.get("source", {}), ecs.get("source")

    older = {k: v for k, v in _native_alert(schema_world).items() if k != "siem"}
    for fmt in ("ocsf", "ecs"):
        rendered = render(older, fmt)
        assert rendered, fmt  # an alert stored before the siem block still renders
