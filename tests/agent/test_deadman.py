"""agent.runtime.deadman: the systemd watchdog protocol on a real AF_UNIX datagram socket (systemd itself
does not run here; this is exactly the boundary it listens on), and who pets: the service thread
until a sensor takes over, the fanotify reader thread only while the answering path works."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.runtime.deadman import Deadman, notify_systemd, systemd_watchdog
from agent.sensors import _procinfo as procinfo
from tests.support.paths import requires_root
from tests.support.sensors import FanCollector


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """What systemd listens on: a datagram socket, here bound at a path."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield path, sock
    finally:
        sock.close()


def _messages(sock: socket.socket, wait: float = 0.0) -> list[bytes]:
    time.sleep(wait)
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        return out
    finally:
        sock.setblocking(True)


def _env(address: str, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1500000", "WATCHDOG_PID": str(os.getpid()), **extra}


def test_systemd_watchdog_pets_and_says_ready(notify_socket: tuple[str, socket.socket]) -> None:
    address, sock = notify_socket
    watchdog = systemd_watchdog(_env(address))
    assert watchdog is not None and watchdog.timeout == 1.5 and watchdog.interval == 0.5
    watchdog.ready()
    watchdog.pet()
    assert _messages(sock) == [b"READY=1", b"WATCHDOG=1"]
    assert watchdog.describe() == {
        "armed": True,
        "kind": "systemd",
        "timeout_ms": 1500,
        "holds_readers_timeout_ms": 1500,
        "petted_by": "the agent's service thread",
        "detail": "systemd watchdog (WatchdogSec=1.5s, SIGKILL, Restart=)",
    }


def test_abstract_notify_socket() -> None:
    name = f"tripkey-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        watchdog = systemd_watchdog(_env("@" + name))
        assert watchdog is not None
        watchdog.pet()
        assert _messages(sock) == [b"WATCHDOG=1"]
        assert notify_systemd(b"READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert _messages(sock) == [b"READY=1"]
    finally:
        sock.close()


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"NOTIFY_SOCKET": "/run/x"},  # Type=notify without WatchdogSec=
        {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1500000", "WATCHDOG_PID": "1"},  # not for us
        {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "soon"},
    ],
)
def test_no_watchdog_for_us(env: dict[str, str]) -> None:
    assert systemd_watchdog(env) is None


def test_systemd_gone_never_raises(tmp_path: Path) -> None:
    watchdog = systemd_watchdog(_env(str(tmp_path / "nobody-listens")))
    assert watchdog is not None
    watchdog.pet()  # ENOENT / ECONNREFUSED: counted and logged, never raised into the answering path
    assert watchdog.errors == 1 and watchdog.pets == 0


def test_service_thread_pets_until_a_sensor_takes_over_and_after_it_lets_go(
    notify_socket: tuple[str, socket.socket],
) -> None:
    address, sock = notify_socket
    watchdog = systemd_watchdog({**_env(address), "WATCHDOG_USEC": "300000"})  # pet every 0.1 s
    assert watchdog is not None
    watchdog.relaxed = 0.3  # as tight as the unit's, so the service thread pets every 0.1 s too
    watchdog.start()
    try:
        assert len(_messages(sock, 0.55)) >= 4
        petter = watchdog.delegate("a sensor")
        _messages(sock, 0.05)  # the delegate's first pet
        assert _messages(sock, 0.5) == []  # nobody covers for a sensor that took over
        assert watchdog.describe()["petted_by"] == "a sensor"
        petter.pet()
        assert _messages(sock) == [b"WATCHDOG=1"]
        petter.release()
        assert len(_messages(sock, 0.55)) >= 4
        petter.pet()  # a released petter no longer pets
        assert watchdog.describe()["petted_by"] == "the agent's service thread"
    finally:
        watchdog.stop()


def _timeouts(messages: list[bytes]) -> list[bytes]:
    """The timeout changes among `messages`, each checked to come right after a fresh pet."""
    changes = [i for i, m in enumerate(messages) if m.startswith(b"WATCHDOG_USEC=")]
    assert all(i > 0 and messages[i - 1] == b"WATCHDOG=1" for i in changes), messages
    return [messages[i] for i in changes]


