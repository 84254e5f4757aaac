"""Win32 plumbing of the eventlog sensor: privilege, audit ACEs, audit policy, the Security log.

Everything goes through Win32 APIs, nothing through a shell: pywin32's win32security (token
privileges, SACLs), win32evtlog (EvtSubscribe/EvtNext/EvtRender/EvtQuery, bookmarks), win32event,
winreg, and advapi32's AuditQuerySystemPolicy/AuditSetSystemPolicy through ctypes (pywin32 does not
wrap them). Those modules are this module's globals, imported on Windows only; the contract tests
replace exactly them with a fake of that surface (tests/support/win32.py), so the logic below runs
on Linux CI while the OS boundary itself can only run on Windows (the CI job on a Windows runner).
"""

from __future__ import annotations

import ctypes
import dataclasses
import uuid
from typing import TYPE_CHECKING, Any

from agent import osflags

if TYPE_CHECKING or osflags.WINDOWS:
    import ntsecuritycon
    import pywintypes
    import win32api
    import win32event
    import win32evtlog
    import win32security

EVERYONE_SID = "S-1-1-0"
CHANNEL = "Security"
# Audit subcategory GUIDs (their names are localised, the GUIDs are not).
FILE_SYSTEM = "0cce921d-69ae-11d9-bed3-505054503030"
PROCESS_CREATION = "0cce922b-69ae-11d9-bed3-505054503030"
PROCESS_TERMINATION = "0cce922c-69ae-11d9-bed3-505054503030"
SUBCATEGORIES = {
    FILE_SYSTEM: "File System",
    PROCESS_CREATION: "Process Creation",
    PROCESS_TERMINATION: "Process Termination",
}
POLICY_AUDIT_EVENT_SUCCESS = 0x1
CMDLINE_KEY = r"SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System\Audit"
CMDLINE_VALUE = "ProcessCreationIncludeCmdLine_Enabled"
# Audit ACE on a planted file's folder: Everyone, ReadData, success, on the files in it only.
OBJECT_INHERIT_ACE, INHERIT_ONLY_ACE, SUCCESSFUL_ACCESS_ACE_FLAG = 0x1, 0x8, 0x40
SYSTEM_AUDIT_ACE_TYPE, FILE_READ_DATA, ACL_REVISION_DS = 0x2, 0x1, 4
ACE_FLAGS = OBJECT_INHERIT_ACE | INHERIT_ONLY_ACE
# Win32 error codes the subscription handles.
ERROR_NO_MORE_ITEMS, ERROR_TIMEOUT, ERROR_NOT_ALL_ASSIGNED = 259, 1460, 1300
ERROR_EVT_QUERY_RESULT_STALE, ERROR_EVT_QUERY_RESULT_INVALID_POSITION = 15011, 15012


class Win32SetupError(Exception):
    """An audit setting could not be made (the message names it and the Win32 error)."""


class LogReset(Exception):
    """The Security log was cleared or overwritten under the subscription: events were lost."""


def _winerror(exc: BaseException) -> int | None:
    return getattr(exc, "winerror", None)


# ---- privilege --------------------------------------------------------------------------------


def enable_privilege(name: str = "SeSecurityPrivilege") -> None:
    """Enable `name` in this process's token; SeSecurityPrivilege is needed to read or write SACLs."""
    access = ntsecuritycon.TOKEN_ADJUST_PRIVILEGES | ntsecuritycon.TOKEN_QUERY
    token = win32security.OpenProcessToken(win32api.GetCurrentProcess(), access)
    luid = win32security.LookupPrivilegeValue(None, name)  # type: ignore[arg-type]
    # pywin32 takes the new state as a sequence of (LUID, attributes); the stubs name its C type.
    new_state = [(luid, ntsecuritycon.SE_PRIVILEGE_ENABLED)]
    win32security.AdjustTokenPrivileges(token, False, new_state)  # type: ignore[arg-type]
    if win32api.GetLastError() == ERROR_NOT_ALL_ASSIGNED:
        raise Win32SetupError(f"the agent's token does not hold {name} (run the service as LocalSystem)")


# ---- audit ACE on a folder --------------------------------------------------------------------


def _sacl(folder: str) -> Any:
    descriptor = win32security.GetNamedSecurityInfo(
        folder, win32security.SE_FILE_OBJECT, win32security.SACL_SECURITY_INFORMATION
    )
    return descriptor.GetSecurityDescriptorSacl()


