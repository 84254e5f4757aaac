"""A fake of the Win32 surface the Windows agent uses, for contract tests on Linux.

Only the OS boundary is faked: the pywin32 modules (win32evtlog, win32event, win32security,
win32api, ntsecuritycon, pywintypes.error), advapi32's audit policy and the registry values, with
the behaviour their documentation gives (EvtNext returning nothing or ERROR_NO_MORE_ITEMS, a stale
result after a clear, AdjustTokenPrivileges leaving ERROR_NOT_ALL_ASSIGNED in GetLastError, ACEs
with the SUCCESSFUL_ACCESS flag set by AddAuditAccessAceEx, ...). Everything above it is the
agent's real code.
"""

from __future__ import annotations

import re
import threading
import time
import types
from typing import Any

from tests.support.eventlog import event_xml


class Win32Error(Exception):
    """pywintypes.error: (winerror, funcname, strerror)."""

    def __init__(self, winerror: int, funcname: str, strerror: str) -> None:
        super().__init__(winerror, funcname, strerror)
        self.winerror, self.funcname, self.strerror = winerror, funcname, strerror


class Sid:
    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sid) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


class Acl:
    """PyACL: ACEs as GetAce returns them, ((type, flags), mask, sid)."""

    def __init__(self, aces: list[tuple[tuple[int, int], int, Sid]] | None = None) -> None:
        self.aces = list(aces or [])

    def AddAuditAccessAceEx(
        self, revision: int, flags: int, mask: int, sid: Sid, success: bool, failure: bool
    ) -> None:
        flags |= (0x40 if success else 0) | (0x80 if failure else 0)
        self.aces.append(((0x2, flags), mask, sid))

    def GetAceCount(self) -> int:
        return len(self.aces)

    def GetAce(self, index: int) -> tuple[tuple[int, int], int, Sid]:
        return self.aces[index]

    def DeleteAce(self, index: int) -> None:
        del self.aces[index]


class Signal:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.closed = False

    def Close(self) -> None:
        self.closed = True


def _wait(signal: Signal, timeout_ms: int) -> int:
    """WaitForSingleObject on an auto-reset event: WAIT_OBJECT_0 (0) or WAIT_TIMEOUT (258)."""
    if signal.event.wait(timeout_ms / 1000):
        signal.event.clear()
        return 0
    return 258


class EventHandle:
    def __init__(self, record_id: int, xml: str) -> None:
        self.record_id, self.xml = record_id, xml


class Bookmark:
    def __init__(self, record_id: int | None) -> None:
        self.record_id = record_id


class Results:
    """An EvtQuery result set or an EvtSubscribe subscription over the fake log."""

    def __init__(
        self, log: SecurityLog, ids: set[int], after: int, *, reverse: bool = False, signal: Any = None
    ):
        self.log, self.ids, self.after, self.reverse, self.signal = log, ids, after, reverse, signal
        self.stale = False
        self.closed = False
        self.snapshot = [r for r in log.records if r[1] in ids] if reverse else None

    def next(self, count: int) -> tuple[EventHandle, ...]:
        if self.stale:
            raise Win32Error(15011, "EvtNext", "The query result is stale or invalid.")
        if self.snapshot is not None:  # a reverse query: newest first, then ERROR_NO_MORE_ITEMS
            if not self.snapshot:
                raise Win32Error(259, "EvtNext", "No more data is available.")
            taken = [self.snapshot.pop() for _ in range(min(count, len(self.snapshot)))]
            return tuple(EventHandle(rid, xml) for rid, _eid, xml in taken)
        new = [r for r in self.log.records if r[0] > self.after and r[1] in self.ids][:count]
        if new:
            self.after = new[-1][0]
        return tuple(EventHandle(rid, xml) for rid, _eid, xml in new)

    def Close(self) -> None:
        self.closed = True


