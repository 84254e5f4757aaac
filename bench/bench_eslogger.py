r"""CPU cost of the eslogger parser on a recorded-shape stream of 100,000 lines, with and without
the byte-level open filter (agent/sensors/_eslogger_filter.py), in the same run.

eslogger cannot filter opens by path, so a busy Mac streams tens of thousands of opens per second
of files the agent does not watch. The stream here is built from the recorded eslogger lines in
tests/data/eslogger/ (macOS 15 exec/exit, macOS 26 fork: real key order, `\/` escaping, real field
sizes) with varied pids and paths, one open of the planted file per 10,000 lines and the rest opens
of other files, with two shares of exec/fork/exit: 1% (a laptop, where opens outnumber process
events by far) and 8% (a build server compiling). Goal: a few % of one core at 20,000 lines/s.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from agent.sensors._eslogger_parse import EsloggerParser

TITLE = "eslogger parser: CPU per 100,000 lines of a recorded-shape stream"
DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "eslogger"
CRED = "/Users/alice/.aws/credentials"
LINES = 100_000
RATE = 20_000  # lines/s on a busy laptop
OTHER_FILES = (
    "/System/Library/Frameworks/CoreFoundation.framework/Versions/A/Resources/Info.plist",
    "/Users/alice/Library/Caches/com.apple.Safari/Cache.db-wal",
    "/private/var/db/timezone/tz/2024a.1.0/zoneinfo/Europe/Berlin",
    "/Applications/Slack.app/Contents/Resources/app.asar",
    "/Users/alice/src/project/node_modules/lodash/package.json",
    "/usr/lib/dyld",
    "/Users/alice/.zsh_history",
    "/Library/Preferences/com.apple.networkextension.plist",
)


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_bytes())
    return data


def _write(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/").encode() + b"\n"


def _with_pid(process: dict[str, Any], pid: int) -> dict[str, Any]:
    process = copy.deepcopy(process)
    token = process["audit_token"]
    if isinstance(token, list):
        token[5] = pid
    else:
        token["pid"] = pid
    return process


SENTINEL = 999_999_999
PROCESS_KINDS = ("exec", "exec", "exec", "fork", "fork", "fork", "exit", "exit")


def _variants(kind: str, count: int = 64) -> list[bytes]:
    """`count` distinct lines of one kind (pids and paths vary), global_seq_num = SENTINEL."""
    exit_msg, exec_msg, fork_msg = (
        _load("mullvad-macos15-v9-exit.json"),
        _load("mullvad-macos15-v9-exec.json"),
        _load("mullvad-macos26-v10-fork.json"),
    )
    lines = []
    for n in range(count):
        pid = 1000 + n * 37
        if kind == "exec":
            message = copy.deepcopy(exec_msg)
            message["process"] = _with_pid(exec_msg["process"], pid)
            message["event"]["exec"]["target"] = _with_pid(exec_msg["event"]["exec"]["target"], pid)
        elif kind == "fork":
            message = copy.deepcopy(fork_msg)
            message["event"]["fork"]["child"] = _with_pid(fork_msg["event"]["fork"]["child"], pid)
        else:
            message = copy.deepcopy(exit_msg)
            message["process"] = _with_pid(exit_msg["process"], pid)
            if kind != "exit":
                path = CRED if kind == "planted" else OTHER_FILES[n % len(OTHER_FILES)]
                message["event_type"] = 10
                file = {"path_truncated": False, "path": path, "stat": {"st_mode": 33188}}
                message["event"] = {"open": {"fflag": 1, "file": file}}
        message["global_seq_num"] = SENTINEL
        lines.append(_write(message))
    return lines


def stream(process_pct: int, lines: int = LINES) -> bytes:
    """`lines` lines: `process_pct` % exec/fork/exit (in 3:3:2 parts), one planted open per
    10,000, the rest opens of other files; global_seq_num counts up from 1."""
    kinds = {k: _variants(k) for k in ("exec", "fork", "exit", "open", "planted")}
    # Which kind each line of a 400-line cycle is (process events spread evenly through it).
    process_slots = process_pct * 4
    cycle = ["open"] * 400
    for i in range(process_slots):
        cycle[i * 400 // process_slots] = PROCESS_KINDS[i % 8]
    marker = b'"global_seq_num":%d' % SENTINEL
    out = []
    for seq in range(1, lines + 1):
        kind = "planted" if seq % 10_000 == 0 else cycle[seq % 400]
        template = kinds[kind][seq % 64]
        out.append(template.replace(marker, b'"global_seq_num":%d' % seq))
    return b"".join(out)


def _measure(name: str, mix: str, data: bytes, *, prefilter: bool) -> dict[str, Any]:
    parser = EsloggerParser([CRED], prefilter=prefilter)
    chunk = 1 << 16  # what the sensor's pipe reader hands the parser
    cpu0, wall0 = time.process_time(), time.perf_counter()
    reads = 0
    for at in range(0, len(data), chunk):
        reads += len(parser.feed(data[at : at + chunk]))
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    per_line_us = cpu / parser.lines * 1e6
    return {
        "parser": name,
        "stream": mix,
        "lines": parser.lines,
        "reads_found": reads,
        "json_decoded": parser.lines - parser.skipped_opens,
        "cpu_s_per_100k": round(cpu / parser.lines * 100_000, 3),
        "us_per_line": round(per_line_us, 2),
        "core_pct_at_20k_lines_s": round(per_line_us * RATE / 1e4, 1),
        "wall_s": round(wall, 2),
        "lost": parser.lost_events,
    }


def run() -> list[dict[str, Any]]:
    rows = []
    for pct in (1, 8):
        data = stream(pct)
        mix = f"{pct}% exec/fork/exit"
        rows.append(_measure("json.loads every line (no filter)", mix, data, prefilter=False))
        rows.append(_measure("byte-level open filter", mix, data, prefilter=True))
    return rows
