"""READER_FIELDS drives both the read log's columns and the uploaded "read" object: it must name
exactly the reader fields a ReadEvent serialises (everything but when and which file)."""

from __future__ import annotations

import datetime as dt

from agent.events.model import READER_FIELDS, ReadEvent


def test_reader_fields_are_the_event_fields_besides_time_and_path() -> None:
    event = ReadEvent(time=dt.datetime.now(dt.UTC), path="/x/credentials", pid=1, sensor="test")
    assert set(event.to_dict()) - {"time", "path"} == set(READER_FIELDS)
