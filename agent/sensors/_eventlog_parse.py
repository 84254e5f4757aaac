"""Pure parser of Windows Security event XML (4663 object access, 4688/4689 process start/exit).

Windows records a read of a planted file when the file (via its folder's inheritable audit ACE)
has a SACL entry "Everyone: ReadData, Success" and the "File System" audit subcategory is on:
event 4663 "An attempt was made to access an object". Its EventData carries SubjectUserSid,
SubjectUserName, SubjectDomainName, SubjectLogonId, ObjectServer, ObjectType ("File"),
ObjectName (the DOS path), HandleId, AccessList, AccessMask (hex; 0x1 = ReadData), ProcessId
(hex) and ProcessName. No command line and no parent: those come from event 4688 "A new process
has been created" (NewProcessId, NewProcessName, CommandLine when "Include command line in process
creation events" is on, ProcessId = the creator's pid, ParentProcessName, TokenElevationType,
SubjectUser*), joined here by pid; 4689 (process exit) retires a pid.

Events are rendered as XML by `wevtutil qe ... /f:xml` (several <Event> elements, wrapped in one
root with `/e:Events`) or by EvtRender; both are accepted:

    <Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event">
      <System><Provider Name="Microsoft-Windows-Security-Auditing" .../><EventID>4663</EventID>
        <TimeCreated SystemTime="2015-09-18T22:15:19.557207200Z"/>
        <EventRecordID>273866</EventRecordID><Computer>PC01</Computer>...</System>
      <EventData><Data Name="ObjectName">C:\\Users\\alice\\.aws\\credentials</Data>...</EventData>
    </Event>

Paths compare case-insensitively (NTFS) after stripping `\\\\?\\` / `\\??\\` prefixes and
normalising separators. Pids are reused quickly on Windows, so a 4663 is joined to a 4688 by
process id and time: only when the executable names agree and the process started before the read.
1102 ("The audit log was cleared") carries its fields in <UserData>, which are read too.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import ntpath
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from agent.events.bounds import MAX_ANCESTORS
from agent.events.model import ProcessInfo, ReadEvent, parse_utc

SENSOR_NAME = "eventlog"
EVENT_ACCESS, EVENT_PROCESS_START, EVENT_PROCESS_EXIT = 4663, 4688, 4689
READ_DATA = 0x1  # FILE_READ_DATA (ListDirectory on a folder)
EVENT_LOG_CLEARED = 1102
# Events are stamped by one clock, but a 4688 and the 4663 of its first read can share a tick.
CLOCK_SLACK = dt.timedelta(milliseconds=1)
_NS = "{http://schemas.microsoft.com/win/2004/08/events/event}"
_ROOT_OPEN_RE = re.compile(r"^\s*(<\?xml[^>]*\?>)?\s*<(?!Event[\s>])[A-Za-z]")


class EventLogParseError(ValueError):
    """XML that is not a usable Windows event."""


@dataclasses.dataclass(frozen=True, slots=True)
class WinEvent:
    event_id: int
    record_id: int | None
    time: dt.datetime
    data: dict[str, str]
    computer: str | None = None


@dataclasses.dataclass(slots=True)
class WinProcess:
    pid: int
    ppid: int | None
    exe: str | None
    cmdline: tuple[str, ...]
    user: str | None
    start_time: dt.datetime | None
    parent_exe: str | None = None


def hex_int(value: str | None) -> int | None:
    """'0x458' (how the Security log writes pids and masks) or decimal to int; None if unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None


#: TimeCreated/@SystemTime ('2015-09-18T22:15:19.557207200Z', 100 ns precision) to UTC.
parse_system_time = parse_utc


