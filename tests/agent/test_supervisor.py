"""agent.runtime.supervisor, the deadman for agents not under a systemd watchdog, with stand-in agents.

Each scenario runs the real Supervisor in a fresh interpreter (it forks, and forking pytest with its
threads would be unsafe); the "agent" is a function that pets through the real PipeDeadman and then
misbehaves: stops itself (SIGSTOP), exits with a code, dies of a signal, or shuts down on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import osflags
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.skipif(not osflags.LINUX, reason="the supervisor is Linux-only")

HARNESS = """
import json, os, signal, sys, threading, time, logging
from pathlib import Path
from agent.runtime.supervisor import Supervisor
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
work = Path(sys.argv[1])
scenario = sys.argv[2]

def agent(deadman):
    runs = sorted(work.glob("run-*"))
    me = work / f"run-{len(runs)}"
    me.write_text(json.dumps({"pid": os.getpid(), "t": time.monotonic()}))
    deadman.start()  # the service's petter thread: relaxed (30 s) until a sensor takes over
    if scenario == "relaxed-stop" and not runs:
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGSTOP)  # the test resumes us after 2 s
        return 5
    # A stand-in for a sensor that holds readers: it pets from its own thread, on the tight timeout.
    petter = deadman.delegate("stand-in sensor")
    def pet_forever():
        while True:
            petter.pet()
            time.sleep(petter.interval)
    if scenario != "wedged-delegate":
        threading.Thread(target=pet_forever, daemon=True).start()
    if scenario == "stop-once" and not runs:
        time.sleep(0.3)
        (work / "stopping").write_text(str(time.monotonic()))
        os.kill(os.getpid(), signal.SIGSTOP)
    if scenario == "exit-3":
        return 3
    if scenario == "crash-once" and not runs:
        os.kill(os.getpid(), signal.SIGKILL)
    if scenario == "wedged-delegate" and not runs:
        time.sleep(30)  # the stand-in sensor never pets, and the service thread does not cover
    if scenario in ("sigterm", "forever"):
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        while not stop:
            time.sleep(0.05)
        (work / "clean-stop").write_text("yes")
        return 0
    return 0

sup = Supervisor(agent, 1.0, first_delay=0.2, healthy_after=60)
code = sup.run()
(work / "result").write_text(json.dumps({"code": code, "kills": sup.kills, "restarts": sup.restarts,
                                         "t": time.monotonic()}))
sys.exit(code)
"""


def _start(tmp_path: Path, scenario: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(tmp_path), scenario],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], tmp_path: Path) -> tuple[dict[str, float], str]:
    _, err = proc.communicate(timeout=30)
    return json.loads((tmp_path / "result").read_text()), err


def _runs(tmp_path: Path) -> list[dict[str, float]]:
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("run-*"))]


def _wait(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)


def test_a_stopped_agent_is_killed_within_the_timeout_and_restarted(tmp_path: Path) -> None:
    proc = _start(tmp_path, "stop-once")
    result, err = _finish(proc, tmp_path)
    assert (result["code"], result["kills"], result["restarts"]) == (0, 1, 1), err
    first, second = _runs(tmp_path)
    assert first["pid"] != second["pid"]
    stopped_at = float((tmp_path / "stopping").read_text())
    # killed 1 s (the timeout) after the last pet, restarted 0.2 s later (first backoff step)
    assert second["t"] - stopped_at < 1.0 + 0.2 + 1.0, err
    assert "did not answer for 1.0 s" in err and "restarting it in" in err


def test_a_delegate_that_never_pets_gets_the_agent_killed(tmp_path: Path) -> None:
    """A sensor that took over petting and wedged: the service thread must not cover for it."""
    result, err = _finish(_start(tmp_path, "wedged-delegate"), tmp_path)
    assert (result["code"], result["kills"], result["restarts"]) == (0, 1, 1), err


def test_an_agent_that_exits_is_not_restarted_and_its_code_is_kept(tmp_path: Path) -> None:
    result, err = _finish(_start(tmp_path, "exit-3"), tmp_path)
    assert (result["code"], result["kills"], result["restarts"]) == (3, 0, 0), err
    assert len(_runs(tmp_path)) == 1


def test_an_agent_killed_from_outside_is_restarted(tmp_path: Path) -> None:
    result, err = _finish(_start(tmp_path, "crash-once"), tmp_path)
    assert (result["code"], result["kills"], result["restarts"]) == (0, 0, 1), err
    assert "died of signal 9" in err


def test_sigterm_is_passed_to_the_agent_which_stops_cleanly(tmp_path: Path) -> None:
    proc = _start(tmp_path, "sigterm")
    _wait(lambda: _runs(tmp_path))
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    result, err = _finish(proc, tmp_path)
    assert (result["code"], result["kills"], result["restarts"]) == (0, 0, 0), err
    assert (tmp_path / "clean-stop").read_text() == "yes"


def test_the_agent_dies_with_its_supervisor_even_on_sigkill(tmp_path: Path) -> None:
    proc = _start(tmp_path, "forever")
    _wait(lambda: _runs(tmp_path))
    (agent,) = _runs(tmp_path)
    pid = int(agent["pid"])
    assert Path(f"/proc/{pid}/comm").read_text().strip() != "tripkey-deadman"
    assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "tripkey-deadman"
    proc.kill()
    proc.wait(timeout=10)
    _wait(
        lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_an_agent_whose_sensor_holds_no_reader_gets_the_relaxed_timeout(tmp_path: Path) -> None:
    """Before a sensor takes over (and for audit/eBPF) the agent asks for 30 s: a stopped agent
    then holds nobody, and the idle agent pets every 10 s instead of twice a second."""
    proc = _start(tmp_path, "relaxed-stop")
    _wait(lambda: _runs(tmp_path))
    pid = int(_runs(tmp_path)[0]["pid"])
    _wait(lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T")
    time.sleep(2.0)  # twice the tight timeout
    assert Path(f"/proc/{pid}").exists(), "killed on the tight timeout although it holds no reader"
    os.kill(pid, signal.SIGCONT)
    result, err = _finish(proc, tmp_path)
    assert (result["code"], result["kills"]) == (5, 0), err


def test_the_supervisor_reads_pets_and_timeout_messages_in_any_chunking() -> None:
    from agent.runtime.supervisor import Supervisor

    sup = Supervisor(lambda deadman: 0, 1.5)
    assert sup._heard(b"..") and sup.timeout == 1.5
    assert sup._heard(b".T300") is True and sup.timeout == 1.5  # half a message: a pet so far
    assert sup._heard(b"00\n") is True and sup.timeout == 30.0
    assert sup._heard(b"T1500\n.") and sup.timeout == 1.5
    assert sup._heard(b"T99999999\n") and sup.timeout == 600.0  # clamped
    assert sup._heard(b"T1\n") and sup.timeout == 0.3
    assert sup._heard(b"Tnope\n") and sup.timeout == 0.3  # ignored, logged
    assert sup._heard(b"") is False
