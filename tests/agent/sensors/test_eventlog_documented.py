r"""The Security-event parser and the 4663 + 4688 join on Microsoft's documented events.

Source (named in tests/support/eventlog.py with commits): the "Event XML" sections of Microsoft's
security auditing reference, MicrosoftDocs/windows-itpro-docs,
windows/security/threat-protection/auditing/event-4663.md, event-4688.md and event-1102.md,
stored byte for byte under tests/data/eventlog/. No public recording of a 4663 on a planted
credentials file exists, so the documented events are used as published and, where a test needs
a read of our file, with one named field changed.
"""

from __future__ import annotations

import datetime as dt

from agent.sensors._eventlog_parse import (
    EVENT_LOG_CLEARED,
    EventLogCorrelator,
    parse_events_xml,
    subject_user,
)
from tests.support.eventlog import documented_event_xml

DOC_FILE = r"C:\Documents\HBI Data.txt"
NOTEPAD = r"C:\Windows\System32\notepad.exe"
RUNDLL = r"C:\Windows\System32\rundll32.exe"


def one(xml: str):  # type: ignore[no-untyped-def]
    events, errors = parse_events_xml(xml)
    assert errors == []
    [event] = events
    return event


def test_documented_4663_is_parsed_field_for_field() -> None:
    event = one(documented_event_xml(4663))
    assert (event.event_id, event.record_id, event.computer) == (4663, 273866, "DC01.contoso.local")
    assert event.time == dt.datetime(2015, 9, 18, 22, 13, 54, 770429, tzinfo=dt.UTC)
    assert event.data["ObjectName"] == DOC_FILE and event.data["ProcessName"] == NOTEPAD
    assert (event.data["AccessMask"], event.data["ProcessId"]) == ("0x6", "0x458")


def test_documented_4663_is_a_write_so_it_is_not_a_read() -> None:
    correlator = EventLogCorrelator([DOC_FILE])
    assert correlator.handle(one(documented_event_xml(4663))) is None  # 0x6: WriteData|AppendData
    assert correlator.malformed == 0


def test_documented_4663_as_a_read_names_the_process_and_user() -> None:
    xml = documented_event_xml(4663).replace('"AccessMask">0x6<', '"AccessMask">0x1<')  # ReadData
    read = EventLogCorrelator([DOC_FILE.upper()]).handle(one(xml))
    assert read is not None
    assert (read.path, read.pid, read.exe, read.user) == (DOC_FILE.upper(), 0x458, NOTEPAD, "CONTOSO\\dadmin")
    assert read.cmdline == () and read.ancestors == ()  # no 4688 seen for it


def test_documented_4688_without_command_line_is_counted() -> None:
    correlator = EventLogCorrelator([DOC_FILE])
    correlator.handle(one(documented_event_xml(4688)))
    process = correlator.processes[0x2BC]
    assert (process.exe, process.ppid, process.parent_exe) == (RUNDLL, 0xE74, r"C:\Windows\explorer.exe")
    assert process.user == "CONTOSO\\dadmin"  # the Target subject: the user the process runs as
    assert process.cmdline == ()
    assert (correlator.starts, correlator.starts_without_cmdline) == (1, 1)


def test_join_by_pid_and_time_refuses_a_process_that_started_after_the_read() -> None:
    # The documented 4688 (2015-11-12) and a read by the same pid and exe recorded earlier
    # (the documented 4663's own time, 2015-09-18): the process cannot have made that read.
    read_xml = (
        documented_event_xml(4663)
        .replace('"AccessMask">0x6<', '"AccessMask">0x1<')
        .replace('"ProcessId">0x458<', '"ProcessId">0x2bc<')
        .replace(NOTEPAD, RUNDLL)
    )
    correlator = EventLogCorrelator([DOC_FILE])
    correlator.handle(one(documented_event_xml(4688)))
    before = correlator.handle(one(read_xml))
    assert before is not None and before.ppid is None and before.start_time is None
    later = read_xml.replace("2015-09-18T22:13:54.770429700Z", "2015-11-12T02:24:53.000000000Z")
    joined = correlator.handle(one(later))
    assert joined is not None and (joined.ppid, joined.start_time) == (
        0xE74,
        dt.datetime(2015, 11, 12, 2, 24, 52, 377352, tzinfo=dt.UTC),
    )
    assert [(a.pid, a.exe) for a in joined.ancestors] == [(0xE74, r"C:\Windows\explorer.exe")]


def test_documented_1102_names_who_cleared_the_log() -> None:
    event = one(documented_event_xml(EVENT_LOG_CLEARED))
    assert (event.event_id, event.record_id) == (1102, 1087729)
    assert subject_user(event) == "CONTOSO\\dadmin"
    assert event.data["SubjectUserSid"] == "S-1-5-21-3457937927-2839227994-823803824-1104"
