"""Windows backend: a SACL on each planted file's folder + Security log events 4663 and 4688.

What start() does (as SYSTEM / an administrator; runs only on Windows, untestable on Linux CI):

1. Audit policy: turns on success auditing of the "File System" (4663), "Process Creation" (4688)
   and "Process Termination" (4689) subcategories with `auditpol`, by GUID because the names are
   localised, and sets ProcessCreationIncludeCmdLine_Enabled=1 so 4688 carries the command line.
2. SACL: adds to each planted file's folder an inheritable audit ACE "Everyone (S-1-1-0):
   ReadData, Success, files only" with PowerShell's Get-Acl/Set-Acl. On the folder because the
   planter replaces the file atomically (temp file + rename) and a new file inherits the folder's
   ACEs; other files of the folder are audited too and filtered out by path here.
3. Polls the Security log with `wevtutil qe Security /q:XPATH /f:xml /e:Events` for records after
   the last one seen (EventRecordID bookmark), every `poll_interval` seconds; the process table
   is seeded from recent 4688 events so readers started before the agent have a command line.

Losses are reported, never hidden: if the log's oldest record is past our bookmark (the log
wrapped before we read it) the gap counts as lost events; a cleared log (1102) is an error.
Parsing and the 4663/4688 join are pure (eventlog_parse) and tested on fixtures.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import logging
import ntpath
import os
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from typing import ClassVar

from agent import osflags
from agent.sensors._eventlog_parse import (
    EVENT_ACCESS,
    EVENT_PROCESS_EXIT,
    EVENT_PROCESS_START,
    EventLogCorrelator,
    EventLogParseError,
    parse_events_xml,
    parse_log_info,
)
from agent.sensors.base import (
    AFTER_THE_FACT,
    Capabilities,
    ReadCallback,
    Sensor,
    SensorError,
    SensorHealth,
    SensorUnavailable,
)

log = logging.getLogger(__name__)

UNAVAILABLE_OS = "the eventlog sensor is only available on Windows (Security log events 4663/4688)"
EVENT_LOG_CLEARED = 1102
READ_FAILED = "reading the Security log failed"
# auditpol subcategory GUIDs (names are localised, GUIDs are not).
SUBCATEGORY_FILE_SYSTEM = "{0CCE921D-69AE-11D9-BED3-505054503030}"
SUBCATEGORY_PROCESS_CREATION = "{0CCE922B-69AE-11D9-BED3-505054503030}"
SUBCATEGORY_PROCESS_TERMINATION = "{0CCE922C-69AE-11D9-BED3-505054503030}"
CMDLINE_POLICY_KEY = r"SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System\Audit"
CMDLINE_POLICY_VALUE = "ProcessCreationIncludeCmdLine_Enabled"
WATCHED_IDS = (EVENT_ACCESS, EVENT_PROCESS_START, EVENT_PROCESS_EXIT, EVENT_LOG_CLEARED)


def query_xpath(after_record: int | None, event_ids: Sequence[int] = WATCHED_IDS) -> str:
    ids = " or ".join(f"EventID={i}" for i in event_ids)
    after = f" and EventRecordID>{after_record}" if after_record is not None else ""
    return f"*[System[({ids}){after}]]"


def wevtutil_query(
    after_record: int | None, count: int, newest_first: bool = False, event_ids: Sequence[int] = WATCHED_IDS
) -> list[str]:
    return [
        "wevtutil",
        "qe",
        "Security",
        f"/q:{query_xpath(after_record, event_ids)}",
        "/f:xml",
        "/e:Events",
        f"/c:{count}",
        f"/rd:{'true' if newest_first else 'false'}",
    ]


def newest_record(info: dict[str, str]) -> int:
    """Newest EventRecordID from `wevtutil gli` (oldestRecordNumber + numberOfLogRecords - 1)."""
    try:
        oldest, count = int(info["oldestRecordNumber"]), int(info["numberOfLogRecords"])
    except (KeyError, ValueError) as exc:
        raise SensorError(f"wevtutil gli Security did not report the record range: {info}") from exc
    return max(0, oldest + count - 1) if count else max(0, oldest - 1)


def powershell(script: str) -> list[str]:
    """Run `script` with -EncodedCommand (UTF-16LE base64): no command-line quoting to get wrong."""
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return [
        "powershell",
        "-NoProfile",
        "-NonInteractive",
        "-ExecutionPolicy",
        "Bypass",
        "-EncodedCommand",
        encoded,
    ]


def decode_output(raw: bytes) -> str:
    """wevtutil/auditpol output: UTF-16 with a BOM, UTF-8, or else the OEM code page."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    if raw.startswith(codecs.BOM_UTF8):
        return raw[3:].decode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("oem" if osflags.WINDOWS else "latin-1", errors="replace")