def _our_aces(sacl: Any) -> list[int]:
    """Indexes of our ACE in `sacl` (an explicit one: inherited copies are the parent's)."""
    found = []
    for index in range(sacl.GetAceCount() if sacl is not None else 0):
        (ace_type, flags), mask, sid = sacl.GetAce(index)[:3]
        if (
            ace_type == SYSTEM_AUDIT_ACE_TYPE
            and flags & ~SUCCESSFUL_ACCESS_ACE_FLAG == ACE_FLAGS
            and flags & SUCCESSFUL_ACCESS_ACE_FLAG
            and mask == FILE_READ_DATA
            and win32security.ConvertSidToStringSid(sid) == EVERYONE_SID
        ):
            found.append(index)
    return found


def has_audit_ace(folder: str) -> bool:
    return bool(_our_aces(_sacl(folder)))


def add_audit_ace(folder: str) -> bool:
    """Add "Everyone: ReadData, success, files only" to the folder's SACL; False if already there."""
    sacl = _sacl(folder)
    if _our_aces(sacl):
        return False
    if sacl is None:
        sacl = win32security.ACL()
    everyone = win32security.ConvertStringSidToSid(EVERYONE_SID)
    sacl.AddAuditAccessAceEx(ACL_REVISION_DS, ACE_FLAGS, FILE_READ_DATA, everyone, True, False)
    _set_sacl(folder, sacl)
    return True


def remove_audit_ace(folder: str) -> bool:
    sacl = _sacl(folder)
    indexes = _our_aces(sacl)
    for index in reversed(indexes):
        sacl.DeleteAce(index)
    if indexes:
        _set_sacl(folder, sacl)
    return bool(indexes)


def _set_sacl(folder: str, sacl: Any) -> None:
    win32security.SetNamedSecurityInfo(
        folder, win32security.SE_FILE_OBJECT, win32security.SACL_SECURITY_INFORMATION, None, None, None, sacl
    )


# ---- audit policy -----------------------------------------------------------------------------


class _PolicyInformation(ctypes.Structure):
    _fields_ = (  # AUDIT_POLICY_INFORMATION
        ("subcategory", ctypes.c_byte * 16),
        ("auditing", ctypes.c_ulong),
        ("category", ctypes.c_byte * 16),
    )


@dataclasses.dataclass
class AuditPolicyApi:
    """advapi32's system audit policy, per subcategory GUID (needs SeSecurityPrivilege)."""

    def query(self, guid: str) -> int:
        if not osflags.WINDOWS:
            raise OSError("the audit policy exists only on Windows")
        advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
        wanted = (ctypes.c_byte * 16).from_buffer_copy(uuid.UUID(guid).bytes_le)
        result = ctypes.POINTER(_PolicyInformation)()
        if not advapi32.AuditQuerySystemPolicy(ctypes.byref(wanted), 1, ctypes.byref(result)):
            raise ctypes.WinError(ctypes.get_last_error())
        try:
            return int(result.contents.auditing)
        finally:
            advapi32.AuditFree(result)

    def set(self, guid: str, auditing: int) -> None:
        if not osflags.WINDOWS:
            raise OSError("the audit policy exists only on Windows")
        advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
        info = _PolicyInformation()
        info.subcategory = (ctypes.c_byte * 16).from_buffer_copy(uuid.UUID(guid).bytes_le)
        info.auditing = auditing
        if not advapi32.AuditSetSystemPolicy(ctypes.byref(info), 1):
            raise ctypes.WinError(ctypes.get_last_error())


audit_policy: Any = AuditPolicyApi()


def subcategories_off() -> list[str]:
    """Names of the subcategories whose success auditing is off now."""
    return [
        name
        for guid, name in SUBCATEGORIES.items()
        if not audit_policy.query(guid) & POLICY_AUDIT_EVENT_SUCCESS
    ]


def enable_subcategories() -> None:
    """Turn success auditing on (keeping failure auditing as it is) and check that it took."""
    for guid, name in SUBCATEGORIES.items():
        current = audit_policy.query(guid)
        if not current & POLICY_AUDIT_EVENT_SUCCESS:
            try:
                audit_policy.set(guid, current | POLICY_AUDIT_EVENT_SUCCESS)
            except OSError as exc:
                raise Win32SetupError(f"cannot enable success auditing of {name!r}: {exc}") from exc
    still_off = subcategories_off()
    if still_off:
        raise Win32SetupError(f"success auditing of {', '.join(still_off)} stays off after setting it")


# ---- command lines in 4688 --------------------------------------------------------------------


