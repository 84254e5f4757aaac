"""Windows backend: an audit ACE on each planted file's folder + Security log events 4663 and 4688.

What start() does (as LocalSystem; the Win32 calls are in eventlog_win32):

1. Enables SeSecurityPrivilege in the agent's token (SACLs and the audit policy need it).
2. Audit policy: turns on success auditing of the "File System" (4663), "Process Creation" (4688)
   and "Process Termination" (4689) subcategories (AuditSetSystemPolicy, by GUID) and
   ProcessCreationIncludeCmdLine_Enabled=1 so 4688 carries the command line; checks both took.
3. SACL: adds to each planted file's folder the inheritable audit ACE "Everyone (S-1-1-0):
   ReadData, success, files only (inherit-only)". On the folder because the planter replaces the
   file atomically (temp file + rename) and the new file inherits the folder's ACE; other files of
   the folder are audited too and filtered out by path here.
4. Seeds the process table from recent 4688 events (EvtQuery, newest first) so readers started
   before the agent have a command line, then subscribes to the Security log (EvtSubscribe with a
   signal event and a bookmark): no polling, no gap between reads.

Losses and tampering are reported, never hidden: 1102 ("the audit log was cleared") is itself a
tamper signal and makes the sensor unhealthy with who cleared it and when; a subscription made
stale by a clear or by the log overwriting unread events is counted as lost and resumed after the
bookmark. Every `policy_interval` seconds the audit policy and the command-line setting are checked
again: a Group Policy (domain or local) that turns them back off is reported loudly, as are
process-creation events that arrive without command lines. Parsing and the 4663/4688 join are
pure (eventlog_parse).
"""

from __future__ import annotations

import logging
import ntpath
import os
import threading
import time
from collections.abc import Iterable
from typing import Any, ClassVar

from agent import osflags
from agent.clock import to_iso
from agent.sensors import _eventlog_win32 as win32
from agent.sensors._eventlog_parse import (
    EVENT_ACCESS,
    EVENT_LOG_CLEARED,
    EVENT_PROCESS_EXIT,
    EVENT_PROCESS_START,
    EventLogCorrelator,
    EventLogParseError,
    parse_events_xml,
    subject_user,
)
from agent.sensors.base import (
    AFTER_THE_FACT,
    Capabilities,
    ReadCallback,
    Sensor,
    SensorHealth,
    SensorUnavailable,
)

log = logging.getLogger(__name__)

UNAVAILABLE_OS = "the eventlog sensor is only available on Windows (Security log events 4663/4688)"
READ_FAILED = "reading the Security log failed"
WATCHED_IDS = (EVENT_ACCESS, EVENT_PROCESS_START, EVENT_PROCESS_EXIT, EVENT_LOG_CLEARED)
GPO_HINT = (
    "a Group Policy (Advanced Audit Policy Configuration, or 'Include command line in process "
    "creation events') overrides the agent's setting: enable it in that policy"
)
MIN_STARTS_FOR_CMDLINE_CHECK = 5


