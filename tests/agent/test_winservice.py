"""The Windows service entry (agent/runtime/winservice.py) against a fake of the SCM surface.

win32serviceutil.ServiceFramework, win32service and servicemanager are faked at the OS boundary
(tests/support/win32.py: status reports, event-log messages, the dispatcher); the service class,
its threads and its stop logic run for real. The real SCM handshake runs on the Windows runner
(.github/workflows/ci.yml: the MSI is installed and the service started and stopped).
"""

from __future__ import annotations

import threading
import time

import pytest

from agent import osflags
from agent.runtime import winservice
from agent.runtime.winservice import Modules, dispatch, service_class
from tests.support.win32 import FakeServiceModules

RUNNING, STOPPED, STOP_PENDING, START_PENDING = 4, 1, 3, 2


class SlowAgent:
    """Stands in for AgentService: run() blocks until stop(), which takes `stop_delay` to finish."""

    def __init__(self, stop_delay: float = 0.0, exit_code: int = 0, ignores_stop: bool = False) -> None:
        self.stop_delay, self.exit_code, self.ignores_stop = stop_delay, exit_code, ignores_stop
        self.started = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> int:
        self.started.set()
        self.stopping.wait()
        if self.ignores_stop:
            time.sleep(3600)
        time.sleep(self.stop_delay)
        return self.exit_code

    def stop(self) -> None:
        self.stopping.set()


def modules(fake: FakeServiceModules) -> Modules:
    return Modules(fake.win32serviceutil, fake.win32service, fake.servicemanager)


def start_service(fake: FakeServiceModules, agent: SlowAgent) -> tuple[object, threading.Thread]:
    cls = service_class(modules(fake), lambda: agent)
    service = cls(["TripkeyAgent"])
    thread = threading.Thread(target=service.SvcDoRun, daemon=True)
    thread.start()
    return service, thread


def test_reports_running_as_soon_as_the_agent_thread_starts_and_names_itself() -> None:
    fake, agent = FakeServiceModules(), SlowAgent()
    service, thread = start_service(fake, agent)
    assert agent.started.wait(5)
    deadline = time.monotonic() + 5
    while RUNNING not in fake.status_names():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert fake.status_names()[:2] == [START_PENDING, RUNNING]
    assert type(service)._svc_name_ == "TripkeyAgent" and type(service)._svc_display_name_ == "Tripkey Agent"
    assert service.GetAcceptedControls() == 0x1 | 0x4  # stop and system shutdown
    service.SvcStop()
    thread.join(10)
    assert not thread.is_alive()


def test_stop_reports_stop_pending_with_checkpoints_until_the_agent_has_stopped() -> None:
    fake, agent = FakeServiceModules(), SlowAgent(stop_delay=2.5)
    service, thread = start_service(fake, agent)
    assert agent.started.wait(5)
    began = time.monotonic()
    service.SvcStop()
    thread.join(20)
    assert not thread.is_alive() and time.monotonic() - began < 10
    pending = [details for status, details in fake.statuses if status == STOP_PENDING]
    assert len(pending) >= 2 and all(d["waitHint"] == winservice.STOP_WAIT_HINT_MS for d in pending)
    checkpoints = [d["checkPoint"] for d in pending]
    assert checkpoints == sorted(checkpoints) and len(set(checkpoints)) == len(checkpoints)  # advancing
    assert ("info", "TripkeyAgent stopped") in fake.messages


def test_an_agent_that_never_stops_cannot_make_the_scm_kill_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(winservice, "STOP_DEADLINE", 1.0)
    fake, agent = FakeServiceModules(), SlowAgent(ignores_stop=True)
    service, thread = start_service(fake, agent)
    assert agent.started.wait(5)
    service.SvcStop()
    thread.join(10)
    assert not thread.is_alive()
    assert any(kind == "warning" and "did not stop" in text for kind, text in fake.messages)


def test_an_agent_that_fails_on_its_own_stops_with_a_service_specific_error() -> None:
    fake = FakeServiceModules()
    agent = SlowAgent(exit_code=1)
    agent.stopping.set()  # run() returns at once with 1 (e.g. enrollment refused)
    _service, thread = start_service(fake, agent)
    thread.join(10)
    status, details = fake.statuses[-1]
    assert status == STOPPED and (details["win32ExitCode"], details["svcExitCode"]) == (1066, 1)
    assert ("error", "TripkeyAgent ended with exit code 1") in fake.messages


def test_a_configuration_error_stops_the_service_with_the_reason_in_the_event_log() -> None:
    fake = FakeServiceModules()

    def broken() -> SlowAgent:
        raise ValueError("issuer_url is not set")

    service = service_class(modules(fake), broken)(["TripkeyAgent"])
    service.SvcDoRun()
    assert fake.statuses[-1][0] == STOPPED and fake.statuses[-1][1]["win32ExitCode"] == 1066
    assert ("error", "TripkeyAgent cannot start: issuer_url is not set") in fake.messages


def test_dispatch_hosts_the_class_and_refuses_a_console_start(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeServiceModules(console=True)
    cls = service_class(modules(fake), SlowAgent)
    assert dispatch(modules(fake), cls) == 2
    assert fake.hosted is cls
    assert "use `tripkey-agent run`" in capsys.readouterr().out


def test_the_service_entry_is_windows_only_and_says_so() -> None:
    if osflags.WINDOWS:
        pytest.skip("checks the behaviour off Windows")
    with pytest.raises(OSError, match="use `tripkey-agent run`"):
        Modules.load()


def test_recovery_actions_restart_the_service_also_after_a_non_crash_failure() -> None:
    fake = FakeServiceModules()
    actions = winservice.configure_recovery(modules(fake))
    assert actions == {
        "ResetPeriod": 86_400,
        "RebootMsg": "",
        "Command": "",
        "Actions": [(1, 5_000), (1, 5_000), (1, 60_000)],  # SC_ACTION_RESTART
    }
    assert fake.service_config[4] is True  # SERVICE_CONFIG_FAILURE_ACTIONS_FLAG: exit codes count too
    assert fake.open_handles == set()  # both SCM handles closed
