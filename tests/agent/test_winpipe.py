"""Self-reports over the Windows named pipe (agent/selfreport/winpipe.py) through the real SelfReportServer,
with win32pipe/win32file/win32security faked at the OS boundary (tests/support/win32.py): the
server loop, the request parsing, the peer identity from the client's token and the client's
check of the server run for real. Only Windows can prove the kernel's side (the CI job)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import osflags
from agent.credfile.winacl import sid_for_uid
from agent.selfreport import server as selfreport
from agent.selfreport import winpipe
from agent.selfreport.server import SelfReport, SelfReportError, SelfReportServer, send_self_report
from tests.support.win32 import FakePipes

ALICE = "S-1-5-21-1-2-3-1109"


@pytest.fixture
def pipes(monkeypatch: pytest.MonkeyPatch) -> FakePipes:
    fake = FakePipes()
    fake.install(monkeypatch, winpipe)
    monkeypatch.setattr(osflags, "WINDOWS", True)  # selfreport picks its transport at run time
    return fake


@pytest.fixture
def server(pipes: FakePipes) -> Iterator[tuple[SelfReportServer, list[SelfReport]]]:
    reports: list[SelfReport] = []
    server = SelfReportServer(
        Path("/run/tripkey/selfreport.sock"), reports.append
    )  # not a pipe name: the default
    server.start()
    try:
        yield server, reports
    finally:
        server.stop()


def test_a_report_carries_the_account_the_kernel_names_not_the_request(
    pipes: FakePipes, server: tuple[SelfReportServer, list[SelfReport]]
) -> None:
    _, reports = server
    send_self_report(
        Path(winpipe.DEFAULT_PIPE), note="I opened it by mistake", path=r"C:\Users\bob\.aws\credentials"
    )
    [report] = reports
    assert (report.user, report.pid, report.note) == ("CONTOSO\\alice", 7777, "I opened it by mistake")
    assert sid_for_uid(report.uid) == ALICE
    assert pipes.reverted == 1 and getattr(pipes.impersonating, "sid", None) is None  # impersonation undone
    [attributes] = pipes.security_attributes[:1]
    assert attributes.SECURITY_DESCRIPTOR == ("SD", winpipe.PIPE_SDDL)
    assert (
        "(A;;GA;;;SY)" in winpipe.PIPE_SDDL and ";AU)" in winpipe.PIPE_SDDL
    )  # users may not create instances
    client = pipes.instances[winpipe.DEFAULT_PIPE][0]
    assert client.client_flags == winpipe.SECURITY_SQOS_PRESENT | winpipe.SECURITY_IDENTIFICATION


def test_a_bad_request_is_refused_with_the_reason(
    pipes: FakePipes, server: tuple[SelfReportServer, list[SelfReport]]
) -> None:
    _, reports = server
    answer = winpipe.request(winpipe.DEFAULT_PIPE, b'{"note": 5}\n', timeout=5)
    assert b'"ok": false' in answer and b"note must be a string" in answer
    assert reports == []


def test_a_squatted_pipe_name_stops_the_server_loudly(pipes: FakePipes) -> None:
    pipes.foreign_names.add(winpipe.DEFAULT_PIPE)  # a local user created the pipe before the agent
    with pytest.raises(OSError, match="another process created it first"):
        SelfReportServer(Path(winpipe.DEFAULT_PIPE), lambda r: None).start()


def test_the_tray_refuses_a_pipe_not_served_by_localsystem(
    pipes: FakePipes, server: tuple[SelfReportServer, list[SelfReport]]
) -> None:
    _, reports = server
    pipes.server_sid = ALICE  # e.g. a user's process answering on a pipe it opened
    with pytest.raises(SelfReportError, match="not by the Tripkey service"):
        send_self_report(Path(winpipe.DEFAULT_PIPE), note="x")
    assert reports == []


def test_no_agent_is_a_clear_error(pipes: FakePipes) -> None:
    with pytest.raises(SelfReportError, match="not reachable"):
        send_self_report(Path(winpipe.DEFAULT_PIPE), note="x", timeout=0.2)
    assert winpipe.is_pipe_name(r"\\.\pipe\x") and winpipe.is_pipe_name("//./pipe/x")
    assert not winpipe.is_pipe_name("/run/tripkey/selfreport.sock")
    assert selfreport.DEFAULT_SOCKET.name == "selfreport.sock"