class EventLogSensor(Sensor):
    name = "eventlog"
    mode = "security-log"
    capabilities: ClassVar[Capabilities] = AFTER_THE_FACT

    def __init__(
        self,
        paths: Iterable[str],
        callback: ReadCallback,
        *,
        batch: int = 256,
        seed_processes: int = 5000,
        policy_interval: float = 300.0,
        wait_ms: int = 500,
        skip_pids: Iterable[int] = (),
    ) -> None:
        super().__init__(paths, callback)
        self.batch = batch
        self.seed_processes = seed_processes
        self.policy_interval = policy_interval
        self.wait_ms = wait_ms
        self.correlator = EventLogCorrelator(self.paths, skip_pids={os.getpid(), *skip_pids})
        self.xpath = win32.query_xpath(WATCHED_IDS)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscription: Any = None
        self._bookmark: str | None = None
        self._folders: set[str] = set()
        self._lost = 0
        self._error: str | None = None  # reading failed, or tampering (1102, log reset)
        self._policy_error: str | None = None  # a policy the agent set was turned off again
        self._started = False
        self.log_clears = 0
        self._checked_starts = (0, 0)

    @classmethod
    def check_available(cls) -> str | None:
        if not osflags.WINDOWS:
            return UNAVAILABLE_OS
        import ctypes

        if not ctypes.windll.shell32.IsUserAnAdmin():
            return "the eventlog sensor needs administrator rights (run the agent service as LocalSystem)"
        try:
            import win32evtlog  # noqa: F401
        except ImportError as exc:
            return f"pywin32 is missing from this agent build ({exc})"
        return None

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        problem = self.check_available()
        if problem:
            raise SensorUnavailable(problem)
        try:
            win32.enable_privilege("SeSecurityPrivilege")
            win32.enable_subcategories()
            win32.enable_cmdline_policy()
            for folder in sorted(self._wanted_folders()):
                self._add_ace(folder)
            self._seed_process_table()
            self._subscription = win32.Subscription(self.xpath)
        except (win32.Win32SetupError, win32.LogReset, OSError, EventLogParseError) as exc:
            self._remove_aces()
            raise SensorUnavailable(f"cannot set up Windows auditing: {exc}") from exc
        except Exception as exc:  # pywintypes.error is not an OSError
            self._remove_aces()
            raise SensorUnavailable(f"cannot set up Windows auditing: {exc}") from exc
        self._stop.clear()
        self._started = True
        self._thread = threading.Thread(target=self._loop, name="eventlog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        if self._started:
            self._remove_aces()
        self._started = False

    def set_paths(self, paths: Iterable[str]) -> None:
        self.paths = frozenset(paths)
        with self._lock:
            self.correlator.set_paths(self.paths)
        if self._started:
            wanted = self._wanted_folders()
            for folder in sorted(self._folders - wanted):
                self._remove_ace(folder)
            for folder in sorted(wanted - self._folders):
                try:
                    self._add_ace(folder)
                except Exception as exc:
                    self._error = f"cannot add the audit ACE to {folder}: {exc}"

    def health(self) -> SensorHealth:
        alive = self._started and self._thread is not None and self._thread.is_alive()
        error = self._error or self._policy_error
        return SensorHealth(
            name=self.name,
            mode=self.mode,
            healthy=alive and error is None,
            error=error if self._started else (error or "not started"),
            lost_events=self._lost + self.correlator.malformed,
        )

    # ---- audit ACEs ---------------------------------------------------------------------------

    def _wanted_folders(self) -> set[str]:
        return {ntpath.dirname(ntpath.abspath(p)) for p in self.paths}

    def _add_ace(self, folder: str) -> None:
        win32.add_audit_ace(folder)
        self._folders.add(folder)

    def _remove_ace(self, folder: str) -> None:
        try:
            win32.remove_audit_ace(folder)
        except Exception as exc:
            log.warning("could not remove the audit ACE from %s: %s", folder, exc)
        self._folders.discard(folder)

    def _remove_aces(self) -> None:
        for folder in sorted(self._folders):
            self._remove_ace(folder)

    # ---- events -------------------------------------------------------------------------------

    def _seed_process_table(self) -> None:
        newest_first = win32.recent_events(win32.query_xpath((EVENT_PROCESS_START,)), self.seed_processes)
        self._handle(list(reversed(newest_first)), deliver=False)  # oldest first: newest start of a pid wins
        self._checked_starts = (self.correlator.starts, self.correlator.starts_without_cmdline)

    def _loop(self) -> None:
        next_policy_check = time.monotonic() + self.policy_interval
        while not self._stop.is_set():
            try:
                if self._subscription is None:
                    self._subscription = win32.Subscription(self.xpath, self._bookmark)
                self._subscription.wait(self.wait_ms)
                self._drain()
                if self._error and self._error.startswith(READ_FAILED):
                    self._error = None  # recovered; losses and tampering stay reported
            except win32.LogReset as exc:
                self._lost += 1  # at least one; the log no longer says how many
                self._error = (
                    "the Security log was cleared or overwritten before the agent read it "
                    f"({exc}); reads in between may be missing"
                )
                log.error("%s", self._error)
                self._resubscribe()
            except Exception as exc:  # a Win32 error (pywintypes.error) or OSError: retry, loudly
                self._error = f"{READ_FAILED}: {exc}"
                log.error("%s", self._error)
                self._resubscribe()
                self._stop.wait(min(5.0, self.policy_interval))
            if time.monotonic() >= next_policy_check:
                next_policy_check = time.monotonic() + self.policy_interval
                self.check_policy()

    def _resubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                self._bookmark = subscription.bookmark_xml()
            except Exception:
                log.exception("could not save the event log bookmark")
            subscription.close()

    def _drain(self) -> None:
        while not self._stop.is_set():
            xml = self._subscription.next_batch(self.batch)
            if not xml:
                return
            self._handle(xml, deliver=True)
            if len(xml) < self.batch:
                return

    def _handle(self, documents: list[str], *, deliver: bool) -> None:
        if not documents:
            return
        try:
            events, errors = parse_events_xml("<Events>" + "".join(documents) + "</Events>")
        except EventLogParseError as exc:
            self._lost += len(documents)
            log.error("unreadable Security events (%d lost): %s", len(documents), exc)
            return
        self._lost += len(errors)
        for event in events:
            if event.event_id == EVENT_LOG_CLEARED:
                self._log_cleared(event)
                continue
            with self._lock:
                read = self.correlator.handle(event)
            if read is not None and deliver:
                try:
                    self.callback(read)
                except Exception:
                    log.exception("read callback failed")

    def _log_cleared(self, event: Any) -> None:
        self.log_clears += 1
        who = subject_user(event) or "an unknown account"
        self._error = (
            f"the Security log was cleared at {to_iso(event.time)} by {who} (event 1102): "
            "reads before that moment may be missing"
        )
        log.error("tampering: %s", self._error)

    def check_policy(self) -> None:
        """Is what start() set still in force? A Group Policy refresh may have turned it off."""
        problems = []
        try:
            off = win32.subcategories_off()
            if off:
                problems.append(f"success auditing of {', '.join(off)} was turned off again")
            if not win32.cmdline_policy_enabled():
                problems.append("command lines in process-creation events were turned off again")
        except Exception as exc:
            problems.append(f"cannot read the audit policy: {exc}")
        starts = self.correlator.starts - self._checked_starts[0]
        bare = self.correlator.starts_without_cmdline - self._checked_starts[1]
        self._checked_starts = (self.correlator.starts, self.correlator.starts_without_cmdline)
        if starts >= MIN_STARTS_FOR_CMDLINE_CHECK and bare == starts:
            problems.append(f"the last {starts} process-creation events carried no command line")
        self._policy_error = "; ".join(problems) + f" — {GPO_HINT}" if problems else None
        if self._policy_error:
            log.error("audit policy: %s", self._policy_error)


EventlogSensor = EventLogSensor  # both spellings: the registry and the brief differ in case

__all__ = ["GPO_HINT", "UNAVAILABLE_OS", "WATCHED_IDS", "EventLogSensor", "EventlogSensor"]