class SecurityLog:
    """The Security channel: (record id, event id, XML) in order, and its subscribers."""

    def __init__(self) -> None:
        self.records: list[tuple[int, int, str]] = []
        self.next_id = 1
        self.subscriptions: list[Results] = []
        self.lock = threading.Lock()

    def append(self, event_id: int, xml_for_id: Any) -> int:
        """Append an event; `xml_for_id(record_id)` renders it (the builders take the record id)."""
        with self.lock:
            record_id = self.next_id
            self.next_id += 1
            self.records.append((record_id, event_id, xml_for_id(record_id)))
            for sub in self.subscriptions:
                if sub.signal is not None and event_id in sub.ids:
                    sub.signal.event.set()
            return record_id

    def clear(self, *, by: str = "dadmin", stale: bool = False) -> None:
        """What wevtutil cl / Clear-EventLog does: every record goes, a 1102 naming who is written
        first; `stale` also invalidates open result sets (ERROR_EVT_QUERY_RESULT_STALE)."""
        with self.lock:
            self.records.clear()
            for sub in self.subscriptions:
                sub.stale = stale
        self.append(1102, lambda rid: cleared_xml(rid, by))


def cleared_xml(record_id: int, user: str) -> str:
    body = event_xml(1102, record_id, {})
    user_data = (
        '<UserData><LogFileCleared xmlns="http://manifests.microsoft.com/win/2004/08/windows/eventlog">'
        f"<SubjectUserName>{user}</SubjectUserName><SubjectDomainName>CONTOSO</SubjectDomainName>"
        "</LogFileCleared></UserData>"
    )
    return body.replace("<EventData></EventData>", user_data)