class RegistryApi:
    """REG_DWORD values under HKLM through winreg (64-bit view)."""

    def read_dword(self, key: str, name: str) -> int | None:
        if not osflags.WINDOWS:
            raise OSError("the registry exists only on Windows")
        import winreg

        access = winreg.KEY_READ | winreg.KEY_WOW64_64KEY
        try:
            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, key, 0, access) as handle:
                value, kind = winreg.QueryValueEx(handle, name)
        except FileNotFoundError:
            return None
        return value if kind == winreg.REG_DWORD else None

    def write_dword(self, key: str, name: str, value: int) -> None:
        if not osflags.WINDOWS:
            raise OSError("the registry exists only on Windows")
        import winreg

        access = winreg.KEY_SET_VALUE | winreg.KEY_WOW64_64KEY
        with winreg.CreateKeyEx(winreg.HKEY_LOCAL_MACHINE, key, 0, access) as handle:
            winreg.SetValueEx(handle, name, 0, winreg.REG_DWORD, value)


registry: Any = RegistryApi()


def cmdline_policy_enabled() -> bool:
    return registry.read_dword(CMDLINE_KEY, CMDLINE_VALUE) == 1


def enable_cmdline_policy() -> None:
    try:
        registry.write_dword(CMDLINE_KEY, CMDLINE_VALUE, 1)
    except OSError as exc:
        raise Win32SetupError(f"cannot set {CMDLINE_VALUE} (command lines in 4688): {exc}") from exc
    if not cmdline_policy_enabled():
        raise Win32SetupError(f"{CMDLINE_VALUE} stays off after setting it")


# ---- the Security log -------------------------------------------------------------------------


def query_xpath(event_ids: tuple[int, ...]) -> str:
    return "*[System[(" + " or ".join(f"EventID={i}" for i in event_ids) + ")]]"


def recent_events(xpath: str, count: int) -> list[str]:
    """Up to `count` matching events as XML, newest first (EvtQuery, reverse direction)."""
    flags = win32evtlog.EvtQueryChannelPath | win32evtlog.EvtQueryReverseDirection
    results = win32evtlog.EvtQuery(CHANNEL, flags, xpath)
    out: list[str] = []
    while len(out) < count:
        handles = _next(results, min(256, count - len(out)), timeout_ms=1000)
        if not handles:
            break
        out.extend(win32evtlog.EvtRender(h, win32evtlog.EvtRenderEventXml) for h in handles)
    return out


def _next(results: Any, count: int, timeout_ms: int) -> tuple[Any, ...]:
    try:
        return win32evtlog.EvtNext(results, count, timeout_ms)
    except pywintypes.error as exc:
        if _winerror(exc) in (ERROR_NO_MORE_ITEMS, ERROR_TIMEOUT):
            return ()
        if _winerror(exc) in (ERROR_EVT_QUERY_RESULT_STALE, ERROR_EVT_QUERY_RESULT_INVALID_POSITION):
            raise LogReset(str(exc)) from exc
        raise


class Subscription:
    """A pull subscription to the Security log (EvtSubscribe with a signal event), with a bookmark
    so that after a reset it resumes right after the last event read."""

    def __init__(self, xpath: str, bookmark_xml: str | None = None) -> None:
        self.xpath = xpath
        self.bookmark = win32evtlog.EvtCreateBookmark(bookmark_xml)
        self.resumed = bookmark_xml is not None
        self.signal = win32event.CreateEvent(None, False, False, None)
        flags = (
            win32evtlog.EvtSubscribeStartAfterBookmark
            if self.resumed
            else win32evtlog.EvtSubscribeToFutureEvents
        )
        self.handle: Any = win32evtlog.EvtSubscribe(
            CHANNEL,
            flags,
            SignalEvent=self.signal,
            Query=xpath,
            Bookmark=self.bookmark if self.resumed else None,
        )

    def wait(self, timeout_ms: int) -> None:
        win32event.WaitForSingleObject(self.signal, timeout_ms)

    def next_batch(self, count: int) -> list[str]:
        """Up to `count` new events as XML (oldest first); the bookmark moves past them."""
        handles = _next(self.handle, count, timeout_ms=0)
        out = [win32evtlog.EvtRender(h, win32evtlog.EvtRenderEventXml) for h in handles]
        if handles:
            win32evtlog.EvtUpdateBookmark(self.bookmark, handles[-1])
        return out

    def bookmark_xml(self) -> str:
        return str(win32evtlog.EvtRender(self.bookmark, win32evtlog.EvtRenderBookmark))

    def close(self) -> None:
        for handle in (self.handle, self.signal):
            close = getattr(handle, "Close", None)
            if close is not None:
                close()


__all__ = [
    "LogReset",
    "Subscription",
    "Win32SetupError",
    "add_audit_ace",
    "cmdline_policy_enabled",
    "enable_cmdline_policy",
    "enable_privilege",
    "enable_subcategories",
    "has_audit_ace",
    "query_xpath",
    "recent_events",
    "remove_audit_ace",
    "subcategories_off",
]