def canonical_path(path: str) -> str:
    text = path.strip().replace("/", "\\")
    for prefix in ("\\\\?\\", "\\??\\"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return ntpath.normpath(text).casefold()


def split_command_line(cmdline: str) -> tuple[str, ...]:
    """argv as CommandLineToArgvW splits it (quotes, and backslashes before quotes)."""
    args: list[str] = []
    current: list[str] = []
    in_quotes = False
    have_arg = False
    i, n = 0, len(cmdline)
    while i < n:
        ch = cmdline[i]
        if ch == "\\":
            j = i
            while j < n and cmdline[j] == "\\":
                j += 1
            count = j - i
            if j < n and cmdline[j] == '"':
                current.append("\\" * (count // 2))
                if count % 2:
                    current.append('"')
                    j += 1
                i = j
            else:
                current.append("\\" * count)
                i = j
            have_arg = True
            continue
        if ch == '"':
            if in_quotes and i + 1 < n and cmdline[i + 1] == '"':
                current.append('"')  # "" inside quotes is a literal quote
                i += 2
                continue
            in_quotes = not in_quotes
            have_arg = True
        elif ch in " \t" and not in_quotes:
            if have_arg:
                args.append("".join(current))
                current, have_arg = [], False
        else:
            current.append(ch)
            have_arg = True
        i += 1
    if have_arg:
        args.append("".join(current))
    return tuple(args)


def _element_to_event(element: ET.Element) -> WinEvent:
    system = element.find(f"{_NS}System")
    if system is None:
        raise EventLogParseError("event without <System>")
    event_id = hex_int(system.findtext(f"{_NS}EventID"))
    if event_id is None:
        raise EventLogParseError("event without a numeric <EventID>")
    created = system.find(f"{_NS}TimeCreated")
    time = parse_system_time(created.get("SystemTime") if created is not None else None)
    if time is None:
        raise EventLogParseError(f"event {event_id} without a valid TimeCreated/@SystemTime")
    data: dict[str, str] = {}
    event_data = element.find(f"{_NS}EventData")
    if event_data is not None:
        for item in event_data.findall(f"{_NS}Data"):
            name = item.get("Name")
            if name:
                data[name] = (item.text or "").strip()
    # Some events carry their fields as <UserData><Wrapper xmlns="..."><Name>value</Name>...
    # (1102 "The audit log was cleared": <LogFileCleared><SubjectUserName>...).
    user_data = element.find(f"{_NS}UserData")
    for wrapper in user_data if user_data is not None else ():
        for item in wrapper:
            data.setdefault(item.tag.rsplit("}", 1)[-1], (item.text or "").strip())
    return WinEvent(
        event_id=event_id,
        record_id=hex_int(system.findtext(f"{_NS}EventRecordID")),
        time=time,
        data=data,
        computer=system.findtext(f"{_NS}Computer"),
    )


def parse_events_xml(text: str) -> tuple[list[WinEvent], list[str]]:
    """All events in `text` (one <Event>, several, or wrapped in a root); plus per-event errors.

    Raises EventLogParseError only when the text is not XML at all.
    """
    body = text.strip()
    if not body:
        return [], []
    if not _ROOT_OPEN_RE.match(body):
        body = "<Events>" + re.sub(r"^\s*<\?xml[^>]*\?>", "", body) + "</Events>"
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise EventLogParseError(f"event XML is not well-formed: {exc}") from exc
    elements = [root] if root.tag == f"{_NS}Event" else list(root.iter(f"{_NS}Event"))
    events, errors = [], []
    for element in elements:
        try:
            events.append(_element_to_event(element))
        except EventLogParseError as exc:
            errors.append(str(exc))
    return events, errors


class EventLogCorrelator:
    """Turn 4663 reads of planted files into ReadEvents, with 4688's command line and ancestors."""

    def __init__(self, paths: Iterable[str], *, skip_pids: Iterable[int] = (), max_processes: int = 65536):
        self.skip_pids = frozenset(skip_pids)
        self.max_processes = max_processes
        self.processes: collections.OrderedDict[int, WinProcess] = collections.OrderedDict()
        self.malformed = 0
        # 4688s without a command line: "Include command line in process creation events" is off
        # (or a Group Policy turned it off again); the sensor reports it.
        self.starts = 0
        self.starts_without_cmdline = 0
        self.set_paths(paths)

    def set_paths(self, paths: Iterable[str]) -> None:
        self._targets = {canonical_path(p): p for p in paths}

    def handle(self, event: WinEvent) -> ReadEvent | None:
        if event.event_id == EVENT_PROCESS_START:
            self._process_start(event)
        elif event.event_id == EVENT_PROCESS_EXIT:
            pid = hex_int(event.data.get("ProcessId"))
            known = self.processes.get(pid) if pid is not None else None
            if known is not None and _same_exe(known.exe, event.data.get("ProcessName")):
                del self.processes[known.pid]
        elif event.event_id == EVENT_ACCESS:
            return self._access(event)
        return None

    def _process_start(self, event: WinEvent) -> None:
        pid = hex_int(event.data.get("NewProcessId"))
        if pid is None:
            self.malformed += 1
            return
        # The new process runs as the Target user when there is one (runas), else as the Subject.
        user = _user(event.data, "Target") or _user(event.data, "Subject")
        raw = event.data.get("CommandLine") or ""
        self.starts += 1
        if not raw:
            self.starts_without_cmdline += 1
        self.processes.pop(pid, None)
        self.processes[pid] = WinProcess(
            pid=pid,
            ppid=hex_int(event.data.get("ProcessId") or event.data.get("CreatorProcessId")),
            exe=event.data.get("NewProcessName") or None,
            cmdline=split_command_line(raw) if raw else (),
            user=user,
            start_time=event.time,
            parent_exe=event.data.get("ParentProcessName") or None,
        )
        while len(self.processes) > self.max_processes:
            self.processes.popitem(last=False)

    def _access(self, event: WinEvent) -> ReadEvent | None:
        data = event.data
        name = data.get("ObjectName")
        if not name or data.get("ObjectType", "File") != "File":
            return None
        planted = self._targets.get(canonical_path(name))
        if planted is None:
            return None
        mask = hex_int(data.get("AccessMask"))
        pid = hex_int(data.get("ProcessId"))
        if mask is None or pid is None:
            self.malformed += 1
            return None
        if not mask & READ_DATA or pid in self.skip_pids:
            return None
        exe = data.get("ProcessName") or None
        known = self.processes.get(pid)
        if known is not None and not _same_exe(known.exe, exe):
            known = None  # the pid was reused and we missed the new 4688
        if known is not None and known.start_time is not None and known.start_time > event.time + CLOCK_SLACK:
            known = None  # that process started after this read: a later holder of the pid
        return ReadEvent(
            time=event.time,
            path=planted,
            pid=pid,
            sensor=SENSOR_NAME,
            access="read",
            ppid=known.ppid if known else None,
            exe=exe,
            cmdline=known.cmdline if known else (),
            uid=None,
            user=_user(data, "Subject"),
            start_time=known.start_time if known else None,
            ancestors=self.ancestors(known) if known else (),
        )

    def ancestors(self, proc: WinProcess) -> tuple[ProcessInfo, ...]:
        chain: list[ProcessInfo] = []
        seen = {proc.pid}
        child = proc
        while child.ppid is not None and child.ppid not in seen and len(chain) < MAX_ANCESTORS:
            parent = self.processes.get(child.ppid)
            if parent is None or not _same_exe(parent.exe, child.parent_exe):
                # Not seen (or pid reused since): 4688 v2 still names the parent's executable.
                chain.append(ProcessInfo(pid=child.ppid, exe=child.parent_exe))
                break
            chain.append(ProcessInfo(pid=parent.pid, exe=parent.exe, cmdline=parent.cmdline))
            seen.add(parent.pid)
            child = parent
        return tuple(chain)


def _same_exe(a: str | None, b: str | None) -> bool:
    return a is None or b is None or canonical_path(a) == canonical_path(b)


def _user(data: dict[str, str], prefix: str) -> str | None:
    name = data.get(f"{prefix}UserName")
    if not name or name == "-":
        return None
    domain = data.get(f"{prefix}DomainName")
    return f"{domain}\\{name}" if domain and domain != "-" else name


def subject_user(event: WinEvent) -> str | None:
    """DOMAIN\\user of an event's subject (who cleared the log, who opened the file)."""
    return _user(event.data, "Subject")
