"""Windows Security event XML builders for tests (4663/4688/4689), in the documented format
(its sources are named in tests/agent/sensors/test_eventlog_parse.py)."""

from __future__ import annotations

CRED = r"C:\Users\alice\.aws\credentials"


_SYSTEM = """<System><Provider Name="Microsoft-Windows-Security-Auditing" \
Guid="{{54849625-5478-4994-A5BA-3E3B0328C30D}}" /><EventID>{eid}</EventID><Version>{ver}</Version>\
<Level>0</Level><Task>{task}</Task><Opcode>0</Opcode><Keywords>0x8020000000000000</Keywords>\
<TimeCreated SystemTime="{time}" /><EventRecordID>{rid}</EventRecordID><Correlation />\
<Execution ProcessID="4" ThreadID="3060" /><Channel>Security</Channel>\
<Computer>PC01.contoso.local</Computer><Security /></System>"""


def event_xml(eid: int, rid: int, data: dict[str, str], time: str = "2024-05-02T10:11:12.557207200Z") -> str:
    items = "".join(f'<Data Name="{k}">{v}</Data>' if v else f'<Data Name="{k}" />' for k, v in data.items())
    task = {4663: 12800, 4688: 13312, 4689: 13313}.get(eid, 0)
    ver = {4688: 2, 4663: 1}.get(eid, 0)
    system = _SYSTEM.format(eid=eid, ver=ver, task=task, time=time, rid=rid)
    return (
        f'<Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event">{system}'
        f"<EventData>{items}</EventData></Event>"
    )


def access(rid: int, pid: int, exe: str, path: str = CRED, mask: str = "0x1", **kw: str) -> str:
    return event_xml(
        4663,
        rid,
        {
            "SubjectUserSid": "S-1-5-21-3457937927-2839227994-823803824-1104",
            "SubjectUserName": "alice",
            "SubjectDomainName": "CONTOSO",
            "SubjectLogonId": "0x1b5f62",
            "ObjectServer": "Security",
            "ObjectType": kw.pop("object_type", "File"),
            "ObjectName": path,
            "HandleId": "0x1bc",
            "AccessList": "%%4416",
            "AccessMask": mask,
            "ProcessId": hex(pid),
            "ProcessName": exe,
            "ResourceAttributes": "",
            **kw,
        },
    )


def start(
    rid: int,
    pid: int,
    exe: str,
    creator: int,
    cmdline: str,
    parent_exe: str,
    time: str = "2024-05-02T10:11:10.000000000Z",
) -> str:
    return event_xml(
        4688,
        rid,
        {
            "SubjectUserSid": "S-1-5-21-3457937927-2839227994-823803824-1104",
            "SubjectUserName": "alice",
            "SubjectDomainName": "CONTOSO",
            "SubjectLogonId": "0x1b5f62",
            "NewProcessId": hex(pid),
            "NewProcessName": exe,
            "TokenElevationType": "%%1938",
            "ProcessId": hex(creator),
            "CommandLine": cmdline,
            "TargetUserSid": "S-1-0-0",
            "TargetUserName": "-",
            "TargetDomainName": "-",
            "TargetLogonId": "0x0",
            "ParentProcessName": parent_exe,
            "MandatoryLabel": "S-1-16-8192",
        },
        time=time,
    )


def exit_(rid: int, pid: int, exe: str) -> str:
    return event_xml(
        4689,
        rid,
        {
            "SubjectUserName": "alice",
            "SubjectDomainName": "CONTOSO",
            "Status": "0x0",
            "ProcessId": hex(pid),
            "ProcessName": exe,
        },
    )


EXPLORER = r"C:\Windows\explorer.exe"


CMD = r"C:\Windows\System32\cmd.exe"


PS = r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe"


# ---- Microsoft's documented events ---------------------------------------------------------------
# The "Event XML" of Microsoft's security auditing reference, stored as published in
# MicrosoftDocs/windows-itpro-docs, windows/security/threat-protection/auditing/:
#   event-4663.md @ 69ce1e60ca363dfd63a8f2b0bd8f378a2165bcf7
#   event-4688.md @ 5320d4e2b36e1c01e041fa37634329950043916d
#   event-1102.md @ 3028533f93bbc00cab8e6e36933a8bf2fcd2e127
# (learn.microsoft.com/en-us/previous-versions/windows/it-pro/windows-10/security/threat-protection/
# auditing/event-4663 and siblings). They are Event Viewer's XML view of real events: each
# collapsible element starts with "- " and backslashes are shown doubled; `documented_event_xml`
# undoes exactly those two things and nothing else.
DOCUMENTED = {4663: "ms-docs-event-4663.txt", 4688: "ms-docs-event-4688.txt", 1102: "ms-docs-event-1102.txt"}


def documented_event_xml(event_id: int) -> str:
    from tests.support.paths import REPO_ROOT

    text = (REPO_ROOT / "tests" / "data" / "eventlog" / DOCUMENTED[event_id]).read_text(encoding="utf-8")
    lines = [line[2:] if line.startswith("- ") else line for line in text.splitlines()]
    return "\n".join(lines).replace("\\\\", "\\")
