"""The self-report socket faces every local user: hostile clients never silence it.

Hostile inputs, each named: 3 KB of nested brackets (once a RecursionError that killed the server
thread), a 1 MB request, bytes that are not UTF-8, an integer of 5,000 digits, clients that drip one
byte at a time or never finish, 40 connections at once from one user, a report handler that fails,
and a report from user B that names user A's file (once attached to A's alert as "likely benign").
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import load_config
from agent.planting.targets import Target
from agent.planting.users import LocalUser
from agent.selfreport.server import REQUEST_SECONDS, SelfReport, SelfReportServer, send_self_report
from agent.service import AgentService
from agent.state import StateStore
from agent.status import format_status, status_data
from tests.support.selfreport import (
    ALICE_UID,
    BOB_UID,
    MALLORY_UID,
    public_socket_dir,
    raw_request,
    run_as,
    start_as,
)


class Recorder:
    def __init__(self) -> None:
        self.reports: list[SelfReport] = []
        self.fail = False

    def __call__(self, report: SelfReport) -> None:
        if self.fail:
            raise RuntimeError("spool is broken")
        self.reports.append(report)


@pytest.fixture
def server() -> Iterator[tuple[SelfReportServer, Recorder]]:
    recorder = Recorder()
    with public_socket_dir() as directory:
        srv = SelfReportServer(directory / "sr.sock", recorder)
        srv.start()
        yield srv, recorder
        srv.stop()


def _legit(srv: SelfReportServer, recorder: Recorder, note: str = "honest mistake") -> float:
    """Send a real report; return how long it took. Fails if it is not recorded."""
    started = time.monotonic()
    send_self_report(srv.socket_path, note=note, timeout=REQUEST_SECONDS + 3)
    assert recorder.reports and recorder.reports[-1].note == note
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"[" * 1500 + b"]" * 1500 + b"\n", "nested too deeply"),
        (b'{"note": ' + b"[" * 1200 + b"]" * 1200 + b"}\n", "nested too deeply"),
        (b"x" * (1024 * 1024), "larger than"),
        (b'{"note": "\xff\xfe"}\n', "not UTF-8"),
        (b'{"note": ' + b"9" * 4000 + b"}\n", "must be a string"),
        (b'{"note": "a\x00b"}\n', "not JSON"),
        (b"\x00" * 100 + b"\n", "not JSON"),
    ],
    ids=["nested-3kb", "nested-in-note", "1-mb", "not-utf8", "4000-digit-note", "raw-nul", "nul-bytes"],
)
def test_hostile_request_is_refused_and_the_server_stays_up(
    server: tuple[SelfReportServer, Recorder], payload: bytes, words: str
) -> None:
    srv, recorder = server
    answer = json.loads(raw_request(srv.socket_path, payload))
    assert answer["ok"] is False and words in answer["error"], answer
    assert srv.running and srv.health()["refused"] == 1
    _legit(srv, recorder)


def test_a_failing_report_handler_ends_one_connection_only(server: tuple[SelfReportServer, Recorder]) -> None:
    srv, recorder = server
    recorder.fail = True
    answer = json.loads(raw_request(srv.socket_path, b'{"note": "x"}\n'))
    assert answer == {"ok": False, "error": "the agent could not record the report (see its log)"}
    recorder.fail = False
    assert srv.running
    _legit(srv, recorder)


def test_forty_hostile_connections_from_one_user_leave_room_for_another(
    server: tuple[SelfReportServer, Recorder],
) -> None:
    """Mallory opens 40 connections at once (drippers, nested brackets, 1 MB blobs, silent ones) and
    keeps them open; a report from another user is still answered within the request budget."""
    srv, recorder = server
    flood = start_as(
        MALLORY_UID,
        f"""
path = {str(srv.socket_path)!r}
socks = []
for i in range(40):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    kind = i % 4
    with contextlib.suppress(OSError):
        if kind == 1:
            s.sendall(b"[" * 3000)
        elif kind == 2:
            s.setblocking(False)
            s.send(b"x" * (1024 * 1024))
    socks.append(s)
