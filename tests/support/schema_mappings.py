"""What an OCSF Detection Finding and an ECS document must say about the native alert they render
(docs/schema.md, "Sink formats"): shared by the schema tests on a live issuer and the end-to-end
detection test on a real alert."""

from __future__ import annotations

import datetime as dt
from typing import Any


def _millis(text: str) -> int:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(moment.timestamp() * 1000)


def assert_ocsf_says_what_the_alert_says(finding: dict[str, Any], alert: dict[str, Any]) -> None:
    siem = alert["siem"]
    assert finding["class_uid"] == 2004 and finding["category_uid"] == 2
    assert finding["finding_info"]["uid"] == alert["alert_id"]
    assert finding["finding_info"]["title"] == alert["title"]
    assert finding["metadata"]["correlation_uid"] == alert["alert_id"]
    assert finding["cloud"]["account"]["uid"] == siem["account_id"]
    assert finding["device"]["uid"] == siem["device_id"]
    assert finding["device"]["hostname"] == siem["host"]
    assert finding["count"] == alert["event_count"]
    assert finding["start_time"] == _millis(alert["first_seen"])
    assert finding["end_time"] == _millis(alert["last_seen"])
    sub_techniques = {a.get("sub_technique", {}).get("uid") for a in finding["attacks"]}
    assert set(siem["attack_technique_ids"]) <= sub_techniques | {
        a["technique"]["uid"] for a in finding["attacks"]
    }
    assert finding["unmapped"]["tripkey"]["siem"]["alert_id"] == alert["alert_id"]
    if siem.get("reader_pid") is not None:
        process = finding["actor"]["process"]
        assert process["pid"] == siem["reader_pid"]
        assert process["file"]["path"] == siem["reader_exe"]
        assert process["user"]["name"] == siem["reader_user"]
        evidence_uids = {e.get("uid") for e in finding["evidences"]}
        assert {r["event_id"] for r in alert["enrichment"]["reads"]} <= evidence_uids


def assert_ecs_says_what_the_alert_says(document: dict[str, Any], alert: dict[str, Any]) -> None:
    siem = alert["siem"]
    assert document["event"]["kind"] == "alert" and document["event"]["id"] == alert["alert_id"]
    assert (
        document["event"]["start"] == alert["first_seen"] and document["event"]["end"] == alert["last_seen"]
    )
    assert document["host"]["id"] == siem["device_id"] and document["host"]["hostname"] == siem["host"]
    assert document["cloud"]["account"]["id"] == siem["account_id"]
    assert document["file"]["path"] == siem["file_path"]
    assert document["user"]["name"] == siem["local_user"]
    technique_ids = set(document["threat"]["technique"]["id"]) | set(
        document["threat"]["technique"].get("subtechnique", {}).get("id", [])
    )
    assert set(siem["attack_technique_ids"]) <= technique_ids
    assert document["tripkey"]["siem"]["alert_id"] == alert["alert_id"]
    if siem.get("first_source_ip"):
        assert document["source"]["ip"] == siem["first_source_ip"]
        assert set(siem["source_ips"]) <= set(document["related"]["ip"])
    if siem.get("reader_pid") is not None:
        process = document["process"]
        assert process["pid"] == siem["reader_pid"] and process["executable"] == siem["reader_exe"]
        assert process["args"] == siem["reader_argv"] and process["user"]["name"] == siem["reader_user"]
        if siem.get("reader_start_time"):
            assert process["start"] == siem["reader_start_time"]
