r"""Windows Security event XML parser and the 4663 + 4688 join, on documented fixtures.

Format source: Microsoft's security auditing reference pages "4663(S): An attempt was made to
access an object" and "4688(S): A new process has been created" (learn.microsoft.com, Windows
security auditing events), which show each event's XML as rendered by Event Viewer / wevtutil:
<Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event"> with <System> (Provider,
EventID, Version, Task 12800 / 13312, Keywords 0x8020000000000000, TimeCreated/@SystemTime with
100 ns precision, EventRecordID, Execution, Channel "Security", Computer) and <EventData> of
<Data Name="..."> items. 4663 Data: SubjectUserSid, SubjectUserName, SubjectDomainName,
SubjectLogonId, ObjectServer, ObjectType, ObjectName, HandleId, AccessList, AccessMask,
ProcessId (hex), ProcessName, ResourceAttributes. 4688 (version 2) Data: SubjectUserSid,
SubjectUserName, SubjectDomainName, SubjectLogonId, NewProcessId (hex), NewProcessName,
TokenElevationType, ProcessId (the creator's pid, hex), CommandLine, TargetUserSid,
TargetUserName, TargetDomainName, TargetLogonId, ParentProcessName, MandatoryLabel.
`wevtutil qe Security /f:xml` prints the <Event> elements one after another; `/e:Events` wraps
them in one root element.
"""

from __future__ import annotations

import datetime as dt

import pytest

from agent.sensors._eventlog_parse import (
    EventLogCorrelator,
    EventLogParseError,
    canonical_path,
    hex_int,
    parse_events_xml,
    parse_system_time,
    split_command_line,
)
from tests.support.eventlog import CMD, CRED, EXPLORER, PS, access, exit_, start


def run(xml: str, paths: list[str] | None = None) -> tuple[list, EventLogCorrelator]:
    correlator = EventLogCorrelator(paths or [CRED])
    events, errors = parse_events_xml(xml)
    assert errors == []
    reads = [r for r in (correlator.handle(e) for e in events) if r is not None]
    return reads, correlator


def test_read_joined_with_process_creation_for_cmdline_and_ancestors() -> None:
    xml = (
        "<Events>"
        + "".join(
            [
                start(100, 0x1000, CMD, 0x700, f'"{CMD}" ', EXPLORER),
                start(101, 0x1234, PS, 0x1000, f'powershell.exe -nop -c "Get-Content {CRED}"', CMD),
                access(102, 0x1234, PS),
            ]
        )
        + "</Events>"
    )
    [read], _ = run(xml)
    assert read.path == CRED and read.sensor == "eventlog" and read.access == "read"
    assert (read.pid, read.ppid, read.exe) == (0x1234, 0x1000, PS)
    assert read.cmdline == ("powershell.exe", "-nop", "-c", f"Get-Content {CRED}")
    assert read.user == "CONTOSO\\alice" and read.uid is None
    assert read.time == dt.datetime(2024, 5, 2, 10, 11, 12, 557207, tzinfo=dt.UTC)
    assert read.start_time == dt.datetime(2024, 5, 2, 10, 11, 10, tzinfo=dt.UTC)
    assert [(a.pid, a.exe, a.cmdline) for a in read.ancestors] == [
        (0x1000, CMD, (CMD,)),
        (0x700, EXPLORER, ()),  # explorer's own 4688 was not seen: name from ParentProcessName
    ]


def test_wevtutil_output_without_root_and_with_xml_declaration() -> None:
    bare = start(1, 0x10, CMD, 0x4, "cmd /c type x", EXPLORER) + "\n" + access(2, 0x10, CMD)
    reads, _ = run(bare)
    assert [r.cmdline for r in reads] == [("cmd", "/c", "type", "x")]
    single = '<?xml version="1.0" encoding="UTF-8"?>\n' + access(3, 0x20, CMD)
    reads, _ = run(single)
    assert [r.pid for r in reads] == [0x20] and reads[0].cmdline == ()  # no 4688: no cmdline


def test_only_read_data_on_planted_files_counts() -> None:
    xml = "".join(
        [
            access(1, 0x30, CMD, mask="0x80"),  # ReadAttributes (dir listing, Explorer hover)
            access(2, 0x30, CMD, mask="0x2"),  # WriteData: tampering, watched elsewhere
            access(3, 0x30, CMD, path=r"C:\Users\alice\.aws\config"),
            access(4, 0x30, CMD, object_type="Key"),
            access(5, 0x30, CMD, mask="0x120089"),  # READ_CONTROL|SYNCHRONIZE|ReadEA|ReadAttr|ReadData
        ]
    )
    reads, _ = run(xml)
    assert [r.pid for r in reads] == [0x30] and len(reads) == 1


