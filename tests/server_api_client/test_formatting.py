"""Rendering of issuer JSON for people: the alert report on a real alert, and on broken input."""

from __future__ import annotations

from typing import Any

import pytest

from server_api_client import formatting as fmt
from tests.support.client import World


def real_alert_dict(world: World) -> dict[str, Any]:
    """An alert raised by the issuer's detection pipeline, serialised as GET /v1/alerts/{id} does."""
    from issuer.alerts.serialize import alert_to_dict
    from issuer.models import Alert

    alert_id = world.alert(event_name="GetCallerIdentity", source_ip="192.0.2.44")
    with world.issuer.session() as session:
        return alert_to_dict(session, session.get(Alert, alert_id))


def test_alert_report_of_a_real_alert(cl_world: World) -> None:
    alert = real_alert_dict(cl_world)
    report = fmt.format_alert(alert)
    assert report.splitlines()[0].startswith(f"ALERT {alert['alert_id']}: ")
    sections = [line for line in report.splitlines() if line and not line.startswith(" ")]
    for title in (
        "VERDICT HINT:",
        "CREDENTIAL AND PLACEMENT",
        "AWS ACTIVITY",
        "READS OF THE FILE",
        "SELF-REPORTS",
        "AGENT HEALTH",
        "DELIVERIES",
    ):
        assert any(s.startswith(title) for s in sections), title
    for value in (
        cl_world.hostname,
        cl_world.path,
        cl_world.profile,
        cl_world.access_key_id,
        "192.0.2.44",
        "GetCallerIdentity",
        "AccessDenied",
        "us-east-1",
        "/usr/bin/cat",
        "python3 /tmp/.x/steal.py",
        "[shell_utility]",
        "[unknown]",
        "parents: /usr/bin/bash[4200]",
        "fanotify permission",
    ):
        assert value in report, value
    hint = alert["verdict"]["hint"]
    assert f"VERDICT HINT: {hint}" in report
    for reason in alert["verdict"]["reasons"]:
        assert reason["text"] in report


@pytest.mark.parametrize(
    "alert",
    [
        {},
        {"alert_id": "al_1"},
        {"alert_id": "al_1", "summary": None, "enrichment": "garbage", "verdict": [], "deliveries": {"x": 1}},
        {
            "alert_id": "al_1",
            "enrichment": {"reads": [None, 7, {"cmdline": "not a list"}], "agent_health": {}},
            "notes": ["plain", {"time": "2026-11-22T10:00:00Z", "action": "ack", "note": "mine"}],
        },
    ],
)
def test_alert_report_never_crashes_on_odd_input(alert: dict[str, Any]) -> None:
    report = fmt.format_alert(alert)
    assert report.startswith("ALERT ")
    if alert.get("notes"):
        assert "NOTES" in report and "mine" in report and "plain" in report


def test_text_shortens_times_and_marks_missing_values() -> None:
    assert fmt.text("2026-11-22T10:00:00.123456Z") == "2026-11-22 10:00:00Z"
    assert fmt.text("2026-11-22T10:00:00+00:00") == "2026-11-22 10:00:00Z"
    assert fmt.text("2026-11-22T12:00:00+02:00") == "2026-11-22 12:00:00+02:00"
    assert fmt.text(None) == fmt.text("") == fmt.text([]) == "-"
    assert fmt.text(True) == "yes" and fmt.text(0) == "0"
    assert fmt.text(["a", "b"]) == "a, b"


def test_table_aligns_and_clips() -> None:
    out = fmt.table(["A", "LONG HEADER"], [["x" * 100, 1], [None, "two\nlines"]], max_cell=10)
    lines = out.splitlines()
    assert lines[0] == "A           LONG HEADER"
    assert lines[1].startswith("xxxxxxxxx…")
    # a newline inside a value is spelled out, never printed (it could forge a line of the table)
    assert "two\\x0ali…" in lines[2] and lines[2].startswith("-")


def test_repeated_opens_by_one_process_are_one_entry() -> None:
    aws = {
        "pid": 7,
        "exe": "/usr/bin/python3",
        "cmdline": ["aws", "s3", "ls"],
        "user": "bob",
        "classification": "aws_tool",
        "time": "2026-11-22T10:00:00Z",
    }
    cat = {**aws, "pid": 8, "exe": "/usr/bin/cat", "cmdline": ["cat", "f"], "classification": "shell_utility"}
    alert = {"alert_id": "alr_1", "enrichment": {"reads": [aws, aws, aws, cat, aws]}}
    report = fmt.alert_report(alert)
    assert report.count("exe: /usr/bin/python3") == 2  # the later open is a separate run of reads
    assert "x3 opens" in report
    assert report.count("exe: /usr/bin/cat") == 1
