"""Acceptance: the REAL `tripkey-agent run` (fanotify permission sensor, LIVE issuer) is stopped with
SIGSTOP. A reader of the planted file gets through within 2 s (the supervisor kills the stopped agent,
which closes its fanotify fd and releases the reader); a reader or writer of ~/.aws/config is never
held at all (it is not marked); the supervisor, which has no fanotify fd, restarts the agent, which
records reads again; status says the deadman is armed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.agent import make_users, seed, wait_for
from tests.support.paths import VENV_BIN, requires_root

pytestmark = requires_root


def _fanotify_fds(pid: int) -> int:
    count = 0
    for entry in os.scandir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(entry.path) == "anon_inode:[fanotify]"
        except OSError:
            continue
    return count


def _state(state_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _running_agent(state_dir: Path, not_pid: int | None = None) -> int | None:
    state = _state(state_dir)
    health = state.get("sensor_health") or {}
    pid = state.get("service_pid")
    # The health must be this agent's (recorded after it started), not its predecessor's.
    fresh = (health.get("recorded_at") or "") >= (state.get("service_started_at") or "~")
    if pid and pid != not_pid and fresh and health.get("healthy") and health.get("running"):
        return int(pid)
    return None


def _recorded_pids(config: Path, env: dict[str, str]) -> set[int]:
    out = subprocess.run(
        [str(VENV_BIN / "tripkey-agent"), "reads", "--json", "--config", str(config)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    return {row["pid"] for row in json.loads(out.stdout or "{}").get("reads", [])}


def _timed(argv: list[str], timeout: float = 20.0) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, timeout=timeout)
    return time.monotonic() - started


def test_a_stopped_agent_holds_no_reader_for_more_than_two_seconds(tmp_path: Path, live_issuer: Any) -> None:
    passwd, users = make_users(tmp_path)
    alice = users[0]
    seed(alice)
    aws_config = alice.credentials.with_name("config")
    aws_config.write_text("[default]\nregion = eu-west-1\n")
    state_dir = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'issuer_url = "{live_issuer.url}"\nenroll_token = "{live_issuer.create_token("enroll")}"\n'
        f'state_dir = "{state_dir}"\nall_users = false\npasswd_file = "{passwd}"\n'
        'sensor = "fanotify"\nselfreport = false\nupload_interval = 0.5\nheartbeat_interval = 1.0\n'
        f'[[target]]\npath = "{alice.credentials}"\nowner = "{alice.name}"\n'
    )
    config.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIPKEY_", "NOTIFY_", "WATCHDOG_"))}
    log = (tmp_path / "agent.log").open("w")
    supervisor = subprocess.Popen(
        [str(VENV_BIN / "tripkey-agent"), "run", "--config", str(config)], env=env, stderr=log
    )
    agent: int | None = None
    try:
        agent = wait_for(lambda: _running_agent(state_dir), 60)
        assert agent, (tmp_path / "agent.log").read_text()
        assert (
            agent != supervisor.pid
            and f"PPid:\t{supervisor.pid}\n" in Path(f"/proc/{agent}/status").read_text()
        )
        assert _fanotify_fds(agent) == 1 and _fanotify_fds(supervisor.pid) == 0  # it cannot hold anyone
        status = subprocess.run(
            [str(VENV_BIN / "tripkey-agent"), "status", "--json", "--config", str(config)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        deadman = json.loads(status.stdout)["sensor"]["deadman"]
        assert deadman["armed"] is True and deadman["kind"] == "supervisor", deadman
        assert deadman["timeout_ms"] == 1500 and "fanotify" in deadman["petted_by"]

        os.kill(agent, signal.SIGSTOP)
        stopped_at = time.monotonic()
        # Not marked, so never held, even now: ~/.aws/config read and written by the AWS tools.
        assert _timed(["cat", str(aws_config)]) < 1.0
        assert _timed(["sh", "-c", f"echo '# note' >> {aws_config}"]) < 1.0
        # The planted file: held until the supervisor kills the stopped agent, 2 s at most.
        held = _timed(["cat", str(alice.credentials)])
        assert held < 2.0, f"a reader waited {held:.2f} s behind a stopped agent"
        assert time.monotonic() - stopped_at < 3.0
        # Restarted (1 s backoff); the new agent records reads again.
        restarted = wait_for(lambda: _running_agent(state_dir, not_pid=agent), 60)
        assert restarted and restarted != agent, (tmp_path / "agent.log").read_text()
        reader = subprocess.Popen(["cat", str(alice.credentials)], stdout=subprocess.DEVNULL)
        assert reader.wait(timeout=10) == 0
        assert wait_for(lambda: reader.pid in _recorded_pids(config, env), 20)
        text = (tmp_path / "agent.log").read_text()
        assert "did not answer for 1.5 s" in text and "restarting it in 1 s" in text
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0, (tmp_path / "agent.log").read_text()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(timeout=10)
        if agent is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent, signal.SIGKILL)  # a stopped agent must never outlive the test
        log.close()
