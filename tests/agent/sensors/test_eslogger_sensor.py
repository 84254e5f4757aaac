"""EsloggerSensor on a non-macOS host, and the stream plumbing with a stand-in for eslogger.

eslogger (Endpoint Security) cannot exist on Linux, so the process plumbing is driven by a small
Python script that prints fixture lines (format: tests/sensors/test_eslogger_fixtures.py) in
chunks that split messages mid-line, then exits.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from agent import osflags
from agent.events.model import ReadEvent
from agent.sensors._eslogger import UNAVAILABLE_OS, EsloggerSensor, EsloggerStream, eslogger_command
from agent.sensors._eslogger_parse import EsloggerParser
from agent.sensors.base import SensorUnavailable
from tests.support.eslogger import exec_msg, line, open_msg, proc

CRED = "/Users/alice/.aws/credentials"
pytestmark = pytest.mark.skipif(osflags.MACOS, reason="checks the behaviour on a host without eslogger")


def test_not_available_here_and_start_says_so() -> None:
    assert EsloggerSensor.check_available() == UNAVAILABLE_OS
    assert "macOS 13" in UNAVAILABLE_OS
    sensor = EsloggerSensor([CRED], lambda e: None)
    with pytest.raises(SensorUnavailable, match="only available on macOS 13"):
        sensor.start()
    health = sensor.health()
    assert not health.healthy and health.error == "not started"
    sensor.stop()  # safe without a start, and twice
    sensor.stop()


def test_command_subscribes_to_the_events_the_parser_needs() -> None:
    assert eslogger_command() == ["/usr/bin/eslogger", "open", "exec", "fork", "exit", "--format", "json"]


def test_stream_delivers_split_lines_to_the_parser(tmp_path: Path) -> None:
    cat = proc(501, "/bin/cat", ppid=480)
    data = line(exec_msg(proc(501, "/bin/zsh", ppid=480), cat, ["cat", CRED])) + line(open_msg(cat, CRED))
    data = data * 3 + b"garbage line\n"
    payload = tmp_path / "out.jsonl"
    payload.write_bytes(data)
    script = (
        "import sys, time\n"
        f"data = open({str(payload)!r}, 'rb').read()\n"
        "for i in range(0, len(data), 333):\n"
        "    sys.stdout.buffer.write(data[i:i+333]); sys.stdout.buffer.flush(); time.sleep(0.002)\n"
        "sys.stderr.write('eslogger stand-in done\\n')\n"
    )
    parser = EsloggerParser([CRED])
    events: list[ReadEvent] = []
    lock = threading.Lock()

    def on_data(chunk: bytes) -> None:
        with lock:
            events.extend(parser.feed(chunk))

    stream = EsloggerStream([sys.executable, "-c", script], on_data)
    stream.start()
    deadline = time.monotonic() + 30
    while stream.exited() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    stream.wait_output_done(10)
    assert stream.exited() == 0
    assert [e.cmdline for e in events] == [("cat", CRED)] * 3
    assert parser.malformed == 1
    assert list(stream.stderr_tail) == ["eslogger stand-in done"]
    stream.stop()
    stream.stop()


def test_stream_stop_terminates_a_running_command() -> None:
    stream = EsloggerStream([sys.executable, "-c", "import time; time.sleep(60)"], lambda c: None)
    stream.start()
    proc_ = stream.proc
    assert proc_ is not None and stream.exited() is None
    started = time.monotonic()
    stream.stop()
    assert proc_.poll() is not None and time.monotonic() - started < 10


def _stand_in(tmp_path: Path, body: str) -> Path:
    """An executable that plays eslogger (it checks it was called with eslogger's arguments)."""
    script = tmp_path / "eslogger"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys, time\n"
        "if sys.argv[1:] != ['open', 'exec', 'fork', 'exit', '--format', 'json']:\n"
        "    sys.exit('unexpected arguments: %r' % sys.argv[1:])\n" + body
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def pretend_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the OS gate is replaced: everything after it (process, pipes, parser) is real.
    monkeypatch.setattr(EsloggerSensor, "check_available", classmethod(lambda cls, eslogger="": None))


@pytest.mark.usefixtures("pretend_macos")
def test_missing_full_disk_access_is_reported_and_recovers_when_mdm_grants_it(tmp_path: Path) -> None:
    refused = tmp_path / "tcc-refuses"
    refused.touch()
    script = _stand_in(
        tmp_path,
        f"if __import__('os').path.exists({str(refused)!r}):\n"
        "    sys.stderr.write('Failed to create ES client: ES_NEW_CLIENT_RESULT_ERR_NOT_PERMITTED\\n')\n"
        "    sys.exit(71)\n"
        "time.sleep(60)\n",
    )
    sensor = EsloggerSensor(
        [CRED], lambda e: None, eslogger=str(script), startup_grace=0.5, restart_delay=0.2
    )
    sensor.start()  # refused: started, unhealthy, retrying
    try:
        health = sensor.health()
        assert not health.healthy and sensor.full_disk_access is False
        assert "Full Disk Access is missing" in (health.error or "") and "NOT_PERMITTED" in (
            health.error or ""
        )
        assert "tripkey-agent-pppc.mobileconfig" in (health.error or "")
        time.sleep(1.0)
        assert "Full Disk Access is missing" in (sensor.health().error or "")  # still refused, still said
        refused.unlink()  # the PPPC profile arrives
        deadline = time.monotonic() + 30
        while not sensor.health().healthy:
            assert time.monotonic() < deadline, sensor.health().error
            time.sleep(0.1)
        assert sensor.full_disk_access is True and sensor.restarts >= 1
    finally:
        sensor.stop()


@pytest.mark.usefixtures("pretend_macos")
def test_sensor_reads_events_and_restarts_eslogger_when_it_dies(tmp_path: Path) -> None:
    cat = proc(601, "/bin/cat", ppid=480)
    payload = tmp_path / "out.jsonl"
    payload.write_bytes(
        line(exec_msg(proc(601, "/bin/zsh", ppid=480), cat, ["cat", CRED])) + line(open_msg(cat, CRED))
    )
    script = _stand_in(
        tmp_path,
        f"sys.stdout.buffer.write(open({str(payload)!r}, 'rb').read()); sys.stdout.flush()\n"
        "time.sleep(0.6)\nsys.exit(3)\n",
    )
    received: list[ReadEvent] = []
    done = threading.Event()

    def collect(event: ReadEvent) -> None:
        received.append(event)
        if len(received) >= 2:
            done.set()

    sensor = EsloggerSensor([CRED], collect, eslogger=str(script), startup_grace=0.2, restart_delay=0.2)
    sensor.start()
    try:
        assert sensor.health().healthy
        assert done.wait(30), f"got {len(received)} events"
        assert sensor.restarts >= 1  # eslogger exited (status 3) and was started again
        assert [e.cmdline for e in received[:2]] == [("cat", CRED)] * 2
        assert all(e.sensor == "eslogger" and e.pid == 601 for e in received)
    finally:
        sensor.stop()
    assert sensor.stream.proc is None and not sensor.health().healthy


@pytest.mark.usefixtures("pretend_macos")
def test_an_eslogger_that_cannot_run_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    sensor = EsloggerSensor([CRED], lambda e: None, eslogger=str(tmp_path / "missing-eslogger"))
    with pytest.raises(SensorUnavailable, match="cannot run"):
        sensor.start()