def test_timeout_is_tight_only_while_a_sensor_that_holds_readers_pets(
    notify_socket: tuple[str, socket.socket],
) -> None:
    """systemd is told WATCHDOG_USEC=30 s while nothing holds a reader (idle: a pet every 10 s),
    the unit's 1.5 s while the fanotify reader thread pets; a fresh pet always comes first."""
    address, sock = notify_socket
    watchdog = systemd_watchdog(_env(address))
    assert watchdog is not None
    watchdog.start()
    try:
        assert _timeouts(_messages(sock, 0.1)) == [b"WATCHDOG_USEC=30000000"]
        assert watchdog.interval == 10.0 and watchdog.describe()["timeout_ms"] == 30000
        petter = watchdog.delegate("the fanotify sensor's event path")
        assert _timeouts(_messages(sock, 0.1)) == [b"WATCHDOG_USEC=1500000"]
        assert petter.interval == 0.5 and watchdog.describe()["timeout_ms"] == 1500
        petter.release()
        assert _timeouts(_messages(sock, 0.1)) == [b"WATCHDOG_USEC=30000000"]
        assert watchdog.describe()["holds_readers_timeout_ms"] == 1500
    finally:
        watchdog.stop()


def test_disarmed_deadman_says_why() -> None:
    deadman = Deadman(reason="turned off (deadman_seconds = 0)")
    deadman.start()
    deadman.pet()
    assert deadman.describe()["armed"] is False and "turned off" in deadman.describe()["detail"]


# ---- the fanotify sensor pets from its reader thread (real kernel) -------------------------------


class CountingPetter:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.pets: list[float] = []
        self.released = threading.Event()

    def pet(self) -> None:
        self.pets.append(time.monotonic())

    def release(self) -> None:
        self.released.set()

    def count_in(self, seconds: float) -> int:
        before = len(self.pets)
        time.sleep(seconds)
        return len(self.pets) - before


@requires_root
def test_fanotify_pets_while_idle_and_stops_when_its_answering_path_is_wedged(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    release = threading.Event()

    def stuck(pid: int, pidfd: int | None) -> procinfo.ProcContext:
        release.wait(30)
        return procinfo.ProcContext(pid=pid, gone=True)

    sensor = fan_sensor_factory([fan_target], fan_collector, capture=stuck, capture_workers=1)
    petter = CountingPetter(0.1)
    assert sensor.attach_deadman(petter) is True  # type: ignore[attr-defined]
    assert 6 <= petter.count_in(1.0) <= 12  # idle: the reader wakes only to pet
    guard = sensor._guard  # type: ignore[attr-defined]
    reader: subprocess.Popen[bytes] | None = None
    try:
        with guard._cond:  # wedge the guard: it cannot answer the reader the capture never will
            reader = subprocess.Popen(["cat", str(fan_target)], stdout=subprocess.DEVNULL)
            time.sleep(0.3)
            assert petter.count_in(0.8) == 0, "petted while a reader was held past the budget"
        assert reader.wait(timeout=5) == 0  # the guard, free again, let it through
        assert petter.count_in(0.5) >= 2  # and the pets resumed
    finally:
        release.set()
        if reader is not None and reader.poll() is None:
            reader.kill()
    sensor.stop()  # type: ignore[attr-defined]
    assert petter.released.wait(5)  # the agent pets from now on


@requires_root
def test_fanotify_releases_the_deadman_when_it_fails_open(
    fan_target: Path,
    fan_collector: FanCollector,
    fan_sensor_factory: Callable[..., object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agent.sensors import _fanotify_abi as abi

    sensor = fan_sensor_factory([fan_target], fan_collector)
    petter = CountingPetter(0.1)
    assert sensor.attach_deadman(petter) is True  # type: ignore[attr-defined]

    def future_kernel(buf: bytes) -> list[abi.RawEvent]:
        error = abi.FanotifyAbiError("fanotify metadata version 4")
        error.events = []  # type: ignore[attr-defined]
        raise error

    monkeypatch.setattr(abi, "parse_events", future_kernel)
    subprocess.run(["cat", str(fan_target)], capture_output=True, check=True, timeout=10)
    assert petter.released.wait(5)  # the group is closed, nothing held: the service pets again
    assert sensor.attach_deadman(CountingPetter(0.1)) is False  # type: ignore[attr-defined]


@requires_root
def test_notification_fanotify_holds_no_reader_so_it_leaves_the_petting_to_the_agent(
    fan_target: Path, fan_collector: FanCollector, fan_sensor_factory: Callable[..., object]
) -> None:
    sensor = fan_sensor_factory([fan_target], fan_collector, notify=True)
    petter = CountingPetter(0.1)
    assert sensor.attach_deadman(petter) is False  # type: ignore[attr-defined]
    assert petter.count_in(0.5) == 0