class FakeWindows:
    """The whole faked surface plus the state it acts on (token, SACLs, audit policy, registry)."""

    def __init__(self) -> None:
        self.log = SecurityLog()
        self.sacls: dict[str, Acl | None] = {}
        self.held_privileges = {"SeSecurityPrivilege"}
        self.enabled_privileges: set[str] = set()
        self.last_error = 0
        self.audit: dict[str, int] = {}
        self.gpo_forced_off: set[str] = set()  # subcategories a Group Policy keeps off
        self.dwords: dict[tuple[str, str], int] = {}
        self.set_calls: list[str] = []
        self.evtlog = self._evtlog()
        self.event = types.SimpleNamespace(
            CreateEvent=lambda sa, manual, initial, name: Signal(), WaitForSingleObject=_wait
        )
        self.security = self._security()
        self.api = types.SimpleNamespace(GetCurrentProcess=lambda: -1, GetLastError=lambda: self.last_error)
        self.ntsecuritycon = types.SimpleNamespace(
            TOKEN_ADJUST_PRIVILEGES=0x20, TOKEN_QUERY=0x8, SE_PRIVILEGE_ENABLED=0x2
        )
        self.pywintypes = types.SimpleNamespace(error=Win32Error)
        self.audit_policy = types.SimpleNamespace(query=self._audit_query, set=self._audit_set)
        self.registry = types.SimpleNamespace(read_dword=self._read_dword, write_dword=self._write_dword)

    # -- win32evtlog
    def _evtlog(self) -> Any:
        def ids_of(query: str) -> set[int]:
            return {int(i) for i in re.findall(r"EventID=(\d+)", query)}

        def evt_query(path: str, flags: int, query: str) -> Results:
            assert path == "Security" and flags & 0x1 and flags & 0x200  # channel path, newest first
            return Results(self.log, ids_of(query), 0, reverse=True)

        def evt_subscribe(
            channel: str,
            flags: int,
            SignalEvent: Any = None,
            Query: Any = None,
            Bookmark: Any = None,
            **_: Any,
        ) -> Results:
            assert channel == "Security" and SignalEvent is not None
            if flags == 3:  # EvtSubscribeStartAfterBookmark (not strict: resumes at what is left)
                after = Bookmark.record_id or 0
            else:
                assert flags == 1  # EvtSubscribeToFutureEvents
                after = self.log.records[-1][0] if self.log.records else 0
            sub = Results(self.log, ids_of(Query), after, signal=SignalEvent)
            self.log.subscriptions.append(sub)
            return sub

        def evt_render(handle: Any, flags: int) -> str:
            if flags == 2:
                mark = f'<Bookmark Channel="Security" RecordId="{handle.record_id}"/>'
                return f"<BookmarkList>{mark}</BookmarkList>"
            assert flags == 1
            return str(handle.xml)

        def create_bookmark(xml: str | None = None) -> Bookmark:
            match = re.search(r'RecordId="(\d+)"', xml or "")
            return Bookmark(int(match.group(1)) if match else None)

        def update_bookmark(bookmark: Bookmark, event: EventHandle) -> Bookmark:
            bookmark.record_id = event.record_id
            return bookmark

        return types.SimpleNamespace(
            EvtQuery=evt_query,
            EvtNext=lambda results, count, timeout=-1, flags=0: results.next(count),
            EvtRender=evt_render,
            EvtSubscribe=evt_subscribe,
            EvtCreateBookmark=create_bookmark,
            EvtUpdateBookmark=update_bookmark,
            EvtQueryChannelPath=0x1,
            EvtQueryReverseDirection=0x200,
            EvtSubscribeToFutureEvents=1,
            EvtSubscribeStartAfterBookmark=3,
            EvtRenderEventXml=1,
            EvtRenderBookmark=2,
        )

    # -- win32security
    def _security(self) -> Any:
        def adjust(token: Any, disable_all: bool, privileges: list[tuple[str, int]]) -> tuple[()]:
            self.last_error = 0
            for luid, _attributes in privileges:
                if luid in self.held_privileges:
                    self.enabled_privileges.add(luid)
                else:
                    self.last_error = 1300  # ERROR_NOT_ALL_ASSIGNED: the call "succeeds"
            return ()

        def get_named(path: str, kind: int, info: int) -> Any:
            assert "SeSecurityPrivilege" in self.enabled_privileges, "SACL read without SeSecurityPrivilege"
            assert (kind, info) == (1, 0x8)  # SE_FILE_OBJECT, SACL_SECURITY_INFORMATION
            if path not in self.sacls:
                raise Win32Error(2, "GetNamedSecurityInfo", "The system cannot find the file specified.")
            acl = self.sacls[path]
            copy = Acl(acl.aces) if acl is not None else None
            return types.SimpleNamespace(GetSecurityDescriptorSacl=lambda: copy)

        def set_named(path: str, kind: int, info: int, owner: Any, group: Any, dacl: Any, sacl: Acl) -> None:
            assert "SeSecurityPrivilege" in self.enabled_privileges
            assert (kind, info, owner, group, dacl) == (1, 0x8, None, None, None)  # only the SACL
            self.sacls[path] = Acl(sacl.aces)

        return types.SimpleNamespace(
            OpenProcessToken=lambda process, access: "token",
            LookupPrivilegeValue=lambda system, name: name,
            AdjustTokenPrivileges=adjust,
            GetNamedSecurityInfo=get_named,
            SetNamedSecurityInfo=set_named,
            ACL=Acl,
            ConvertStringSidToSid=Sid,
            ConvertSidToStringSid=lambda sid: sid.text,
            SE_FILE_OBJECT=1,
            SACL_SECURITY_INFORMATION=0x8,
        )

    # -- advapi32 audit policy and the registry
    def _audit_query(self, guid: str) -> int:
        return 0 if guid in self.gpo_forced_off else self.audit.get(guid, 0)

    def _audit_set(self, guid: str, flags: int) -> None:
        self.set_calls.append(guid)
        self.audit[guid] = flags

    def _read_dword(self, key: str, name: str) -> int | None:
        return self.dwords.get((key, name))

    def _write_dword(self, key: str, name: str, value: int) -> None:
        self.dwords[(key, name)] = value

    def install(self, monkeypatch: Any, module: Any) -> None:
        """Put this surface in place of the real one in `module` (agent.sensors._eventlog_win32)."""
        for name in ("win32evtlog", "win32event", "win32security", "win32api", "ntsecuritycon", "pywintypes"):
            attr = {
                "win32evtlog": "evtlog",
                "win32event": "event",
                "win32security": "security",
                "win32api": "api",
            }
            monkeypatch.setattr(module, name, getattr(self, attr.get(name, name)), raising=False)
        monkeypatch.setattr(module, "audit_policy", self.audit_policy)
        monkeypatch.setattr(module, "registry", self.registry)