def _ps_quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def sacl_script(folder: str, remove: bool = False) -> str:
    """PowerShell that adds (or removes) our audit ACE on `folder` (needs SeSecurityPrivilege)."""
    method = "RemoveAuditRuleSpecific" if remove else "AddAuditRule"
    return (
        "$ErrorActionPreference = 'Stop'\n"
        f"$path = {_ps_quote(folder)}\n"
        "$acl = Get-Acl -LiteralPath $path -Audit\n"
        "$everyone = New-Object System.Security.Principal.SecurityIdentifier('S-1-1-0')\n"
        "$rule = New-Object System.Security.AccessControl.FileSystemAuditRule("
        "$everyone, 'ReadData', 'ObjectInherit', 'InheritOnly', 'Success')\n"
        f"$acl.{method}($rule)\n"
        "Set-Acl -LiteralPath $path -AclObject $acl\n"
    )


class EventLogSensor(Sensor):
    name = "eventlog"
    mode = "security-log"
    capabilities: ClassVar[Capabilities] = AFTER_THE_FACT

    def __init__(
        self,
        paths: Iterable[str],
        callback: ReadCallback,
        *,
        poll_interval: float = 1.0,
        batch: int = 500,
        seed_processes: int = 5000,
        skip_pids: Iterable[int] = (),
    ) -> None:
        super().__init__(paths, callback)
        self.poll_interval = poll_interval
        self.batch = batch
        self.seed_processes = seed_processes
        self.correlator = EventLogCorrelator(self.paths, skip_pids={os.getpid(), *skip_pids})
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bookmark: int | None = None
        self._folders: set[str] = set()
        self._lost = 0
        self._error: str | None = None
        self._started = False

    @classmethod
    def check_available(cls) -> str | None:
        if not osflags.WINDOWS:
            return UNAVAILABLE_OS
        import ctypes

        if not ctypes.windll.shell32.IsUserAnAdmin():
            return "the eventlog sensor needs administrator rights (run the agent service as LocalSystem)"
        for tool in ("wevtutil", "auditpol", "powershell"):
            if shutil.which(tool) is None:
                return f"{tool}.exe not found on PATH (it ships with Windows)"
        return None

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        problem = self.check_available()
        if problem:
            raise SensorUnavailable(problem)
        try:
            self._enable_audit_policy()
            for folder in sorted(self._wanted_folders()):
                self._set_sacl(folder)
            self._bookmark = self._newest_record()
            self._seed_process_table()
        except (SensorError, OSError) as exc:
            self._remove_sacls()
            raise SensorUnavailable(f"cannot set up Windows auditing: {exc}") from exc
        self._stop.clear()
        self._started = True
        self._thread = threading.Thread(target=self._poll_loop, name="eventlog-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._started:
            self._remove_sacls()
        self._started = False

    def set_paths(self, paths: Iterable[str]) -> None:
        self.paths = frozenset(paths)
        with self._lock:
            self.correlator.set_paths(self.paths)
        if self._started:
            wanted = self._wanted_folders()
            for folder in sorted(self._folders - wanted):
                self._remove_sacl(folder)
            for folder in sorted(wanted - self._folders):
                try:
                    self._set_sacl(folder)
                except (SensorError, OSError) as exc:
                    self._error = str(exc)

    def health(self) -> SensorHealth:
        alive = self._started and self._thread is not None and self._thread.is_alive()
        return SensorHealth(
            name=self.name,
            mode=self.mode,
            healthy=alive and self._error is None,
            error=self._error if self._started else (self._error or "not started"),
            lost_events=self._lost + self.correlator.malformed,
        )

    # ---- Windows plumbing ---------------------------------------------------------------------

    def _run(self, args: list[str], timeout: float = 60) -> str:
        result = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
        if result.returncode != 0:
            detail = decode_output(result.stderr or result.stdout).strip()
            raise SensorError(f"{args[0]} {args[1]} failed: {detail}")
        return decode_output(result.stdout)

    def _enable_audit_policy(self) -> None:
        for guid in (SUBCATEGORY_FILE_SYSTEM, SUBCATEGORY_PROCESS_CREATION, SUBCATEGORY_PROCESS_TERMINATION):
            self._run(["auditpol", "/set", f"/subcategory:{guid}", "/success:enable"])
        if not osflags.WINDOWS:
            raise SensorError("the process-creation command-line policy exists only on Windows")
        import winreg

        with winreg.CreateKeyEx(
            winreg.HKEY_LOCAL_MACHINE, CMDLINE_POLICY_KEY, 0, winreg.KEY_SET_VALUE
        ) as key:
            winreg.SetValueEx(key, CMDLINE_POLICY_VALUE, 0, winreg.REG_DWORD, 1)

    def _wanted_folders(self) -> set[str]:
        return {ntpath.dirname(ntpath.abspath(p)) for p in self.paths}

    def _set_sacl(self, folder: str) -> None:
        self._run(powershell(sacl_script(folder)))
        self._folders.add(folder)

    def _remove_sacl(self, folder: str) -> None:
        try:
            self._run(powershell(sacl_script(folder, remove=True)))
        except (SensorError, OSError) as exc:
            log.warning("could not remove the audit ACE from %s: %s", folder, exc)
        self._folders.discard(folder)

    def _remove_sacls(self) -> None:
        for folder in sorted(self._folders):
            self._remove_sacl(folder)

    def _query(
        self,
        after: int | None,
        count: int,
        newest_first: bool = False,
        event_ids: Sequence[int] = WATCHED_IDS,
    ) -> str:
        return self._run(wevtutil_query(after, count, newest_first, event_ids))

    def _newest_record(self) -> int:
        """The bookmark to start from: the newest record now, whatever its event id."""
        return newest_record(parse_log_info(self._run(["wevtutil", "gli", "Security"])))

    def _seed_process_table(self) -> None:
        text = self._query(None, self.seed_processes, newest_first=True, event_ids=(EVENT_PROCESS_START,))
        events, _ = parse_events_xml(text)
        for event in reversed(events):  # oldest first, so the newest start of a reused pid wins
            self.correlator.handle(event)

    def _check_wrap(self) -> None:
        """Records between our bookmark and the oldest still in the log were overwritten unread."""
        if self._bookmark is None:
            return
        info = parse_log_info(self._run(["wevtutil", "gli", "Security"]))
        with contextlib.suppress(KeyError, ValueError):
            oldest = int(info["oldestRecordNumber"])
            if oldest > self._bookmark + 1:
                self._lost += oldest - self._bookmark - 1  # an upper bound: other events count too
                self._error = "the Security log wrapped before the agent read it; enlarge it (wevtutil sl)"
                self._bookmark = oldest - 1

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                # Every poll, before reading: a wrap is only visible before the bookmark moves past
                # it (other event ids make record-id gaps normal, so only `gli` can tell).
                self._check_wrap()
                while not self._stop.is_set() and self._poll_once() >= self.batch:
                    pass
                if self._error and self._error.startswith(READ_FAILED):
                    self._error = None  # recovered; losses (wrap, clear) stay reported
            except (SensorError, OSError, subprocess.TimeoutExpired) as exc:
                self._error = f"{READ_FAILED}: {exc}"
                log.error("%s", self._error)

    def _poll_once(self) -> int:
        try:
            events, errors = parse_events_xml(self._query(self._bookmark, self.batch))
        except EventLogParseError as exc:
            self._lost += 1
            raise SensorError(str(exc)) from exc
        self._lost += len(errors)
        for event in sorted(events, key=lambda e: e.record_id or 0):
            if event.record_id is not None:
                self._bookmark = max(self._bookmark or 0, event.record_id)
            if event.event_id == EVENT_LOG_CLEARED:
                self._error = "the Security log was cleared: reads before this moment may be missing"
                continue
            with self._lock:
                read = self.correlator.handle(event)
            if read is not None:
                try:
                    self.callback(read)
                except Exception:
                    log.exception("read callback failed")
        return len(events)


EventlogSensor = EventLogSensor  # both spellings: the registry and the brief differ in case

__all__ = [
    "EventLogSensor",
    "EventlogSensor",
    "decode_output",
    "newest_record",
    "powershell",
    "query_xpath",
    "sacl_script",
    "wevtutil_query",
]
