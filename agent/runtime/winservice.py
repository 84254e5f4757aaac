"""`tripkey-agent service`: the agent as a Windows service; `tripkey-agent run` stays the console form.

The Service Control Manager starts `tripkey-agent.exe service` (the MSI registers it as LocalSystem,
automatic start, with restart-on-failure recovery actions). That process hands its main thread to
the SCM's dispatcher (servicemanager.StartServiceCtrlDispatcher) with a pywin32 ServiceFramework
class that:

* reports SERVICE_RUNNING as soon as the agent thread is started (the SCM kills a service that
  stays START_PENDING for 30 s; enrolment and planting may take longer, so they happen after);
* runs the same AgentService as `run`, in its own thread, and returns when it ends;
* on SERVICE_CONTROL_STOP / SHUTDOWN reports STOP_PENDING with a wait hint, stops the agent like
  SIGTERM does, and keeps reporting STOP_PENDING (pywin32 advances the checkpoint each time) until
  the agent has stopped or STOP_DEADLINE has passed, so the SCM's timeout is never hit;
* when the agent ends on its own with a failure, reports SERVICE_STOPPED with a service-specific
  exit code: with the MSI's "failure actions on non-crash failures" the SCM then restarts it.

pywin32 exists only on Windows. The modules are passed in (`service_class(modules)`), so the
contract tests drive this class with a fake of win32serviceutil/win32service/servicemanager on
Linux; the real SCM handshake runs only on a Windows runner.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from agent import osflags

if TYPE_CHECKING:
    from agent.config import AgentConfig

log = logging.getLogger(__name__)

SERVICE_NAME = "TripkeyAgent"
DISPLAY_NAME = "Tripkey Agent"
DESCRIPTION = "Plants canary AWS credentials and records which process reads them."
STOP_WAIT_HINT_MS = 10_000  # how long each STOP_PENDING report asks the SCM to wait
STOP_DEADLINE = 25.0  # the agent's own shutdown is given this long before the service stops anyway
ERROR_SERVICE_SPECIFIC_ERROR = 1066
# Recovery actions: restart after 5 s, 5 s, then 60 s; the failure count resets after a day.
RECOVERY_RESET_SECONDS = 86_400
RECOVERY_DELAYS_MS = (5_000, 5_000, 60_000)
ERROR_FAILED_SERVICE_CONTROLLER_CONNECT = 1063


class Agent(Protocol):
    def run(self) -> int: ...

    def stop(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Modules:
    """The pywin32 modules the service uses (tests pass fakes of the same surface)."""

    win32serviceutil: Any
    win32service: Any
    servicemanager: Any

    @classmethod
    def load(cls) -> Modules:
        if not osflags.WINDOWS:
            raise OSError("the Windows service exists only on Windows (use `tripkey-agent run`)")
        import servicemanager
        import win32service
        import win32serviceutil

        return cls(win32serviceutil, win32service, servicemanager)


def service_class(modules: Modules, make_agent: Callable[[], Agent]) -> type:
    """The ServiceFramework subclass the dispatcher instantiates; `make_agent()` loads the
    configuration and builds the AgentService (a failure there stops the service with an error)."""
    win32service, servicemanager = modules.win32service, modules.servicemanager
    framework: Any = modules.win32serviceutil.ServiceFramework

    class TripkeyService(framework):  # type: ignore[misc, unused-ignore]
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = DISPLAY_NAME
        _svc_description_ = DESCRIPTION

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self.agent: Agent | None = None
            self.stop_requested = threading.Event()
            self.exit_code: int | None = None

        def GetAcceptedControls(self) -> int:
            return int(super().GetAcceptedControls()) | win32service.SERVICE_ACCEPT_SHUTDOWN

        def SvcDoRun(self) -> None:
            try:
                self.agent = make_agent()
            except Exception as exc:
                servicemanager.LogErrorMsg(f"{SERVICE_NAME} cannot start: {exc}")
                self.ReportServiceStatus(
                    win32service.SERVICE_STOPPED, win32ExitCode=ERROR_SERVICE_SPECIFIC_ERROR, svcExitCode=2
                )
                return
            agent = self.agent
            # RUNNING first: a stop that arrives from here on finds the agent and is reported after.
            self.ReportServiceStatus(win32service.SERVICE_RUNNING)
            servicemanager.LogInfoMsg(f"{SERVICE_NAME} running")
            if self.stop_requested.is_set():  # stopped while starting
                return
            worker = threading.Thread(target=self._run_agent, args=(agent,), name="tripkey-service")
            worker.daemon = True
            worker.start()
            while worker.is_alive() and not self.stop_requested.wait(0.5):
                pass
            if self.stop_requested.is_set():
                self._wait_for_stop(worker)
                servicemanager.LogInfoMsg(f"{SERVICE_NAME} stopped")
                return
            code = self.exit_code if self.exit_code is not None else 1
            if code != 0:  # ended by itself with a failure: a non-crash failure for the recovery actions
                servicemanager.LogErrorMsg(f"{SERVICE_NAME} ended with exit code {code}")
                self.ReportServiceStatus(
                    win32service.SERVICE_STOPPED, win32ExitCode=ERROR_SERVICE_SPECIFIC_ERROR, svcExitCode=code
                )

        def _run_agent(self, agent: Agent) -> None:
            try:
                self.exit_code = agent.run()
            except Exception:
                log.exception("the agent failed")
                self.exit_code = 1

        def _wait_for_stop(self, worker: threading.Thread) -> None:
            deadline = time.monotonic() + STOP_DEADLINE
            while worker.is_alive() and time.monotonic() < deadline:
                self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_HINT_MS)
                worker.join(min(2.0, max(0.0, deadline - time.monotonic())))
            if worker.is_alive():
                servicemanager.LogWarningMsg(
                    f"{SERVICE_NAME}: the agent did not stop within {STOP_DEADLINE:.0f} s; stopping anyway"
                )

        def SvcStop(self) -> None:
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_HINT_MS)
            self.stop_requested.set()
            if self.agent is not None:
                self.agent.stop()

        SvcShutdown = SvcStop  # system shutdown: the same orderly stop

    return TripkeyService


def dispatch(modules: Modules, cls: type) -> int:
    """Hand this process to the SCM (blocks until the service stops). Exit code 2 with a sentence
    if it was not started by the SCM (someone ran `tripkey-agent service` in a console)."""
    modules.servicemanager.Initialize()
    modules.servicemanager.PrepareToHostSingle(cls)
    try:
        modules.servicemanager.StartServiceCtrlDispatcher()
    except Exception as exc:
        if getattr(exc, "winerror", None) == ERROR_FAILED_SERVICE_CONTROLLER_CONNECT:
            print(
                "tripkey-agent service: this is the Windows service entry, started by the Service "
                "Control Manager; in a console use `tripkey-agent run`"
            )
            return 2
        raise
    return 0


def configure_recovery(modules: Modules) -> dict[str, Any]:
    """Restart-on-failure recovery actions for the installed service, through the SCM API
    (ChangeServiceConfig2), including non-crash failures (a service-specific exit code). The MSI
    runs this (`tripkey-agent service --configure-recovery`, a deferred custom action after
    InstallServices) because neither WiX's ServiceConfig nor MsiServiceConfigFailureActions can be
    built with wixl. Returns the failure actions the SCM reports afterwards."""
    svc = modules.win32service
    manager = svc.OpenSCManager(None, None, svc.SC_MANAGER_CONNECT)
    try:
        access = svc.SERVICE_CHANGE_CONFIG | svc.SERVICE_START | svc.SERVICE_QUERY_CONFIG
        service = svc.OpenService(manager, SERVICE_NAME, access)
        try:
            actions = {
                "ResetPeriod": RECOVERY_RESET_SECONDS,
                "RebootMsg": "",
                "Command": "",
                "Actions": [(svc.SC_ACTION_RESTART, delay) for delay in RECOVERY_DELAYS_MS],
            }
            svc.ChangeServiceConfig2(service, svc.SERVICE_CONFIG_FAILURE_ACTIONS, actions)
            svc.ChangeServiceConfig2(service, svc.SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, True)
            configured: dict[str, Any] = svc.QueryServiceConfig2(service, svc.SERVICE_CONFIG_FAILURE_ACTIONS)
            return configured
        finally:
            svc.CloseServiceHandle(service)
    finally:
        svc.CloseServiceHandle(manager)


def _log_to_file(config: AgentConfig) -> None:
    """A service has no console: the log goes to <state_dir>\\agent.log (rotated, 5 x 10 MB)."""
    import logging.handlers
    from pathlib import Path

    from agent.state import ensure_private_dir

    ensure_private_dir(Path(config.state_dir))
    handler = logging.handlers.RotatingFileHandler(
        Path(config.state_dir) / "agent.log", maxBytes=10 << 20, backupCount=5, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(config.log_level.upper())


def run_windows_service(load_config: Callable[[], AgentConfig], *, configure: bool = False) -> int:
    """`tripkey-agent service`: the SCM's entry point (`--configure-recovery`: the MSI's step)."""
    from agent.service import AgentService

    modules = Modules.load()
    if configure:
        actions = configure_recovery(modules)
        print(f"{SERVICE_NAME} recovery actions: {actions}")
        return 0

    def make_agent() -> Agent:
        config = load_config()
        config.require_issuer()
        _log_to_file(config)
        return AgentService(config)

    return dispatch(modules, service_class(modules, make_agent))


__all__ = [
    "DESCRIPTION",
    "DISPLAY_NAME",
    "SERVICE_NAME",
    "STOP_DEADLINE",
    "Modules",
    "configure_recovery",
    "dispatch",
    "run_windows_service",
    "service_class",
]