def test_path_case_and_prefix_insensitive_and_reported_as_configured() -> None:
    xml = access(1, 0x40, CMD, path=r"\??\c:\USERS\Alice\.AWS\Credentials") + access(
        2, 0x40, CMD, path=r"C:/Users/alice/.aws/./credentials"
    )
    reads, _ = run(xml)
    assert [r.path for r in reads] == [CRED, CRED]
    assert canonical_path(r"\\?\C:\a\B") == canonical_path(r"c:\A\b")


def test_reused_pid_is_not_joined_with_the_old_process() -> None:
    xml = start(1, 0x50, CMD, 0x4, "cmd /c dir", EXPLORER) + access(2, 0x50, r"C:\tools\stealer.exe")
    [read], _ = run(xml)
    assert read.exe == r"C:\tools\stealer.exe" and read.cmdline == () and read.ppid is None


def test_exit_retires_a_process_and_a_new_start_replaces_it() -> None:
    xml = (
        start(1, 0x60, CMD, 0x4, "cmd /c first", EXPLORER)
        + exit_(2, 0x60, CMD)
        + access(3, 0x60, CMD)
        + start(4, 0x60, CMD, 0x4, "cmd /c second", EXPLORER)
        + access(5, 0x60, CMD)
    )
    reads, correlator = run(xml)
    assert [r.cmdline for r in reads] == [(), ("cmd", "/c", "second")]
    assert list(correlator.processes) == [0x60]


def test_own_pid_is_skipped() -> None:
    correlator = EventLogCorrelator([CRED], skip_pids={0x70})
    events, _ = parse_events_xml(access(1, 0x70, r"C:\Program Files\Tripkey\tripkey-agent.exe"))
    assert [correlator.handle(e) for e in events] == [None]


def test_malformed_events_are_reported_not_fatal() -> None:
    good_time = 'SystemTime="2024-05-02T10:11:12.557207200Z"'
    broken_system = access(1, 0x80, CMD).replace(good_time, 'SystemTime="x"')
    no_id = access(2, 0x80, CMD).replace("<EventID>4663</EventID>", "<EventID>abc</EventID>")
    events, errors = parse_events_xml(broken_system + no_id + access(3, 0x80, CMD))
    assert [e.record_id for e in events] == [3]
    assert len(errors) == 2 and "SystemTime" in errors[0] and "EventID" in errors[1]
    with pytest.raises(EventLogParseError, match="not well-formed"):
        parse_events_xml("<Event><System>")
    assert parse_events_xml("  ") == ([], [])
    correlator = EventLogCorrelator([CRED])
    [bad] = parse_events_xml(access(4, 0x80, CMD, mask="zz"))[0]
    assert correlator.handle(bad) is None and correlator.malformed == 1


def test_xml_entities_and_missing_command_line() -> None:
    xml = start(1, 0x90, CMD, 0x4, "", EXPLORER) + access(2, 0x90, CMD, path=r"C:\R&amp;D\.aws\credentials")
    reads, _ = run(xml, paths=[r"C:\R&D\.aws\credentials"])
    assert [(r.path, r.cmdline, r.ppid) for r in reads] == [(r"C:\R&D\.aws\credentials", (), 0x4)]


@pytest.mark.parametrize(
    ("cmdline", "argv"),
    [
        ('"C:\\Program Files\\x.exe" -a "b c"', ("C:\\Program Files\\x.exe", "-a", "b c")),
        ('a\\\\\\"b c', ('a\\"b', "c")),
        ('a\\\\"b c" d', ("a\\b c", "d")),
        ("a\\b  c\\", ("a\\b", "c\\")),
        ('"" x', ("", "x")),
        ('"say ""hi"""', ('say "hi"',)),
        ("", ()),
    ],
)
def test_command_line_split_like_commandlinetoargvw(cmdline: str, argv: tuple[str, ...]) -> None:
    assert split_command_line(cmdline) == argv


def test_small_helpers() -> None:
    assert hex_int("0x1bc") == 0x1BC and hex_int("4663") == 4663 and hex_int("-") is None
    assert hex_int(None) is None
    assert parse_system_time("2015-09-18T22:15:19.557207200Z") == dt.datetime(
        2015, 9, 18, 22, 15, 19, 557207, tzinfo=dt.UTC
    )
    assert parse_system_time("garbage") is None and parse_system_time(None) is None