def drip():
    for _ in range(40):
        for s in socks[::4]:
            with contextlib.suppress(OSError):
                s.send(b" ")
        time.sleep(0.1)
threading.Thread(target=drip, daemon=True).start()
time.sleep(4)
print("done")
""",
    )
    try:
        time.sleep(0.5)  # the flood is connected
        waited = _legit(srv, recorder, "root's own report")
    finally:
        out, err = flood.communicate(timeout=30)
    assert "done" in out, err
    assert waited < REQUEST_SECONDS, f"a legitimate report waited {waited:.1f} s"
    health = srv.health()
    assert health["running"] and health["busy"] >= 30  # Mallory got at most 4 slots


def test_the_global_cap_answers_busy_at_once_instead_of_hanging() -> None:
    """Two users hold the only two slots; a third client is told "busy" at once, and is served as soon
    as the holders' request budget runs out."""
    recorder = Recorder()
    with public_socket_dir() as directory:
        srv = SelfReportServer(directory / "sr.sock", recorder, max_clients=2)
        srv.start()
        hold = (
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            f"s.connect({str(srv.socket_path)!r})\n"
            "print('connected', flush=True)\n"
            "print(s.recv(4096).decode(), flush=True)\n"  # the agent's answer when the budget runs out
        )
        holders = [start_as(uid, hold) for uid in (ALICE_UID, BOB_UID)]
        try:
            for holder in holders:
                assert holder.stdout is not None and holder.stdout.readline().strip() == "connected"
            deadline = time.monotonic() + 5
            while sum(srv._active.values()) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            started = time.monotonic()
            answer = json.loads(raw_request(srv.socket_path, b'{"note": "x"}\n'))
            assert time.monotonic() - started < 1.0
            assert answer["ok"] is False and "busy" in answer["error"]
            outputs = [holder.communicate(timeout=30)[0] for holder in holders]
            assert all("not complete within" in out for out in outputs), outputs
            _legit(srv, recorder)
        finally:
            for holder in holders:
                holder.kill()
            srv.stop()


def test_a_stopped_accept_loop_is_reported_and_restarted(server: tuple[SelfReportServer, Recorder]) -> None:
    srv, recorder = server
    assert srv._sock is not None
    srv._sock.close()  # the listening socket dies under the accept loop
    deadline = time.monotonic() + 5
    while srv.running and time.monotonic() < deadline:
        time.sleep(0.05)
    health = srv.health()
    assert health["running"] is False and health["error"], health
    assert srv.ensure_running()
    _legit(srv, recorder)
    health = srv.health()  # running again, and still saying that it was down
    assert health["running"] and health["restarts"] == 1 and health["last_error"]


chunks = st.lists(
    st.one_of(
        st.binary(max_size=300),
        st.sampled_from(
            [b"[" * 2000, b"{" * 2000, b"\n", b'{"note": "x"}', b'{"note": 1}', b"\xff", b"\x00"]
        ),
        st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3).map(
            lambda d: json.dumps(d).encode()
        ),
    ),
    max_size=6,
)


def test_no_input_kills_the_server_thread(server: tuple[SelfReportServer, Recorder]) -> None:
    """Property: whatever bytes arrive, in whatever pieces, the next legitimate report is answered."""
    srv, recorder = server
    srv.request_seconds = 0.3  # a request that never ends costs the test 0.3 s, not 2

    @settings(max_examples=50)
    @given(parts=chunks)
    def run(parts: list[bytes]) -> None:
        raw_request(srv.socket_path, b"".join(parts), timeout=5)
        assert srv.running, srv.health()
        recorder.reports.clear()
        send_self_report(srv.socket_path, note="still here", timeout=5)
        assert [r.note for r in recorder.reports] == ["still here"]

    run()


# --------------------------------------------------------------------- binding to the sender's uid


