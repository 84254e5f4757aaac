"""The "agent" of bench_sensors: one sensor in its own process, under the real deadman supervisor.

    python -m bench._sensor_host --sensor NAME --target FILE --workdir DIR [--churn BIGFILE]

The supervisor (agent.runtime.supervisor, as `tripkey-agent run` uses it) forks the host; the host starts
the sensor (agent.sensors.create_sensor, or the bench's inotify baseline), hands it the deadman
like the service does, and appends every event as a JSON line to DIR/events.jsonl (a stand-in for
the service's consumer). With --churn it also runs the agent's real repair watcher on BIGFILE
(a stand-in planter inspects it with the real credentials-file parser, as Planter.ensure does),
started by SIGUSR2. DIR/ready holds the host's pid once it senses; SIGUSR1 writes DIR/health.json;
SIGTERM (to the supervisor) stops it cleanly.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from agent.events.model import ReadEvent
from agent.runtime.deadman import Deadman
from agent.runtime.supervisor import supervise


class _Inspector:
    """What the repair watcher asks of a planter; `ensure` parses the file as the planter does."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.inspections = 0

    def is_writing(self, path: str) -> bool:
        return False

    def is_own_content(self, path: str) -> bool:
        return False

    def target(self, path: str) -> str | None:
        return path if path == self.path else None

    def ensure(self, target: str, *, hint: str | None = None) -> None:
        from agent.credfile.edit import inspect_file

        inspect_file(Path(target), "prod-backup", set(), owner_uid=os.stat(target).st_uid)
        self.inspections += 1


def build_sensor(name: str, paths: list[str], callback: Any, *, no_limits: bool = False) -> Any:
    if name == "inotify":
        from bench._inotify_baseline import InotifyPsutilBaseline

        return InotifyPsutilBaseline(paths, callback)
    from agent.sensors import create_sensor

    if no_limits and name.startswith("fanotify"):
        return create_sensor(name, paths, callback, switch_interval=None)
    return create_sensor(name, paths, callback)


def _remove_limits() -> None:
    """The agent before issue #10's fix: every change inspected at once, the default GIL switch."""
    from agent.planting import repair

    repair.MIN_GAP, repair.COST_FACTOR = 0.0, 0.0


def host(args: argparse.Namespace, deadman: Deadman) -> int:
    gc.collect()
    gc.freeze()  # as agent.service.run_service does: short full collections
    workdir = Path(args.workdir)
    out = (workdir / "events.jsonl").open("a", buffering=1)
    lock = threading.Lock()

    def record(event: ReadEvent) -> None:
        line = json.dumps(event.to_dict(), default=str)
        with lock:
            out.write(line + "\n")

    if args.no_limits:
        _remove_limits()
    sensor = build_sensor(args.sensor, [args.target], record, no_limits=args.no_limits)
    sensor.start()
    deadman.start()
    petter = deadman.delegate(f"the {args.sensor} sensor's event path")
    if not sensor.attach_deadman(petter):
        petter.release()
    inspector = _Inspector(args.churn) if args.churn else None
    watchers: list[Any] = []

    def start_watcher(*_: object) -> None:
        # Started for the churn scenario only, so the idle wakeups are the sensor's (and the
        # deadman's): watchdog's observer threads add their own.
        from agent.planting.repair import RepairWatcher

        if inspector is not None and not watchers:
            watcher = RepairWatcher(inspector, debounce=0.2)  # type: ignore[arg-type]
            watcher.start([inspector.path])
            watchers.append(watcher)

    stop = threading.Event()

    def dump_health(*_: object) -> None:
        health = dict(sensor.health().to_dict())
        health["inspections"] = inspector.inspections if inspector else 0
        tmp = workdir / "health.json.tmp"
        tmp.write_text(json.dumps(health, default=str))
        tmp.replace(workdir / "health.json")

    signal.signal(signal.SIGUSR1, dump_health)
    signal.signal(signal.SIGUSR2, start_watcher)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    (workdir / "ready").write_text(str(os.getpid()))
    while not stop.wait(3600):
        pass
    for watcher in watchers:
        watcher.stop()
    sensor.stop()
    dump_health()
    deadman.stop()
    out.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._sensor_host")
    parser.add_argument("--sensor", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--churn")
    parser.add_argument("--deadman-seconds", type=float, default=1.5)
    parser.add_argument("--no-limits", action="store_true", help="without issue #10's churn limits")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    return supervise(lambda deadman: host(args, deadman), args.deadman_seconds)


if __name__ == "__main__":
    sys.exit(main())
