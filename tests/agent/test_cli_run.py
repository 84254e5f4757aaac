"""`tripkey-agent run` (agent.service) against a LIVE issuer: real fanotify sensor, reads logged and
uploaded with classification, tamper repaired and reported, heartbeat, loud sensor failure, SIGTERM."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.service import AgentService
from tests.support.agent import SEED, agent_config, make_users, seed
from tests.support.paths import REPO_ROOT, requires_root
from tests.support.selfreport import public_socket_dir, run_as


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


FAST = {"upload_interval": 0.5, "heartbeat_interval": 1.0, "check_interval": 60.0}


@pytest.fixture
def service_factory(tmp_path: Path, live_issuer: Any) -> Iterator[Callable[..., tuple[AgentService, Any]]]:
    started: list[tuple[AgentService, threading.Thread]] = []

    def start(**extra: Any) -> tuple[AgentService, Any]:
        passwd, users = make_users(tmp_path)
        seed(users[0])
        config = agent_config(tmp_path, live_issuer, passwd, users, **{**FAST, **extra})
        service = AgentService(config)
        result: dict[str, int] = {}
        thread = threading.Thread(target=lambda: result.setdefault("rc", service.run()), daemon=True)
        thread.start()
        started.append((service, thread))
        assert service.ready.wait(60), "service did not become ready"
        return service, users

    yield start
    for service, thread in started:
        service.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "service did not stop"


def issuer_get(issuer: Any, path: str) -> Any:
    response = issuer.request("GET", path, issuer.create_token("responder"))
    response.raise_for_status()
    return response.json()


@requires_root
def test_hostile_reader_names_and_huge_parent_command_lines_still_reach_the_issuer(
    tmp_path: Path, service_factory: Any, live_issuer: Any
) -> None:
    """Regression: CI's own `sh -c <script of 10 kB>` among the ancestors made the issuer refuse the
    whole read (422), and the agent discarded it. Here the reader also has an undecodable name."""
    service, users = service_factory(sensor="fanotify")
    alice = users[0]
    device_id = service.store.state.device_id
    reader = os.path.join(os.fsencode(tmp_path), b"r\xffcat")
    shutil.copy("/usr/bin/cat", reader)
    script = ": " * 10_000 + f'; "$0" {shlex.quote(str(alice.credentials))} >/dev/null; true'
    subprocess.run([b"bash", b"-c", script.encode(), reader], check=True)
    shown = os.fsdecode(reader).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    assert shown.endswith("r\\xffcat")
    rows = wait_for(lambda: [r for r in service.readlog.query() if r["exe"] == shown])
    assert rows, "the read by a reader with an undecodable name was not recorded"
    parent = rows[0]["ancestors"][0]
    assert parent["cmdline"][:2] == ["bash", "-c"] and parent["cmdline"][2].endswith(" chars]")
    uploaded = wait_for(
        lambda: [
            r
            for r in issuer_get(live_issuer, f"/v1/devices/{device_id}/reads?since=1h")["reads"]
            if r["event_id"] == rows[0]["event_id"]
        ]
    )
    assert uploaded and uploaded[0]["exe"] == shown
    assert service.spool.rejected() == 0


@requires_root
def test_read_is_logged_classified_and_uploaded(service_factory: Any, live_issuer: Any) -> None:
    service, users = service_factory(sensor="fanotify")
    alice = users[0]
    device_id = service.store.state.device_id
    subprocess.run(["cat", str(alice.credentials)], check=True, capture_output=True)
    rows = wait_for(lambda: [r for r in service.readlog.query() if r["exe"] and r["exe"].endswith("cat")])
    assert rows and rows[0]["path"] == str(alice.credentials) and rows[0]["classification"] == "shell_utility"
    reads = wait_for(lambda: issuer_get(live_issuer, f"/v1/devices/{device_id}/reads?since=1h")["reads"])
    mine = [r for r in reads if r["event_id"] == rows[0]["event_id"]]
    assert mine and mine[0]["classification"] == "shell_utility" and mine[0]["pid"] == rows[0]["pid"]
    # Heartbeat with the contract's fields reaches the issuer.
    device = wait_for(
        lambda: (d := issuer_get(live_issuer, f"/v1/devices/{device_id}"))["last_heartbeat_at"] and d
    )
    assert device["last_heartbeat_at"]
    assert service.store.state.sensor_health["healthy"] is True
    # The secret never reaches the read log, even if a reader puts it on its command line.
    secret = alice.credentials.read_text().split("aws_secret_access_key = ")[-1].split()[0]
    subprocess.run(["grep", "-c", secret, str(alice.credentials)], capture_output=True, check=False)
    assert wait_for(lambda: [r for r in service.readlog.query() if r["exe"] and r["exe"].endswith("grep")])
    assert secret not in json.dumps(service.readlog.query())
    # ... nor the spool, nor the issuer (the uploaded read event).
    grep_id = next(r["event_id"] for r in service.readlog.query() if r["exe"] and r["exe"].endswith("grep"))
    uploaded = wait_for(
        lambda: [
            r
            for r in issuer_get(live_issuer, f"/v1/devices/{device_id}/reads?since=1h")["reads"]
            if r["event_id"] == grep_id
        ]
    )
    assert uploaded and secret not in json.dumps(uploaded)
    assert secret not in (Path(service.config.state_dir) / "state.json").read_text()


def test_tamper_is_repaired_and_reported_to_the_issuer(service_factory: Any, live_issuer: Any) -> None:
    _service, users = service_factory(sensor="fanotify")
    alice = users[0]
    alice.credentials.write_bytes(SEED)
    assert wait_for(lambda: b"[prod-backup]" in alice.credentials.read_bytes(), 10)
    from issuer.models import AgentEvent

    def kinds() -> list[tuple[str, object]]:
        with live_issuer.session() as session:
            return [(e.kind, e.detail) for e in session.query(AgentEvent).all()]

    # The re-plant can land before its tamper event is spooled: wait for the event itself.
    assert wait_for(lambda: any(kind == "tamper" for kind, _ in kinds())), kinds()


def test_sensor_that_cannot_start_is_loud_and_planting_goes_on(
    service_factory: Any, live_issuer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    service, _users = service_factory(sensor="eslogger")  # macOS only: cannot start here
    assert all(ts.status == "planted" for ts in service.store.state.targets.values())
    health = service.store.state.sensor_health
    assert health["healthy"] is False and "eslogger" in health["error"]
    assert any("NOT being recorded" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    device_id = service.store.state.device_id
    device = wait_for(
        lambda: (d := issuer_get(live_issuer, f"/v1/devices/{device_id}"))["last_heartbeat_at"] and d
    )
    assert device["health"]["sensor"]["healthy"] is False
    assert "eslogger" in device["health"]["sensor"]["error"]


def test_sigterm_stops_cleanly(tmp_path: Path, live_issuer: Any) -> None:
    passwd, users = make_users(tmp_path)
    config = tmp_path / "agent.toml"
    targets = "".join(f'[[target]]\npath = "{u.credentials}"\nowner = "{u.name}"\n' for u in users)
    config.write_text(
        f'issuer_url = "{live_issuer.url}"\nenroll_token = "{live_issuer.create_token("enroll")}"\n'
        f'state_dir = "{tmp_path / "state"}"\nall_users = false\npasswd_file = "{passwd}"\n'
        f'sensor = "fanotify-notify"\nupload_interval = 0.5\n'
        f'selfreport_socket = "{tmp_path / "sr.sock"}"\n' + targets
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        state = tmp_path / "state" / "state.json"
        assert wait_for(lambda: state.exists() and json.loads(state.read_text()).get("sensor_health"), 60)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in err
    final = json.loads(state.read_text())
    assert final["service_pid"] is None and final["sensor_health"]["running"] is False
    assert all(t["status"] == "planted" for t in final["targets"].values())


def agent_events(issuer: Any, kind: str) -> list[Any]:
    from issuer.models import AgentEvent

    with issuer.session() as session:
        return [(e.path, e.detail) for e in session.query(AgentEvent).filter_by(kind=kind).all()]


def test_self_report_from_the_tray_reaches_the_issuer(service_factory: Any, live_issuer: Any) -> None:
    """Bob's tray reports on Bob's file; root, who has no canary here, is refused (SO_PEERCRED)."""
    from agent.selfreport.server import SelfReportError, send_self_report

    with public_socket_dir() as directory:
        socket_path = directory / "sr.sock"
        _service, users = service_factory(sensor="fanotify-notify", selfreport_socket=str(socket_path))
        bob = users[1]
        send = (
            "from pathlib import Path\n"
            "from agent.selfreport.server import SelfReportError, send_self_report\n"
            "for note in ('I ran cat on it by mistake', 'again'):\n"
            "    try:\n"
            f"        send_self_report(Path({str(socket_path)!r}), note=note)\n"
            "        print('OK')\n"
            "    except SelfReportError as exc:\n"
            "        print('REFUSED', exc)\n"
        )
        done = run_as(bob.uid, send)
        first, second = done.stdout.strip().splitlines()
        assert first == "OK", done.stderr
        assert second.startswith("REFUSED") and "just received" in second  # one per user per 10 s
        with pytest.raises(SelfReportError, match="no canary file is planted for you"):
            send_self_report(socket_path, note="root has no canary here")
    events = wait_for(lambda: agent_events(live_issuer, "self_report"))
    assert len(events) == 1
    path, detail = events[0]
    assert path == str(bob.credentials)
    assert detail == {"user": "bob", "note": "I ran cat on it by mistake"}


def test_revoked_device_token_triggers_reenrollment(service_factory: Any, live_issuer: Any) -> None:
    service, _ = service_factory(sensor="fanotify-notify")
    state = service.store.state
    device_id, old_token = state.device_id, state.device_token
    live_issuer.revoke_token(old_token)
    assert wait_for(lambda: state.device_token != old_token, 30)
    assert state.device_id == device_id  # the same device key maps to the same device
    before = state.last_heartbeat_at
    assert wait_for(lambda: state.last_heartbeat_at != before and state.last_heartbeat_error is None, 30)


def test_new_user_is_picked_up_by_the_periodic_rescan(tmp_path: Path, service_factory: Any) -> None:
    service, users = service_factory(sensor="fanotify", all_users=True, target=[])
    assert sorted(service.planter.paths) == sorted(str(u.credentials) for u in users)
    home = tmp_path / "home" / "carol"
    home.mkdir()
    os.chown(home, 23009, 23009)
    with open(service.config.passwd_file, "a") as fh:
        fh.write(f"carol:x:23009:23009::{home}:/bin/bash\n")
    service.periodic_pass()
    carol = str(home / ".aws" / "credentials")
    assert service.store.state.targets[carol].status == "planted"
    assert carol in service.watcher.paths and carol in service.planter.paths
    subprocess.run(["cat", carol], check=True, capture_output=True)  # the sensor watches it too
    assert wait_for(lambda: [r for r in service.readlog.query(path=carol)])


@pytest.mark.parametrize("name", ["auto", "fanotify", "fanotify-notify", "audit"])
def test_sensor_options_fit_every_linux_sensor(name: str) -> None:
    from agent.config import AgentConfig
    from agent.sensors import create_sensor
    from agent.sensors.base import SensorUnavailable
    from agent.service import sensor_options

    config = AgentConfig(sensor=name, fail_open_ms=250)
    try:
        sensor = create_sensor(name, ["/tmp/x/credentials"], lambda event: None, **sensor_options(config))
    except SensorUnavailable as exc:  # a host without that mechanism: fine, but never a TypeError
        pytest.skip(str(exc))
    if sensor.name.startswith("fanotify"):
        assert sensor.budget == 0.25