def _user(name: str, uid: int, home: Path) -> LocalUser:
    return LocalUser(name=name, uid=uid, gid=uid, home=str(home), shell="/bin/bash")


class _Planter:
    def __init__(self, targets: list[Target]) -> None:
        self._targets = {t.path: t for t in targets}

    @property
    def paths(self) -> list[str]:
        return sorted(self._targets)

    def target(self, path: str) -> Target | None:
        return self._targets.get(path)


def test_a_user_cannot_attach_a_report_to_another_users_file(tmp_path: Path) -> None:
    alice = _user("alice", ALICE_UID, tmp_path / "alice")
    bob = _user("bob", BOB_UID, tmp_path / "bob")
    config = load_config(None, env={}, overrides={"state_dir": str(tmp_path / "state")})
    service = AgentService(config)
    service.planter = _Planter([Target(u.credentials_path, u, "all_users") for u in (alice, bob)])  # type: ignore[assignment]
    spooled: list[dict[str, Any]] = []
    service._spool_put = spooled.append  # type: ignore[method-assign]
    with public_socket_dir() as directory:
        srv = SelfReportServer(directory / "sr.sock", service._on_self_report)
        srv.start()
        try:
            send = (
                "from agent.selfreport.server import send_self_report, SelfReportError\n"
                "try:\n"
                f"    send_self_report(__import__('pathlib').Path({str(srv.socket_path)!r}), note='mine', "
                "path=sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None)\n"
                "    print('OK')\n"
                "except SelfReportError as exc:\n"
                "    print('REFUSED', exc)\n"
            )

            def as_user(uid: int, path: str | None) -> str:
                done = run_as(uid, f"sys.argv = ['x', {path or ''!r}]\n" + send)
                assert done.returncode == 0, done.stderr
                return done.stdout.strip()

            refused = as_user(BOB_UID, alice.credentials_path)
            assert refused.startswith("REFUSED") and "not a canary file planted for you" in refused
            assert f"uid {BOB_UID}" in refused
            nobody = as_user(MALLORY_UID, None)
            assert nobody.startswith("REFUSED") and "no canary file is planted for you" in nobody
            assert spooled == []
            assert as_user(BOB_UID, None) == "OK"  # bob's own file, found by his uid
            service._last_report.clear()
            assert as_user(ALICE_UID, alice.credentials_path) == "OK"
        finally:
            srv.stop()
    assert [(e["path"], e["self_report"]["note"]) for e in spooled] == [
        (bob.credentials_path, "mine"),
        (alice.credentials_path, "mine"),
    ]
    assert srv.health()["refused"] == 2


def test_status_says_when_the_socket_is_down(tmp_path: Path) -> None:
    config = load_config(None, env={}, overrides={"state_dir": str(tmp_path / "state")})
    store = StateStore(config.state_dir)
    with store.mutate() as st:
        st.service_pid = os.getpid()  # "running"
        st.selfreport_health = {"enabled": True, "running": False, "error": "accept failed: [Errno 9]"}
    text = format_status(status_data(config))
    assert "self-report: NOT RUNNING: accept failed: [Errno 9]" in text


def test_the_heartbeat_says_when_the_socket_is_down(server: tuple[SelfReportServer, Recorder]) -> None:
    from agent.reporting.payloads import heartbeat_payload
    from issuer.api.schemas import Heartbeat

    srv, _ = server
    assert srv._sock is not None
    srv._sock.close()
    deadline = time.monotonic() + 5
    while srv.running and time.monotonic() < deadline:
        time.sleep(0.05)
    sensor = {"name": "fanotify", "mode": "permission", "healthy": True}
    payload = heartbeat_payload(
        sensor_health=sensor, targets=[], last_event_at=None, spool=None, selfreport=srv.health()
    )
    beat = Heartbeat.model_validate(payload)  # the issuer's own schema takes it
    assert beat.selfreport is not None and beat.selfreport.running is False and beat.selfreport.error
