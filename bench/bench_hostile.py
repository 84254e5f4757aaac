"""What defending against hostile input costs, and what it keeps working.

* Agent event batches are validated one event at a time (so one bad event is refused alone), with a
  C-speed scan for text no database can hold: CPU ms per batch of 500 read events, side by side with
  validating the batch as one list (the way before issue 11). process_time, so other jobs on the
  machine do not count.
* The self-report socket: round trip of a legitimate report with the socket idle, and while another
  local user holds 40 hostile connections open (drippers, nested brackets, 1 MB blobs). As root only
  (the flood runs as another uid).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter

from agent.selfreport.server import SelfReportServer, send_self_report
from issuer.api.routers.events import _validate
from issuer.api.schemas import AgentEventIn
from tests.support.selfreport import MALLORY_UID, public_socket_dir, start_as

TITLE = "cost of hostile-input defences"
BATCH = 500


def _read(i: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "kind": "read",
        "time": "2026-11-22T10:00:00Z",
        "path": "/home/user000/.aws/credentials",
        "read": {
            "pid": 10_000 + i,
            "ppid": 4200,
            "exe": "/usr/bin/python3.11",
            "cmdline": ["python3", "/usr/local/bin/aws", "s3", "ls", "--profile", "prod-backup"],
            "uid": 1000,
            "user": "user000",
            "cwd": "/home/user000",
            "access": "open",
            "sensor": "fanotify",
            "classification": "aws_tool",
            "ancestors": [{"pid": 4200, "exe": "/usr/bin/bash", "cmdline": ["bash"], "uid": 1000}],
        },
    }


def _cpu_ms(func: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.process_time()
        func()
        times.append((time.process_time() - start) * 1000)
    return times


def _row(case: str, times: list[float], note: str = "") -> dict[str, Any]:
    return {
        "case": case,
        "runs": len(times),
        "median_ms": round(statistics.median(times), 2),
        "min_ms": round(min(times), 2),
        "note": note,
    }


def _validation() -> list[dict[str, Any]]:
    items = [_read(i) for i in range(BATCH)]
    whole = TypeAdapter(list[AgentEventIn])
    rows = [
        _row(
            f"validate {BATCH} read events as one list",
            _cpu_ms(lambda: [e.payload() for e in whole.validate_python(items)], 50),
            "before: one bad event refused the batch (CPU ms)",
        ),
        _row(
            f"validate {BATCH} read events one by one",
            _cpu_ms(lambda: _validate(items), 50),
            "now: a bad event is refused alone (CPU ms)",
        ),
    ]
    hostile = [{**item, "path": item["path"] + "\ud800\x00"} for item in items]
    rows.append(
        _row(
            f"validate {BATCH} events, each with NUL and a surrogate",
            _cpu_ms(lambda: _validate(hostile), 20),
            "slow path: text spelled out (CPU ms)",
        )
    )
    return rows


FLOOD = """
path = {path!r}
socks = []
for i in range(40):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    with contextlib.suppress(OSError):
        if i % 4 == 1:
            s.sendall(b"[" * 3000)
        elif i % 4 == 2:
            s.setblocking(False)
            s.send(b"x" * (1024 * 1024))
    socks.append(s)
print("connected", flush=True)
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    for s in socks[::4]:
        with contextlib.suppress(OSError):
            s.send(b" ")
    time.sleep(0.1)
"""


def _selfreport() -> list[dict[str, Any]]:
    if os.geteuid() != 0:
        note = "not run: needs root (the flood runs as another uid)"
        return [{"case": "self-report under a flood", "note": note}]
    rows = []
    with public_socket_dir() as directory:
        server = SelfReportServer(directory / "sr.sock", lambda report: None)
        server.start()
        try:

            def report() -> None:
                send_self_report(server.socket_path, note="bench", timeout=10)

            idle = [_wall_ms(report) for _ in range(30)]
            rows.append(_row("self-report round trip, socket idle", idle, "wall ms"))
            flood = start_as(MALLORY_UID, FLOOD.format(path=str(server.socket_path), seconds=20))
            try:
                assert flood.stdout is not None
                flood.stdout.readline()
                busy = [_wall_ms(report) for _ in range(30)]
            finally:
                flood.kill()
                flood.communicate()
            rows.append(
                _row("self-report round trip, 40 hostile connections", busy, "another uid floods; wall ms")
            )
        finally:
            server.stop()
    return rows


def _wall_ms(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return (time.perf_counter() - start) * 1000


def run() -> list[dict[str, Any]]:
    return _validation() + _selfreport()
