"""Cost of making a read event safe to store and send: birth (printable text, the coarse argv cut,
redaction) and the exact cut by wire cost (agent.events.bounds), per event.

Goal: a typical read costs well under a millisecond; even the largest event a reader can stage
(64 ancestors, each with a 64 KiB command line of the costliest characters) must not stall the
agent's consumer for long, and its upload body stays under the issuer's 1 MiB default.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from agent.events.bounds import bound_event
from agent.events.model import ProcessInfo, ReadEvent
from agent.reporting.payloads import read_event_payload

TITLE = "read event bounds: ms per event (birth + exact cut + payload)"
NOW = dt.datetime.now(dt.UTC)
COSTLY = "\U0001f600\x01\udcff"  # an astral emoji, a control character, an undecodable byte


def _typical() -> dict[str, Any]:
    chain = (
        ProcessInfo(pid=900, exe="/usr/bin/bash", cmdline=("-bash",), uid=1000),
        ProcessInfo(pid=800, exe="/usr/sbin/sshd", cmdline=("sshd: alice@pts/0",), uid=0),
        ProcessInfo(pid=1, exe="/usr/lib/systemd/systemd", cmdline=("/sbin/init",), uid=0),
    )
    return {"exe": "/usr/bin/cat", "cmdline": ("cat", "/home/alice/.aws/credentials"), "ancestors": chain}


def _ci_runner() -> dict[str, Any]:
    script = ": " * 5_000 + "; make test"
    chain = (
        ProcessInfo(pid=950, exe="/usr/bin/make", cmdline=("make", "test"), uid=0),
        ProcessInfo(pid=940, exe="/usr/bin/dash", cmdline=("sh", "-c", script), uid=0),
        ProcessInfo(pid=1, exe="/sbin/init", cmdline=("/sbin/init",), uid=0),
    )
    return {"exe": "/usr/bin/cat", "cmdline": ("cat", "credentials"), "ancestors": chain}


def _hostile() -> dict[str, Any]:
    argv = (COSTLY * 7_000, *(COSTLY * 40 for _ in range(300)))  # ~64 KiB, what procinfo reads at most
    ancestor = ProcessInfo(pid=7, exe="/" + COSTLY * 1_000, cmdline=argv, uid=0)
    return {"exe": "/" + COSTLY * 1_000, "cmdline": argv, "ancestors": (ancestor,) * 64}


def _measure(name: str, fields: Callable[[], dict[str, Any]], runs: int) -> dict[str, Any]:
    raw = fields()  # captured already: only the agent's own work is timed
    times, body = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        event = ReadEvent(time=NOW, path="/home/alice/.aws/credentials", pid=4242, sensor="bench", **raw)
        payload = read_event_payload(bound_event(event, ["a-planted-secret"]), str(uuid.uuid4()), "unknown")
        times.append((time.perf_counter() - start) * 1000)
        body = len(json.dumps({"events": [payload]}))
    times.sort()
    return {
        "case": name,
        "runs": runs,
        "median_ms": round(statistics.median(times), 3),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 3),
        "max_ms": round(times[-1], 3),
        "body_bytes": body,
    }


def run() -> list[dict[str, Any]]:
    return [
        _measure("typical cat, 3 ancestors", _typical, 2000),
        _measure("CI runner: sh -c with a 10 kB script", _ci_runner, 500),
        _measure("largest possible: 64 x 64 KiB argv", _hostile, 20),
    ]
