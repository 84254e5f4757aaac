"""Agent event batches: every event is stored on its own (live issuer, real HTTP).

Hostile inputs: a reader whose command line carries a lone surrogate and NUL (no database can store
them), and an event the database refuses outright, between good ones.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from issuer import agent_events
from issuer.detection.counters import read_counter
from issuer.models import AgentEvent, DeadLetter


def _read(**read: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "kind": "read",
        "time": "2026-11-22T10:00:00Z",
        "path": "/home/alice/.aws/credentials",
        "read": {"pid": 7, "sensor": "fanotify", **read},
    }


def test_unstorable_text_in_a_read_is_stored_spelled_out(live_issuer: Any) -> None:
    device_id, token = live_issuer.enroll()
    event = _read(exe="/tmp/\ud800\x00x", cmdline=["cat", "\udfff", "\x1b[2J"], user="a\x00b")
    url = f"/v1/devices/{device_id}/events"
    response = live_issuer.request("POST", url, token, json={"events": [event]})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    reads = live_issuer.request(
        "GET", f"/v1/devices/{device_id}/reads?since=3650d", live_issuer.create_token()
    ).json()["reads"]
    [read] = reads
    assert read["exe"] == "/tmp/\\ud800\\x00x"
    assert read["cmdline"] == ["cat", "\\udfff", "\x1b[2J"]  # the escape sequence is kept exactly
    assert read["user"] == "a\\x00b"


def test_an_event_the_database_refuses_is_kept_and_its_neighbours_stored(
    live_issuer: Any, monkeypatch: Any
) -> None:
    """The database refuses one event of the batch (a value it cannot serialise, injected where the
    row is built): the batch is stored event by event, that one is counted and kept as a dead letter."""
    device_id, token = live_issuer.enroll()
    events = [_read(), _read(), _read()]
    poisoned = events[1]["event_id"]
    real_row = agent_events._row

    def row(device: str, event: Any, now: Any) -> dict[str, Any]:
        built = real_row(device, event, now)
        if event["event_id"] == poisoned:
            built["detail"] = {"unserialisable": object()}
        return built

    monkeypatch.setattr(agent_events, "_row", row)
    response = live_issuer.request("POST", f"/v1/devices/{device_id}/events", token, json={"events": events})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (2, 1)
    assert answer["errors"][0]["index"] == 1 and answer["errors"][0]["event_id"] == poisoned
    with live_issuer.session() as session:
        stored = set(session.scalars(select(AgentEvent.event_id).where(AgentEvent.device_id == device_id)))
        assert stored == {events[0]["event_id"], events[2]["event_id"]}
        assert read_counter(session, "agent_events.failed") == 1
        [letter] = session.scalars(select(DeadLetter)).all()
        assert letter.device_id == device_id and poisoned in letter.payload
    # the agent sends the batch again (it never saw the answer): nothing is stored twice
    again = live_issuer.request("POST", f"/v1/devices/{device_id}/events", token, json={"events": events})
    assert (again.json()["accepted"], again.json()["duplicates"], again.json()["rejected"]) == (0, 2, 1)
