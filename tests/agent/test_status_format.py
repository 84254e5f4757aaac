"""How `tripkey-agent status` words the sensor line (the text an operator reads on a host)."""

from __future__ import annotations

from typing import Any

from agent.status import format_status


def _data(sensor: dict[str, Any] | None, running: bool) -> dict[str, Any]:
    return {
        "agent_version": "0.1.0",
        "state_dir": "/var/lib/tripkey",
        "enrolled": False,
        "issuer_url": None,
        "service": {"running": running, "pid": 42 if running else None},
        "sensor": sensor,
        "spool": None,
        "last_event_at": None,
        "last_heartbeat_at": None,
        "last_heartbeat_error": None,
        "device_id": None,
        "enrolled_at": None,
        "profile": "prod-backup",
        "targets": [],
    }


def _sensor_line(data: dict[str, Any]) -> str:
    return next(line for line in format_status(data).splitlines() if line.startswith("sensor:"))


HEALTHY = {"name": "fanotify", "mode": "permission", "healthy": True, "lost_events": 3}


def test_running_healthy_sensor_shows_lost_events() -> None:
    assert "healthy, 3 lost events" in _sensor_line(_data(HEALTHY, running=True))


def test_a_sensor_that_cannot_start_is_loud() -> None:
    broken = {"name": "fanotify", "mode": "permission", "healthy": False, "error": "needs root"}
    assert _sensor_line(_data(broken, running=True)) == "sensor:     fanotify NOT WORKING: needs root"


def test_weaker_mode_is_labelled() -> None:
    weak = {**HEALTHY, "name": "fanotify-notify", "mode": "notify", "weaker": True}
    assert "WEAKER" in _sensor_line(_data(weak, running=True))


def test_a_cleanly_stopped_service_is_not_reported_as_a_broken_sensor() -> None:
    stopped = {**HEALTHY, "healthy": False, "error": "stopped", "running": False}
    line = _sensor_line(_data(stopped, running=False))
    assert "NOT WORKING" not in line and "stopped with the service" in line


def _line(data: dict[str, Any], prefix: str) -> str:
    return next(line for line in format_status(data).splitlines() if line.startswith(prefix))


def test_armed_deadman_says_who_kills_a_stopped_agent_and_when() -> None:
    deadman = {
        "armed": True, "kind": "systemd", "timeout_ms": 1500,
        "petted_by": "the fanotify sensor's event path", "detail": "systemd watchdog",
    }  # fmt: skip
    line = _line(_data({**HEALTHY, "deadman": deadman}, running=True), "deadman:")
    assert line == (
        "deadman:    armed (systemd: SIGKILL after 1500 ms without a sign of life from "
        "the fanotify sensor's event path)"
    )


def test_deadman_that_is_off_is_said_plainly() -> None:
    deadman = {"armed": False, "kind": "off", "detail": "turned off (deadman_seconds = 0)"}
    line = _line(_data({**HEALTHY, "deadman": deadman}, running=True), "deadman:")
    assert line == "deadman:    NOT armed (turned off (deadman_seconds = 0))"


def test_reads_that_could_not_be_kept_are_shown_loudly() -> None:
    data = {**_data(HEALTHY, running=True), "readlog_failed": 33, "spool_failed": 30}
    assert _line(data, "LOST:") == (
        "LOST:       33 read(s) could not be written to the read log, 30 event(s) could not be "
        "queued for upload (full disk? see the log)"
    )
    assert _line(_data(HEALTHY, running=True), "lost:").startswith("lost:       none")