# ---- the service control surface (win32serviceutil, win32service, servicemanager) -----------------


class FakeServiceModules:
    """What a pywin32 service sees of the SCM: ServiceFramework's status reports, the event-log
    messages of servicemanager, and a dispatcher that runs the service like the SCM would."""

    SERVICE_STOPPED, SERVICE_START_PENDING, SERVICE_STOP_PENDING, SERVICE_RUNNING = 1, 2, 3, 4
    SERVICE_ACCEPT_STOP, SERVICE_ACCEPT_SHUTDOWN = 0x1, 0x4

    def __init__(self, *, console: bool = False) -> None:
        self.statuses: list[tuple[int, dict[str, int]]] = []
        self.messages: list[tuple[str, str]] = []
        self.console = console
        self.hosted: Any = None
        fake = self

        class ServiceFramework:
            def __init__(self, args: Any) -> None:
                self.args = args
                self.checkPoint = 0
                fake.statuses.append((fake.SERVICE_START_PENDING, {}))

            def GetAcceptedControls(self) -> int:
                return fake.SERVICE_ACCEPT_STOP

            def ReportServiceStatus(
                self, status: int, waitHint: int = 5000, win32ExitCode: int = 0, svcExitCode: int = 0
            ) -> None:
                self.checkPoint = (
                    0 if status in (fake.SERVICE_RUNNING, fake.SERVICE_STOPPED) else self.checkPoint + 1
                )
                details = {"waitHint": waitHint, "win32ExitCode": win32ExitCode, "svcExitCode": svcExitCode}
                fake.statuses.append((status, dict(details, checkPoint=self.checkPoint)))

        self.win32serviceutil = types.SimpleNamespace(ServiceFramework=ServiceFramework)
        self.service_config: dict[int, Any] = {}
        self.open_handles: set[str] = set()

        def open_manager(machine: Any, database: Any, access: int) -> str:
            assert access == 0x1  # SC_MANAGER_CONNECT: nothing more is needed
            self.open_handles.add("manager")
            return "manager"

        def open_service(manager: str, name: str, access: int) -> str:
            assert manager in self.open_handles and name == "TripkeyAgent"
            assert access & 0x2 and access & 0x10  # SERVICE_CHANGE_CONFIG, SERVICE_START (restart actions)
            self.open_handles.add("service")
            return "service"

        def change(handle: str, level: int, info: Any) -> None:
            assert handle == "service"
            self.service_config[level] = info

        self.win32service = types.SimpleNamespace(
            SERVICE_STOPPED=1, SERVICE_START_PENDING=2, SERVICE_STOP_PENDING=3, SERVICE_RUNNING=4,
            SERVICE_ACCEPT_STOP=0x1, SERVICE_ACCEPT_SHUTDOWN=0x4,
            SC_MANAGER_CONNECT=0x1, SERVICE_QUERY_CONFIG=0x1, SERVICE_CHANGE_CONFIG=0x2, SERVICE_START=0x10,
            SC_ACTION_RESTART=1, SERVICE_CONFIG_FAILURE_ACTIONS=2, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG=4,
            OpenSCManager=open_manager, OpenService=open_service, ChangeServiceConfig2=change,
            QueryServiceConfig2=lambda handle, level: self.service_config[level],
            CloseServiceHandle=self.open_handles.discard,
        )  # fmt: skip
        self.servicemanager = types.SimpleNamespace(
            Initialize=lambda: None,
            PrepareToHostSingle=self._prepare,
            StartServiceCtrlDispatcher=self._dispatch,
            LogInfoMsg=lambda text: self.messages.append(("info", text)),
            LogWarningMsg=lambda text: self.messages.append(("warning", text)),
            LogErrorMsg=lambda text: self.messages.append(("error", text)),
        )

    def _prepare(self, cls: type) -> None:
        self.hosted = cls

    def _dispatch(self) -> None:
        if self.console:  # not started by the SCM
            raise Win32Error(1063, "StartServiceCtrlDispatcher", "The service process could not connect.")
        service = self.hosted(["TripkeyAgent"])
        service.SvcDoRun()

    def status_names(self) -> list[int]:
        return [status for status, _ in self.statuses]


