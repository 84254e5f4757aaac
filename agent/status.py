"""`tripkey-agent status`: what the agent did, from its state file (no issuer needed).

Enrollment, each target (profile, access key id — never the secret —, expiry, last check, last
error), the sensor health as last recorded by `run`, and the spool counts.
"""

from __future__ import annotations

import os
from typing import Any

from agent import __version__
from agent.clock import to_iso
from agent.config import AgentConfig
from agent.events.bounds import visible
from agent.planting.schedule import renews_at
from agent.reporting.losses import NAMES as LOSS_NAMES
from agent.reporting.losses import read_losses
from agent.reporting.spool import spool_counts
from agent.state import SPOOL_FILE, StateStore, TargetState


def _renews_at(ts: TargetState, config: AgentConfig) -> str | None:
    """When the agent will renew (short-term: before expiry) or rotate (long-term) this credential."""
    due = renews_at(ts, config)
    return to_iso(due[0]) if due else None


def open_store(config: AgentConfig) -> StateStore | None:
    """The state, read-only (nothing is created or tightened); None before the first run."""
    if not os.path.isdir(config.state_dir):
        return None
    return StateStore(config.state_dir, create=False)


def status_data(config: AgentConfig) -> dict[str, Any]:
    store = open_store(config)
    st = store.state if store else None
    pid = st.service_pid if st else None
    running = pid is not None and pid > 0 and _alive(pid)
    targets = []
    for ts in sorted(st.targets.values(), key=lambda t: t.path) if st else ():
        targets.append(
            {
                "path": ts.path,
                "local_user": ts.owner,
                "profile": ts.profile,
                "status": ts.status,
                "access_key_id": ts.access_key_id,
                "credential_id": ts.credential_id,
                "backend": ts.backend,
                "expires_at": ts.expires_at,
                "renews_at": _renews_at(ts, config),
                "created_at": ts.created_at,
                "last_check": ts.last_check,
                "last_error": ts.last_error,
                "next_attempt_at": ts.next_attempt_at,
                "tamper_count": ts.tamper_count,
            }
        )
    return {
        "agent_version": __version__,
        "state_dir": config.state_dir,
        "issuer_url": (st.issuer_url if st and st.issuer_url else config.issuer_url),
        "profile": config.profile,
        "enrolled": bool(st and st.enrolled),
        "device_id": st.device_id if st else None,
        "enrolled_at": st.enrolled_at if st else None,
        "service": {
            "running": running,
            "pid": pid if running else None,
            "started_at": st.service_started_at if st else None,
        },
        "sensor": st.sensor_health if st else None,
        "selfreport": st.selfreport_health if st else None,
        "targets": targets,
        "spool": spool_counts(os.path.join(config.state_dir, SPOOL_FILE)),
        # Written in place even on a full disk (agent.reporting.losses), unlike state.json.
        **(read_losses(config.state_dir) if store else dict.fromkeys(LOSS_NAMES, 0)),
        "last_event_at": st.last_event_at if st else None,
        "last_heartbeat_at": st.last_heartbeat_at if st else None,
        "last_heartbeat_error": st.last_heartbeat_error if st else None,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _deadman_lines(sensor: dict[str, Any] | None) -> list[str]:
    """Whether a stopped or wedged agent is killed from outside (releasing any reader it holds)."""
    deadman = (sensor or {}).get("deadman")
    if not isinstance(deadman, dict):
        return []
    if deadman.get("armed"):
        return [
            f"deadman:    armed ({deadman.get('kind')}: SIGKILL after {deadman.get('timeout_ms')} ms "
            f"without a sign of life from {deadman.get('petted_by')})"
        ]
    return [f"deadman:    NOT armed ({deadman.get('detail')})"]


def _selfreport_line(health: dict[str, Any] | None, service_running: bool) -> str:
    if health is None:
        return "unknown (the service has not run yet)"
    if not health.get("enabled"):
        return "disabled (selfreport = false)"
    if not service_running:
        return "stopped with the service"
    counts = (
        f"{health.get('served', 0)} served, {health.get('refused', 0)} refused, {health.get('busy', 0)} busy"
    )
    if health.get("running"):
        return f"listening on {health.get('socket')} ({counts})"
    return f"NOT RUNNING: {health.get('error')} (reports from the tray are lost until it restarts)"


def format_status(data: dict[str, Any]) -> str:
    """The status for a person. Paths, user names and errors can carry control characters (a user
    names their own files): each line is passed through `visible`; `--json` stays exact."""
    lines = [f"Tripkey agent {data['agent_version']}  (state dir {data['state_dir']})"]
    if data["enrolled"]:
        lines.append(
            f"enrolled:   device {data['device_id']} at {data['issuer_url']} since {data['enrolled_at']}"
        )
    else:
        lines.append(f"enrolled:   NO (issuer {data['issuer_url'] or 'not configured'})")
    svc = data["service"]
    lines.append(f"service:    {'running, pid ' + str(svc['pid']) if svc['running'] else 'not running'}")
    sensor = data["sensor"]
    if sensor is None:
        lines.append("sensor:     unknown (the service has not run yet)")
    elif not svc["running"] and sensor.get("running") is False:
        # The service stopped its sensor on the way out: that is not a sensor failure.
        lines.append(f"sensor:     {sensor.get('name')} ({sensor.get('mode')}), stopped with the service")
    elif sensor.get("healthy"):
        extra = " (WEAKER mode)" if sensor.get("weaker") else ""
        lines.append(
            f"sensor:     {sensor.get('name')} ({sensor.get('mode')}) healthy{extra}, "
            f"{sensor.get('lost_events', 0)} lost events"
        )
    else:
        lines.append(f"sensor:     {sensor.get('name')} NOT WORKING: {sensor.get('error')}")
    if sensor and sensor.get("detail"):
        lines.append(f"            {sensor['detail']}")
    for gap in (sensor or {}).get("uncovered") or ():
        lines.append(f"            not covered: {gap}")
    lines.extend(_deadman_lines(sensor))
    lines.append(f"self-report: {_selfreport_line(data.get('selfreport'), svc['running'])}")
    spool = data["spool"]
    lines.append(
        "spool:      "
        + (
            "empty (never used)"
            if spool is None
            else f"{spool['pending']} pending, {spool['dropped']} dropped, {spool['rejected']} rejected"
        )
    )
    readlog_failed, spool_failed = data.get("readlog_failed", 0), data.get("spool_failed", 0)
    if readlog_failed or spool_failed:
        lines.append(
            f"LOST:       {readlog_failed} read(s) could not be written to the read log, "
            f"{spool_failed} event(s) could not be queued for upload (full disk? see the log)"
        )
    else:
        lines.append("lost:       none (every read seen was written to the read log and the spool)")
    lines.append(
        f"last read:  {data['last_event_at'] or 'none'}   last heartbeat: "
        f"{data['last_heartbeat_at'] or 'never'}"
        + (f" (error: {data['last_heartbeat_error']})" if data["last_heartbeat_error"] else "")
    )
    lines.append(f"profile:    {data['profile']}")
    if not data["targets"]:
        lines.append("targets:    none planted")
        return "\n".join(visible(line) for line in lines)
    header = (
        "PATH",
        "LOCAL USER",
        "PROFILE",
        "STATUS",
        "ACCESS KEY ID",
        "EXPIRES",
        "RENEWS",
        "LAST CHECK",
        "ERROR",
    )
    rows = [header] + [
        tuple(
            visible(str(cell))
            for cell in (
                t["path"],
                t["local_user"],
                t["profile"],
                t["status"],
                t["access_key_id"] or "-",
                t["expires_at"] or "never (long-term)",
                t["renews_at"] or "-",
                t["last_check"] or "-",
                t["last_error"] or "",
            )
        )
        for t in data["targets"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines.append("")
    lines.extend(
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows
    )
    return "\n".join(visible(line.rstrip()) for line in lines)


__all__ = ["format_status", "open_store", "status_data"]