# ---- named pipes (win32pipe, win32file) and tokens, for the self-report transport -------------------


class _Handle:
    def __init__(self) -> None:
        self.closed = False

    def Close(self) -> None:
        self.closed = True


class _PipeEnd(_Handle):
    def __init__(self, pipe: _PipeInstance, server: bool) -> None:
        super().__init__()
        self.pipe, self.server = pipe, server

    def Close(self) -> None:
        super().Close()
        with self.pipe.lock:
            if self.server:
                self.pipe.server_closed = True
            else:
                self.pipe.client_closed = True


class _PipeInstance:
    def __init__(self, name: str, server_pid: int) -> None:
        self.name, self.server_pid = name, server_pid
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client_pid: int | None = None
        self.client_sid: str | None = None
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.client_closed = self.server_closed = False


class FakePipes:
    """Named pipes between "processes" of this test: the server runs as `server_sid`, each client
    connects as the account and pid the test gives (`client_sid`, `client_pid`)."""

    def __init__(self, server_sid: str = "S-1-5-18", server_pid: int = 4242) -> None:
        self.server_sid, self.server_pid = server_sid, server_pid
        self.client_sid, self.client_pid = "S-1-5-21-1-2-3-1109", 7777
        self.accounts = {"S-1-5-21-1-2-3-1109": ("alice", "CONTOSO"), "S-1-5-18": ("SYSTEM", "NT AUTHORITY")}
        self.instances: dict[str, list[_PipeInstance]] = {}
        self.foreign_names: set[str] = set()  # created by another process before the agent
        self.security_attributes: list[Any] = []
        self.impersonating = threading.local()
        self.reverted = 0
        self.win32pipe = types.SimpleNamespace(
            CreateNamedPipe=self._create, ConnectNamedPipe=self._connect, PeekNamedPipe=self._peek,
            DisconnectNamedPipe=lambda h: None, WaitNamedPipe=lambda name, ms: time.sleep(ms / 1000),
            GetNamedPipeClientProcessId=lambda h: h.pipe.client_pid,
            GetNamedPipeServerProcessId=lambda h: h.pipe.server_pid,
            PIPE_ACCESS_DUPLEX=0x3, PIPE_TYPE_BYTE=0, PIPE_READMODE_BYTE=0, PIPE_WAIT=0,
            PIPE_REJECT_REMOTE_CLIENTS=0x8, PIPE_UNLIMITED_INSTANCES=255,
        )  # fmt: skip
        self.win32file = types.SimpleNamespace(
            CreateFile=self._open, ReadFile=self._read, WriteFile=self._write,
            FlushFileBuffers=lambda h: None,
            GENERIC_READ=0x80000000, GENERIC_WRITE=0x40000000, OPEN_EXISTING=3,
        )  # fmt: skip
        self.win32security = types.SimpleNamespace(
            SECURITY_ATTRIBUTES=lambda: types.SimpleNamespace(SECURITY_DESCRIPTOR=None),
            ConvertStringSecurityDescriptorToSecurityDescriptor=lambda sddl, rev: ("SD", sddl),
            SDDL_REVISION_1=1,
            ImpersonateNamedPipeClient=self._impersonate,
            OpenThreadToken=self._thread_token,
            OpenProcessToken=lambda process, access: ("token", process.sid),
            GetTokenInformation=lambda token, cls: (Sid(token[1]), 0),
            RevertToSelf=self._revert,
            ConvertSidToStringSid=lambda sid: sid.text,
            LookupAccountSid=self._lookup,
            TokenUser=1,
        )  # fmt: skip
        self.win32api = types.SimpleNamespace(
            GetCurrentThread=lambda: -2, OpenProcess=self._open_process, CloseHandle=lambda h: None
        )
        self.ntsecuritycon = types.SimpleNamespace(TOKEN_QUERY=0x8)
        self.pywintypes = types.SimpleNamespace(error=Win32Error)

    def install(self, monkeypatch: Any, module: Any) -> None:
        for name in ("win32pipe", "win32file", "win32security", "win32api", "ntsecuritycon", "pywintypes"):
            monkeypatch.setattr(module, name, getattr(self, name), raising=False)

    # server side
    def _create(
        self, name: str, mode: int, kind: int, count: int, out: int, inp: int, timeout: int, sa: Any
    ) -> Any:
        if mode & 0x00080000 and (name in self.foreign_names or self.instances.get(name)):
            raise Win32Error(5, "CreateNamedPipe", "Access is denied.")
        self.security_attributes.append(sa)
        pipe = _PipeInstance(name, self.server_pid)
        self.instances.setdefault(name, []).append(pipe)
        return _PipeEnd(pipe, server=True)

    def _connect(self, handle: _PipeEnd, overlapped: Any) -> int:
        handle.pipe.connected.wait()
        return 0

    # client side
    def _open(
        self, name: str, access: int, share: int, sa: Any, disposition: int, flags: int, template: Any
    ) -> Any:
        for pipe in self.instances.get(name, []):
            if not pipe.connected.is_set() and not pipe.server_closed:
                pipe.client_pid, pipe.client_sid = self.client_pid, self.client_sid
                pipe.client_flags = flags
                pipe.connected.set()
                return _PipeEnd(pipe, server=False)
        if self.instances.get(name):
            raise Win32Error(231, "CreateFile", "All pipe instances are busy.")
        raise Win32Error(2, "CreateFile", "The system cannot find the file specified.")

    def _peek(self, handle: _PipeEnd, size: int) -> tuple[str, int, int]:
        pipe = handle.pipe
        with pipe.lock:
            buffer = pipe.to_server if handle.server else pipe.to_client
            other_closed = pipe.client_closed if handle.server else pipe.server_closed
            if not buffer and other_closed:
                raise Win32Error(109, "PeekNamedPipe", "The pipe has been ended.")
            return "", len(buffer), 0

    def _read(self, handle: _PipeEnd, size: int) -> tuple[int, bytes]:
        pipe = handle.pipe
        with pipe.lock:
            buffer = pipe.to_server if handle.server else pipe.to_client
            data = bytes(buffer[:size])
            del buffer[:size]
        return 0, data

    def _write(self, handle: _PipeEnd, data: bytes) -> tuple[int, int]:
        pipe = handle.pipe
        with pipe.lock:
            (pipe.to_client if handle.server else pipe.to_server).extend(data)
        return 0, len(data)

    # tokens
    def _impersonate(self, handle: _PipeEnd) -> None:
        self.impersonating.sid = handle.pipe.client_sid

    def _thread_token(self, thread: int, access: int, as_self: bool) -> tuple[str, str]:
        sid = getattr(self.impersonating, "sid", None)
        assert sid is not None, "OpenThreadToken without impersonation"
        return ("token", sid)

    def _revert(self) -> None:
        self.impersonating.sid = None
        self.reverted += 1

    def _lookup(self, system: Any, sid: Sid) -> tuple[str, str, int]:
        if sid.text not in self.accounts:
            raise Win32Error(
                1332, "LookupAccountSid", "No mapping between account names and security IDs was done."
            )
        name, domain = self.accounts[sid.text]
        return name, domain, 1

    def _open_process(self, access: int, inherit: bool, pid: int) -> Any:
        assert pid == self.server_pid
        return types.SimpleNamespace(sid=self.server_sid)
